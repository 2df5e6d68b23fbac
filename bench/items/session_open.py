"""Item 3: opening a session (three wallets), against opening wallets straight on wallet-rpc;
and one `open_wallet` on a plain wallet-rpc against one with walletd's fast-open preload.

- walletd: `DELETE .../session` (untimed), then `POST .../session`, timed from here; the answer's
  `open_s` is walletd's own figure. walletd opens the three wallets concurrently, each in a spare
  child it keeps started (with the fast-open preload: `monero.fast_open`, on by default), turns
  auto-refresh off and checks each address.
- the three opened one after another, each in its own plain wallet-rpc process (on every
  `three_every`-th sample only: it costs three opens and carries no target);
- one wallet alone on a plain wallet-rpc: the session open's target is measured against it;
- the same wallet (another byte copy) on a wallet-rpc started with `LD_PRELOAD` of
  `libwalletd_fastopen.so` and `WALLETD_FASTOPEN_KEY`, as walletd starts its children.

The baselines open byte copies of the escrow's wallets. Samples alternate walletd, three, then
plain and fast one-wallet opens (which of the two goes first alternates too), so walletd's
background spare starts (after each open) have settled before its next sample.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import trio

from bench.daemon import wait_exchanged
from bench.plan import Plan
from bench.procs import children_of, cpu_seconds
from bench.report import ItemResult, Row, Target
from bench.stats import Summary, fmt_s, summarize
from walletd.ids import ROLES, Role
from walletd.wallets.rpc import WalletRpc

__all__ = ["OpenSetup", "run_open"]

MAX_RATIO = 1.0  # a session open (three wallets, fast opens) vs one plain open, medians


@attrs.frozen
class OpenSetup:
    api: httpx.AsyncClient
    escrow_id: str
    rpcs: Mapping[Role, WalletRpc]  # three processes with no wallet open
    copies: Mapping[Role, str]  # copies of the escrow's wallets, in their wallet dir
    password: str
    walletd_pid: int
    buyer_pid: int  # the wallet-rpc process of `rpcs["buyer"]`
    fast: WalletRpc  # a wallet-rpc process with the fast-open preload, no wallet open
    fast_pid: int
    fast_copy: str  # another byte copy of the buyer's wallet, in `fast`'s wallet dir


async def _close_all(rpcs: Mapping[Role, WalletRpc]) -> None:
    async with trio.open_nursery() as nursery:
        for rpc in rpcs.values():
            nursery.start_soon(rpc.call, "close_wallet")


async def _timed_open(rpc: WalletRpc, pid: int, params: dict[str, str]) -> tuple[float, float]:
    """One `open_wallet` (then an untimed close): wall seconds and the process's CPU seconds."""
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    await rpc.call("open_wallet", params)
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    await rpc.call("close_wallet")
    return wall, cpu


async def run_open(s: OpenSetup, plan: Plan) -> list[ItemResult]:
    path = f"/v1/escrows/{s.escrow_id}/session"
    walletd: list[float] = []
    reported: list[float] = []
    three: list[float] = []
    one: list[float] = []
    open_cpu: list[float] = []
    spare_cpu: list[float] = []
    one_cpu: list[float] = []
    fast: list[float] = []
    fast_cpu: list[float] = []
    params = {r: {"filename": s.copies[r], "password": s.password} for r in ROLES}
    fast_params = {"filename": s.fast_copy, "password": s.password}
    health = (await s.api.get("/v1/health")).json()
    for i in range(plan.opens):
        r = await s.api.delete(path)
        if r.status_code != 200:
            raise RuntimeError(f"DELETE {path}: {r.status_code} {r.text}")
        before = {k: cpu_seconds(k) for k in children_of(s.walletd_pid)}
        started = time.perf_counter()
        r = await s.api.post(path)
        walletd.append(time.perf_counter() - started)
        # CPU its children used meanwhile: the spares that opened the wallets, and the new
        # spares walletd started to replace them (a wallet-rpc start busy-waits ~1 s of CPU).
        after = {k: cpu_seconds(k) for k in children_of(s.walletd_pid)}
        open_cpu.append(sum(after[k] - before[k] for k in after if k in before))
        spare_cpu.append(sum(after[k] for k in after if k not in before))
        body = r.json()
        if r.status_code != 200 or not body.get("created"):
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
        reported.append(float(body["open_s"]))
        # The monitor exchanges the ready escrow's multisig info in the new session: let it
        # finish before the plain opens are timed, so it weighs on neither side.
        await wait_exchanged(s.api, [s.escrow_id])

        if i % plan.three_every == 0:
            started = time.perf_counter()
            for role in ROLES:
                await s.rpcs[role].call("open_wallet", params[role])
            three.append(time.perf_counter() - started)
            await _close_all(s.rpcs)

        plain_first = i % 2 == 0
        for kind in ("plain", "fast") if plain_first else ("fast", "plain"):
            if kind == "plain":
                wall, used = await _timed_open(s.rpcs["buyer"], s.buyer_pid, params["buyer"])
                one.append(wall)
                one_cpu.append(used)
            else:
                wall, used = await _timed_open(s.fast, s.fast_pid, fast_params)
                fast.append(wall)
                fast_cpu.append(used)

    w, rep, t, o, f = (summarize(x) for x in (walletd, reported, three, one, fast))
    oc, sc, c1, cf = (summarize(x) for x in (open_cpu, spare_cpu, one_cpu, fast_cpu))
    ratio = w.median / o.median
    met = ratio <= MAX_RATIO
    fast_on = health.get("fast_open")
    cpu = f"children CPU: opens {oc.median:.2f} s + new spares {sc.median:.2f} s"
    row = Row(
        ("3 session open (3 wallets)", "  (walletd POST /session)", "  walletd's own open_s", ""),
        (fmt_s(w), "", fmt_s(rep), cpu),
        (
            "one plain open alone: " + fmt_s(o),
            "3 plain, one after another: " + fmt_s(t),
            "",
            f"wallet-rpc CPU for one plain open: {c1.median:.2f} s",
        ),
        (
            f"{ratio:.2f}x one plain open",
            f"{w.median / t.median:.2f}x the three",
            f"{w.median / f.median:.2f}x one fast open",
        ),
        (f"<= {MAX_RATIO:.1f}x one plain open", f"(walletd fast_open: {fast_on})"),
        (met, None),
    )
    why = (
        "met"
        if met
        else (
            f"missed: the three opens run at once in spare children and need {oc.median:.1f}"
            f" CPU-s (one plain open {c1.median:.1f}, one fast open {cf.median:.2f}); the"
            f" {sc.median:.1f} CPU-s of the replacement spares walletd starts meanwhile compete"
            f" for the same {os.cpu_count()} cores"
        )
    )
    target = Target(
        "session open no slower than one plain open (median)",
        met,
        f"{ratio:.2f}x (walletd {w.median:.2f} s, one plain open {o.median:.2f} s, medians;"
        f" walletd fast_open {fast_on}): {why}",
    )
    data: dict[str, Any] = {
        name: {"summary_s": summ.to_json(), "samples_s": samples}
        for name, summ, samples in (
            ("walletd_wall", w, walletd),
            ("walletd_open_s", rep, reported),
            ("three_sequential", t, three),
            ("one_alone", o, one),
            ("children_cpu_opening", oc, open_cpu),
            ("children_cpu_new_spares", sc, spare_cpu),
            ("wallet_rpc_cpu_one_open", c1, one_cpu),
        )
    }
    data["walletd_health"] = health
    legend = (
        "3: DELETE then POST /v1/escrows/{id}/session (walletd opens the three wallets at once in"
        " spare children); baselines open byte copies straight on wallet-rpc processes."
    )
    return [
        _open_wallet_result(o, f, c1, cf, one, fast, one_cpu, fast_cpu),
        ItemResult("3_session_open", [row], [target], data, legend),
    ]


def _open_wallet_result(
    plain: Summary,
    fast: Summary,
    plain_cpu: Summary,
    fast_cpu: Summary,
    *samples: list[float],
) -> ItemResult:
    row = Row(
        ("3 open_wallet, one wallet", "  (wallet-rpc + fast-open preload)"),
        (fmt_s(fast), f"wallet-rpc CPU {fast_cpu.median:.2f} s"),
        ("plain wallet-rpc: " + fmt_s(plain), f"wallet-rpc CPU {plain_cpu.median:.2f} s"),
        (f"{plain.median / fast.median:.1f}x faster", f"p90: {plain.p90 / fast.p90:.1f}x"),
    )
    names = ("plain_wall", "fast_wall", "plain_cpu", "fast_cpu")
    data: dict[str, Any] = {
        name: {"summary_s": summarize(xs).to_json(), "samples_s": xs}
        for name, xs in zip(names, samples, strict=True)
    }
    data["ratio_median"] = plain.median / fast.median
    legend = (
        "3 open_wallet: one wallet (byte copies of the buyer's), open_wallet then close_wallet,"
        " on two monero-wallet-rpc processes alike but for LD_PRELOAD=libwalletd_fastopen.so and"
        " WALLETD_FASTOPEN_KEY on one; samples alternate, who goes first alternates too."
    )
    return ItemResult("3_open_wallet", [row], [], data, legend)
