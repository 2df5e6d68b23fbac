"""Item 4: a release (2-of-3 payout of the whole balance) on a warm session, against the old way.

Each sample spends a funded escrow, so there are only a few (`Plan.releases` each way).

- walletd: `POST /v1/escrows/{id}/release` on an adopted, ready escrow whose session is open and
  has exchanged multisig info ahead (the monitor's pre-exchange: `session.multisig_exchanged`,
  waited for before the clock starts); the call answers 202 once the signed payout is recorded
  and submitted.
- the old way, straight on wallet-rpc with walletd's own multisig recipe: open the two signers'
  wallets (vendor, arbiter; concurrently, each in its own process), refresh, export/import
  multisig info, propose (sweep_all), co-sign, submit, close both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import attrs
import httpx
import trio

from bench.daemon import wait_exchanged
from bench.plan import Plan
from bench.report import ItemResult, Row, Target
from bench.stats import fmt_s, summarize
from walletd.testing.wallet_rpc_process import MultisigSet
from walletd.wallets import multisig
from walletd.wallets.rpc import WalletRpc

__all__ = ["ReleaseSetup", "run_release"]

MIN_SPEEDUP = 3.0  # warm release vs the old way, medians


@attrs.frozen
class ReleaseSetup:
    api: httpx.AsyncClient
    escrow_ids: Sequence[str]  # ready, session open
    old_sets: Sequence[MultisigSet]  # funded and unlocked, closed, in the processes' wallet dir
    vendor: WalletRpc
    arbiter: WalletRpc
    address: str  # where the payouts go


async def _walletd_release(s: ReleaseSetup, escrow_id: str) -> str:
    r = await s.api.post(f"/v1/escrows/{escrow_id}/release", json={"address": s.address})
    if r.status_code != 202:
        raise RuntimeError(f"release {escrow_id}: {r.status_code} {r.text}")
    return str(r.json()["payout"]["txid"])


async def _old_release(s: ReleaseSetup, ms: MultisigSet) -> str:
    signers = [(s.vendor, ms.files["vendor"]), (s.arbiter, ms.files["arbiter"])]
    async with trio.open_nursery() as nursery:
        for rpc, name in signers:
            nursery.start_soon(rpc.call, "open_wallet", {"filename": name, "password": ms.password})
    rpcs = [s.vendor, s.arbiter]
    await multisig.refresh(rpcs)
    await multisig.sync_multisig_info(rpcs)
    payout = await multisig.propose_sign_submit(s.vendor, s.arbiter, s.address)
    async with trio.open_nursery() as nursery:
        for rpc in rpcs:
            nursery.start_soon(rpc.call, "close_wallet")
    return payout.txids[0]


async def run_release(s: ReleaseSetup, plan: Plan) -> ItemResult:
    walletd: list[float] = []
    old: list[float] = []
    txids: list[str] = []
    for escrow_id, ms in zip(s.escrow_ids, s.old_sets, strict=True):
        await wait_exchanged(s.api, [escrow_id])  # the pre-exchange is done: not timed
        started = time.perf_counter()
        txids.append(await _walletd_release(s, escrow_id))
        walletd.append(time.perf_counter() - started)
        started = time.perf_counter()
        txids.append(await _old_release(s, ms))
        old.append(time.perf_counter() - started)
    w, o = summarize(walletd), summarize(old)
    speedup = o.median / w.median
    met = speedup >= MIN_SPEEDUP
    row = Row(
        ("4 release (2-of-3 payout)", "  (walletd warm)"),
        fmt_s(w),
        "old way: " + fmt_s(o),
        f"{speedup:.1f}x faster",
        (f">= {MIN_SPEEDUP:.0f}x faster", f"(n={plan.releases}: a sample spends an escrow)"),
        met,
    )
    why = (
        "met"
        if met
        else "missed: multisig info is exchanged ahead (not in the call), but a warm release"
        " still refreshes the signers, stores and backs up the three wallets before signing,"
        " proposes (sweep_all), co-signs and submits, storing after each step"
    )
    target = Target(
        f"warm release at least {MIN_SPEEDUP:.0f}x faster than the old way (median)",
        met,
        f"{speedup:.1f}x (walletd {w.median:.2f} s, old way {o.median:.2f} s, medians): {why}",
    )
    data = {
        "walletd": {"summary_s": w.to_json(), "samples_s": walletd},
        "old": {"summary_s": o.to_json(), "samples_s": old},
        "txids": txids,
    }
    legend = (
        "4: POST /v1/escrows/{id}/release on a ready escrow with its session open and its"
        " multisig info exchanged ahead (session.multisig_exchanged); old way ="
        " open vendor and arbiter wallets, refresh, export/import multisig info, sweep_all,"
        " sign_multisig, submit_multisig, close (walletd.wallets.multisig on wallet-rpc)."
    )
    return ItemResult("4_release", [row], [target], data, legend)
