"""Item 3c: creating an escrow through walletd: `POST /v1/escrows` with a new id each sample.

walletd makes the three wallets (create_wallet, in spare children with the fast-open preload, on
by default) and the 2-of-3 multisig (prepare, make, exchange), records the escrow and answers
201 with its address. Timed from here, request to answer. Between samples (untimed) the monitor's
first check of the escrow is awaited, its session is closed and walletd's children are left to
settle (the replacement spares it starts after each use busy-wait ~1 CPU-s each), so one
sample's spares do not load the next.
"""

from __future__ import annotations

import time

import attrs
import httpx
import trio

from bench.daemon import wait_escrows
from bench.plan import Plan
from bench.procs import children_of, cpu_seconds
from bench.report import ItemResult, Row, Target
from bench.stats import fmt_s, summarize

__all__ = ["CreateSetup", "run_create"]

MAX_MEDIAN_S = 3.0
SETTLE_TIMEOUT = 20.0
SETTLE_STEP = 0.5
IDLE_CPU = 0.05  # children CPU-s per step below which they count as settled


@attrs.frozen
class CreateSetup:
    api: httpx.AsyncClient
    prefix: str  # escrow ids are f"{prefix}{i}"
    amount: int
    walletd_pid: int


async def _settle(walletd_pid: int) -> None:
    """Until walletd's children use (almost) no CPU for one step, or the timeout."""
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            pids = children_of(walletd_pid)
            before = sum(cpu_seconds(p) for p in pids)
            await trio.sleep(SETTLE_STEP)
            if sum(cpu_seconds(p) for p in pids) - before < IDLE_CPU:
                return


async def run_create(s: CreateSetup, plan: Plan) -> tuple[ItemResult, list[str]]:
    """The result and the ids of the escrows made (their sessions closed)."""
    walletd: list[float] = []
    ids: list[str] = []
    for i in range(plan.creations):
        await _settle(s.walletd_pid)
        escrow_id = f"{s.prefix}{i}"
        body = {"escrow_id": escrow_id, "amount": s.amount}
        started = time.perf_counter()
        r = await s.api.post("/v1/escrows", json=body)
        walletd.append(time.perf_counter() - started)
        if r.status_code != 201:
            raise RuntimeError(f"creating {escrow_id}: {r.status_code} {r.text}")
        ids.append(escrow_id)
        # The monitor's first check (it uses the open session), then close: no later check
        # reopens it, as no block is mined while this walletd runs.
        await wait_escrows(s.api, [escrow_id])
        r = await s.api.delete(f"/v1/escrows/{escrow_id}/session")
        if r.status_code != 200:
            raise RuntimeError(f"closing {escrow_id}: {r.status_code} {r.text}")
    w = summarize(walletd)
    met = w.median < MAX_MEDIAN_S
    row = Row(
        ("3c escrow creation", "  (walletd POST /v1/escrows)"),
        fmt_s(w),
        "",
        "",
        f"median < {MAX_MEDIAN_S:.0f} s",
        met,
    )
    why = (
        "met"
        if met
        else "missed: three create_wallet calls, then prepare/make/exchange multisig rounds"
        " across the three children, on a shared 2-core machine"
    )
    target = Target(
        f"escrow creation under {MAX_MEDIAN_S:.0f} s (median)",
        met,
        f"median {w.median:.2f} s, p90 {w.p90:.2f} s, n={w.n}: {why}",
    )
    data = {"walletd": {"summary_s": w.to_json(), "samples_s": walletd}, "ids": ids}
    legend = (
        "3c: POST /v1/escrows {escrow_id, amount} with a new id each sample (walletd creates three"
        " wallets and the 2-of-3 multisig); children left to settle between samples, untimed."
    )
    return ItemResult("3c_create", [row], [target], data, legend), ids
