"""Item 3: opening a session (three wallets), against opening wallets straight on wallet-rpc.

- walletd: `DELETE .../session` (untimed), then `POST .../session`, timed from here; the answer's
  `open_s` is walletd's own figure. walletd opens the three wallets concurrently, each in a spare
  child it keeps started, turns auto-refresh off and checks each address.
- the three opened one after another, each in its own wallet-rpc process (on every
  `three_every`-th sample only: it costs three opens and carries no target);
- one wallet alone.

The baselines open byte copies of the escrow's wallets. Samples alternate walletd, three, one, so
walletd's background spare starts (after each open) have settled before its next sample.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import attrs
import httpx
import trio

from bench.plan import Plan
from bench.procs import children_of, cpu_seconds
from bench.report import ItemResult, Row, Target
from bench.stats import fmt_s, summarize
from walletd.ids import ROLES, Role
from walletd.wallets.rpc import WalletRpc

__all__ = ["OpenSetup", "run_open"]

MAX_RATIO = 1.5


@attrs.frozen
class OpenSetup:
    api: httpx.AsyncClient
    escrow_id: str
    rpcs: Mapping[Role, WalletRpc]  # three processes with no wallet open
    copies: Mapping[Role, str]  # copies of the escrow's wallets, in their wallet dir
    password: str
    walletd_pid: int
    buyer_pid: int  # the wallet-rpc process of `rpcs["buyer"]`


async def _close_all(rpcs: Mapping[Role, WalletRpc]) -> None:
    async with trio.open_nursery() as nursery:
        for rpc in rpcs.values():
            nursery.start_soon(rpc.call, "close_wallet")


async def run_open(s: OpenSetup, plan: Plan) -> ItemResult:
    path = f"/v1/escrows/{s.escrow_id}/session"
    walletd: list[float] = []
    reported: list[float] = []
    three: list[float] = []
    one: list[float] = []
    open_cpu: list[float] = []
    spare_cpu: list[float] = []
    one_cpu: list[float] = []
    params = {r: {"filename": s.copies[r], "password": s.password} for r in ROLES}
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

        if i % plan.three_every == 0:
            started = time.perf_counter()
            for role in ROLES:
                await s.rpcs[role].call("open_wallet", params[role])
            three.append(time.perf_counter() - started)
            await _close_all(s.rpcs)

        cpu_before = cpu_seconds(s.buyer_pid)
        started = time.perf_counter()
        await s.rpcs["buyer"].call("open_wallet", params["buyer"])
        one.append(time.perf_counter() - started)
        one_cpu.append(cpu_seconds(s.buyer_pid) - cpu_before)
        await s.rpcs["buyer"].call("close_wallet")

    w, rep, t, o = (summarize(x) for x in (walletd, reported, three, one))
    oc, sc, c1 = summarize(open_cpu), summarize(spare_cpu), summarize(one_cpu)
    ratio = w.median / o.median
    met = ratio <= MAX_RATIO
    cpu = f"children CPU: opens {oc.median:.2f} s + new spares {sc.median:.2f} s"
    row = Row(
        ("3 session open (3 wallets)", "  (walletd POST /session)", "  walletd's own open_s", ""),
        (fmt_s(w), "", fmt_s(rep), cpu),
        (
            "one wallet alone:   " + fmt_s(o),
            "3 one after another: " + fmt_s(t),
            "",
            f"wallet-rpc CPU for one open: {c1.median:.2f} s",
        ),
        (f"{ratio:.2f}x one open", f"{w.median / t.median:.2f}x the three"),
        f"<= {MAX_RATIO}x one open",
        met,
    )
    target = Target(
        "session open no slower than 1.5x one wallet open",
        met,
        f"{ratio:.2f}x (walletd {w.median:.2f} s, one open {o.median:.2f} s, medians). The three"
        f" opens run at once in spare children and need {oc.median:.1f} CPU-s (one open"
        f" {c1.median:.1f}); the {sc.median:.1f}"
        " CPU-s of the replacement spares walletd starts meanwhile compete for the same 2 cores",
    )
    data = {
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
    legend = (
        "3: DELETE then POST /v1/escrows/{id}/session (walletd opens the three wallets at once in"
        " spare children); baselines open byte copies straight on wallet-rpc processes."
    )
    return ItemResult("3_session_open", [row], [target], data, legend)
