"""Item 6: resident memory of walletd and of its wallet-rpc children.

Three states: no session (just started, its spare children idle), 10 warm sessions, and 1,000
registered escrows. The 1,000 are written straight into a fresh state database before walletd
starts (`Store.insert_escrow`), as completed escrows carrying a real payout record (signed txset
included), so that no monitor work or wallet opening muddles the figure; walletd then lists them
all through the API and serves /metrics, which read every record.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import attrs
import httpx

from bench.daemon import XMR, BenchWalletd
from bench.procs import tree_rss
from bench.report import ItemResult, Row, Target
from bench.stats import fmt_bytes
from walletd.escrows.model import EscrowRecord, EscrowState, Funding, Payout, WalletRef, utcnow
from walletd.ids import ROLES
from walletd.state.sqlite_store import Store

__all__ = ["MemorySnapshot", "many_escrows", "memory_result", "snapshot"]

TARGET_BYTES = 80 * 2**20


@attrs.frozen
class MemorySnapshot:
    walletd: int
    children: int
    n_children: int

    def describe(self) -> tuple[str, str]:
        return (
            fmt_bytes(self.walletd),
            f"children: {fmt_bytes(self.children)} in {self.n_children}",
        )


def snapshot(pid: int) -> MemorySnapshot:
    return MemorySnapshot(*tree_rss(pid))


def _records(n: int, payout: Payout) -> list[EscrowRecord]:
    now = utcnow()
    return [
        EscrowRecord(
            escrow_id=f"m{i:05d}",
            state=EscrowState.COMPLETED,
            amount=XMR,
            required_confirmations=10,
            multisig_address="4" + f"{i:094d}",
            origin="created",
            wallets={r: WalletRef(f"escrow-m{i:05d}-{r}") for r in ROLES},
            request_digest=f"{i:064x}",
            funding=Funding(
                balance=XMR,
                unlocked_balance=XMR,
                confirmations=12,
                checked_at=now,
            ),
            payout=attrs.evolve(payout, txid=f"{i:064x}", txids=(f"{i:064x}",)),
            created_at=now,
            updated_at=now,
        )
        for i in range(n)
    ]


def many_escrows(root: Path, daemon_address: str, n: int, payout: Payout) -> dict[str, Any]:
    """Run a walletd with `n` registered escrows; RSS after start and after reading them all."""
    daemon = BenchWalletd(root, daemon_address)
    daemon.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store(daemon.state_dir / "walletd.sqlite3")
    try:
        for rec in _records(n, payout):
            store.insert_escrow(rec)
    finally:
        store.close()
    with daemon:
        time.sleep(3.0)  # the monitor's first cycle (it reads every record) has run
        started = snapshot(daemon.pid)
        transport = httpx.HTTPTransport(uds=str(daemon.socket))
        with httpx.Client(transport=transport, base_url="http://walletd", timeout=120) as c:
            t0 = time.perf_counter()
            listed = c.get("/v1/escrows").json()["escrows"]
            list_s = time.perf_counter() - t0
            if len(listed) != n:
                raise RuntimeError(f"listed {len(listed)} escrows, expected {n}")
            c.get("/metrics").raise_for_status()
            for _ in range(4):
                c.get("/v1/escrows").raise_for_status()
        listed_snap = snapshot(daemon.pid)
    return {
        "after_start": attrs.asdict(started),
        "after_listing": attrs.asdict(listed_snap),
        "list_seconds": list_s,
        "payout_bytes": len(json.dumps(attrs.asdict(payout))),
    }


def memory_result(
    empty: MemorySnapshot, warm: MemorySnapshot, many: dict[str, Any], sessions: int, n: int
) -> ItemResult:
    started = MemorySnapshot(**many["after_start"])
    listed = MemorySnapshot(**many["after_listing"])
    peak = max(started.walletd, listed.walletd)
    met = peak < TARGET_BYTES
    snaps = (empty, warm, started, listed)
    rows = [
        Row(
            (
                "6 memory (RSS)",
                "  no session",
                f"  {sessions} warm sessions",
                f"  {n:,} escrows, started",
                f"  {n:,} escrows, listed",
            ),
            ("", *(fmt_bytes(x.walletd) for x in snaps)),
            ("", *(x.describe()[1] for x in snaps)),
            ("", "", "", "", f"{listed.walletd / empty.walletd:.2f}x no session"),
            ("", "", "", "walletd < 80 MB", "walletd < 80 MB"),
            (None, None, None, started.walletd < TARGET_BYTES, listed.walletd < TARGET_BYTES),
        )
    ]
    target = Target(
        "walletd's own RSS under 80 MB with 1,000 registered escrows",
        met,
        f"{fmt_bytes(peak)} at most (after start {fmt_bytes(started.walletd)}, after listing "
        f"{fmt_bytes(listed.walletd)}; no session {fmt_bytes(empty.walletd)}; list of {n} took "
        f"{many['list_seconds'] * 1e3:.0f} ms, each record carries a {many['payout_bytes']:,} "
        "byte payout)",
    )
    data = {
        "no_session": attrs.asdict(empty),
        "warm_sessions": attrs.asdict(warm),
        "many_escrows": many,
        "sessions": sessions,
        "escrows": n,
    }
    legend = (
        "6: VmRSS of walletd and the sum over its wallet-rpc children; the escrows are completed"
        " ones written into the database before start, each with a real payout record, then"
        " listed through GET /v1/escrows (and /metrics) five times."
    )
    return ItemResult("6_memory", rows, [target], data, legend)
