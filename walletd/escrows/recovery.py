"""Start-up recovery: finishing what a stopped walletd left half done.

Most urgent first: creations in flight are undone (`walletd.escrows.creation`), payouts in flight
resumed (`walletd.escrows.payouts`; in a cluster only this host's, or those of a host no longer
live: `walletd.escrows.retries`), then sessions reopened for ready and funded escrows (up to the
cap) so the monitor and the API find them warm.
"""

from __future__ import annotations

import structlog
import trio

from walletd.errors import Unavailable, WalletdError
from walletd.escrows.creation import Creation
from walletd.escrows.model import EscrowState
from walletd.escrows.payouts import Payouts
from walletd.escrows.retries import RESUMABLE, PayoutRetries, retry_source
from walletd.sessions.registry import Caller, Registry
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore

__all__ = ["Recovery"]

log = structlog.get_logger(__name__)


class Recovery:
    def __init__(
        self,
        *,
        store: StateStore,
        registry: Registry,
        ownership: Ownership,
        creation: Creation,
        payouts: Payouts,
        retries: PayoutRetries,
    ) -> None:
        self._store = store
        self._registry = registry
        self._ownership = ownership
        self._creation = creation
        self._payouts = payouts
        self._retries = retries
        self.recovered = trio.Event()  # recover() is done: walletd may report itself ready

    async def recover(self) -> None:
        """Finish what a previous walletd left half done (see module doc)."""
        try:
            # In a cluster, only what no other live host holds: another host's creation in
            # flight is a CREATING record too, and its payouts are its own to resume.
            elsewhere = await self._ownership.owned_elsewhere()
            for rec in await self._store.list_escrows(EscrowState.CREATING):
                if rec.escrow_id in elsewhere:
                    continue
                try:
                    async with self._ownership.holding(rec.escrow_id):
                        await self._creation.abandon(rec, "walletd stopped during creation")
                except Unavailable as exc:  # taken meanwhile, or the database refused
                    log.warning("creation not undone", escrow_id=rec.escrow_id, error=exc.message)
            live: set[str] | None = None
            for rec in await self._store.list_escrows(EscrowState.READY):
                if rec.escrow_id in elsewhere:
                    continue
                if rec.payout is not None and rec.payout.phase in RESUMABLE:
                    # In a cluster another live host's payout is its own to resume.
                    if live is None:
                        live = await self._ownership.live_hosts()
                    source = retry_source(rec.payout, self._ownership.host, live, starting=True)
                    if source is None:
                        continue
                    self._retries.retried(rec.escrow_id, rec.payout, source)
                    try:
                        # The listed record, read without the lease: the drive's first write
                        # is compare-and-set on it, before any wallet call (payouts).
                        await self._payouts.drive(rec)
                    except WalletdError as exc:
                        log.error("payout resume failed", escrow_id=rec.escrow_id, error=str(exc))
            await self._reopen_warm()
        finally:
            self.recovered.set()

    async def _reopen_warm(self) -> None:
        registry = self._registry
        wanted = [r for r in await self._store.list_escrows(EscrowState.READY) if r.payout is None]
        wanted += await self._store.list_escrows(EscrowState.FUNDED)
        elsewhere = await self._ownership.owned_elsewhere()
        wanted = [r for r in wanted if r.escrow_id not in elsewhere]
        room = registry.limits.max_active - registry.statistics().active_sessions
        for rec in wanted[: max(0, room)]:
            try:
                # Reopened for the monitor: first to leave if the API needs a slot.
                await registry.open(rec.escrow_id, caller=Caller.MONITOR)
            except WalletdError as exc:
                log.warning("could not reopen session", escrow_id=rec.escrow_id, error=str(exc))
