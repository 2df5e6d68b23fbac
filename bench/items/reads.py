"""Items 1 and 2: a balance check and a confirmation check (get_transfer_by_txid), three ways.

- walletd: `GET /v1/escrows/{id}/balance` (or `/transfers/{txid}`) over the socket, session warm;
- the old way, straight on wallet-rpc: open_wallet, refresh, the call, close_wallet;
- the floor: the bare call on a wallet-rpc that has the wallet open already.

The direct calls use walletd's own client (`WalletRpc`: httpx, digest auth, one client per
process), so the floor is what walletd itself could at best do per call. Baselines use byte copies
of the escrow's buyer wallet (same keys and outputs; walletd holds the original's lock). The three
series are measured interleaved, in rounds, so machine noise spreads over all of them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import httpx

from bench.plan import Plan
from bench.report import ItemResult, Row, Target
from bench.stats import Summary, fmt_ms, summarize
from walletd.wallets.rpc import WalletRpc

__all__ = ["ReadsSetup", "run_reads"]

Call = Callable[[], Awaitable[Any]]
TIMES_FASTER = 300.0
LEGENDS = {
    "1_balance": "1: GET /v1/escrows/{id}/balance on a warm session (walletd: one get_balance;"
    " the height is cached between refreshes); old way = open_wallet, refresh, get_balance,"
    " close_wallet on wallet-rpc;"
    " floor = a bare get_balance on a wallet-rpc with the wallet open.",
    "2_confirmation": "2: GET /v1/escrows/{id}/transfers/{txid}; old way and floor as in 1,"
    " with get_transfer_by_txid (a call that asks monerod, ~44 ms in wallet-rpc).",
}
FLOOR_MARGIN_S = 1e-3


@attrs.frozen
class ReadsSetup:
    api: httpx.AsyncClient
    escrow_id: str
    txid: str
    old: WalletRpc  # a process with no wallet open
    floor: WalletRpc  # a process where `floor_wallet` stays open
    old_wallet: str
    floor_wallet: str
    password: str


async def _sample(fn: Call, n: int, into: list[float]) -> None:
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        into.append(time.perf_counter() - started)


async def _interleaved(plan: Plan, series: list[tuple[Call, int, list[float]]]) -> None:
    for fn, _, _ in series:  # one unmeasured call each: connections, caches
        await fn()
    for _ in range(plan.rounds):
        for fn, n, into in series:
            await _sample(fn, max(1, n // plan.rounds), into)


def _api_get(api: httpx.AsyncClient, path: str) -> Call:
    async def get() -> Any:
        r = await api.get(path)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code} {r.text}")
        return r.json()

    return get


def _old_way(s: ReadsSetup, method: str, params: dict[str, Any]) -> Call:
    async def old() -> Any:
        await s.old.call("open_wallet", {"filename": s.old_wallet, "password": s.password})
        await s.old.call("refresh")
        answer = await s.old.call(method, params)
        await s.old.call("close_wallet")
        return answer

    return old


def _rows(
    figure: str, walletd: Summary, old: Summary, floor: Summary, with_targets: bool
) -> tuple[list[Row], list[Target]]:
    times = old.median / walletd.median
    over = walletd.median - floor.median
    fast_met = times >= TIMES_FASTER
    floor_met = over <= FLOOR_MARGIN_S
    rows = [
        Row(
            (figure, "  (walletd warm)"),
            fmt_ms(walletd),
            ("old way: " + fmt_ms(old), "floor:   " + fmt_ms(floor)),
            (f"{times:,.0f}x faster", f"{over * 1e3:+.2f} ms vs floor"),
            (f">= {TIMES_FASTER:.0f}x faster", f"<= +{FLOOR_MARGIN_S * 1e3:.0f} ms")
            if with_targets
            else (),
            (fast_met, floor_met) if with_targets else None,
        )
    ]
    targets: list[Target] = []
    if with_targets:
        targets = [
            Target(
                "warm balance check >= 300x faster than the old way",
                fast_met,
                f"{times:,.0f}x (old way {old.median * 1e3:.0f} ms, walletd "
                f"{walletd.median * 1e3:.2f} ms, medians)",
            ),
            Target(
                "warm balance check within 1 ms (median) of the bare get_balance floor",
                floor_met,
                f"{over * 1e3:+.2f} ms (walletd {walletd.median * 1e3:.2f} ms = socket + HTTP "
                f"+ get_balance; floor {floor.median * 1e3:.2f} ms = one call)",
            ),
        ]
    return rows, targets


async def run_reads(s: ReadsSetup, plan: Plan) -> list[ItemResult]:
    base = f"/v1/escrows/{s.escrow_id}"
    await s.floor.call("open_wallet", {"filename": s.floor_wallet, "password": s.password})
    await s.floor.call("auto_refresh", {"enable": False})  # walletd turns it off too
    await s.floor.call("refresh")
    try:
        balance: dict[str, list[float]] = {"walletd": [], "old": [], "floor": []}
        await _interleaved(
            plan,
            [
                (_api_get(s.api, f"{base}/balance"), plan.cheap, balance["walletd"]),
                (
                    lambda: s.floor.call("get_balance", {"account_index": 0}),
                    plan.cheap,
                    balance["floor"],
                ),
                (_old_way(s, "get_balance", {"account_index": 0}), plan.old_way, balance["old"]),
            ],
        )
        seen = {
            "walletd": await _api_get(s.api, f"{base}/balance")(),
            "floor": await s.floor.call("get_balance", {"account_index": 0}),
        }
        txid = {"txid": s.txid}
        transfer: dict[str, list[float]] = {"walletd": [], "old": [], "floor": []}
        await _interleaved(
            plan,
            [
                (
                    _api_get(s.api, f"{base}/transfers/{s.txid}"),
                    plan.daemon_calls,
                    transfer["walletd"],
                ),
                (
                    lambda: s.floor.call("get_transfer_by_txid", txid),
                    plan.daemon_calls,
                    transfer["floor"],
                ),
                (_old_way(s, "get_transfer_by_txid", txid), plan.old_way, transfer["old"]),
            ],
        )
    finally:
        await s.floor.call("close_wallet")
    results = []
    for key, figure, samples, with_targets in (
        ("1_balance", "1 balance check", balance, True),
        ("2_confirmation", "2 confirmation check", transfer, False),
    ):
        summaries = {name: summarize(v) for name, v in samples.items()}
        rows, targets = _rows(
            figure, summaries["walletd"], summaries["old"], summaries["floor"], with_targets
        )
        data: dict[str, Any] = {
            name: {"summary_s": summaries[name].to_json(), "samples_s": v}
            for name, v in samples.items()
        }
        if key == "1_balance":
            data["answers"] = {
                "walletd": seen["walletd"],
                "floor": {k: seen["floor"].get(k) for k in ("balance", "unlocked_balance")},
            }
        results.append(ItemResult(key, rows, targets, data, LEGENDS[key]))
    return results
