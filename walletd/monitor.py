"""The chain monitor: moves escrows through their states by asking their sessions.

It learns of new blocks cheaply (monerod's height, about a millisecond, every `height_check`
seconds) and runs a cycle at once when the chain grows, else every `poll_interval`. A wallet is
refreshed only when the chain grew since its last refresh: a cycle without a new block makes no
wallet-rpc call at all, because nothing a wallet could report has changed.

Warm escrows (session open) are checked every cycle through their session's inbox. Cold escrows
(no session) are checked by a separate worker, one at a time, at most once per `cold_interval`
each, and only into a free slot or one held by another monitor-only session: watching many escrows
never evicts a session the API is using, and never thrashes the cap.

A ready escrow without a payout whose session is open, and holds no multisig info exchange yet,
is asked to exchange it ahead (`PreExchange`), so that its release or refund needs no exchange in
the call. The check is redone each cycle: a session reopened since gets it again.

Payout confirmations are read from monerod directly (the transaction's block height): no wallet,
no session. A completed or refunded escrow's session is closed.

A database that refuses a read or write (`StoreUnavailable`: disk full, I/O error) fails that
check alone; the escrow is not marked as looked at, so the next cycle tries it again.

What the monitor keeps per escrow (last refresh height, last cold check) is dropped at each
cycle for escrows no longer watched (ready, paid out, removed): it stays as big as the set of
escrows awaiting funding, not every escrow ever made.

What an escrow's check leads to (its next state, a resubmit, its end) is decided by the pure
rules of `walletd.escrows.transitions`; the monitor reads, calls and writes what they name.
`statistics()` tells what it has done so far (`MonitorStatistics`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import attrs
import structlog
import trio

from walletd.config import MonitorConfig
from walletd.errors import Capacity, StoreUnavailable, WalletdError
from walletd.escrows.model import EscrowRecord, ExpectedPayout, utcnow
from walletd.escrows.transitions import (
    PAYING,
    WATCHED,
    FundingSeen,
    WaitForDaemon,
    confirmations_seen,
    exchange_ahead,
    finished,
    funding_seen,
    lost_payout,
)
from walletd.ops.metrics import Metrics
from walletd.sessions.messages import Funding as SeenFunding
from walletd.sessions.messages import GetFunding, PreExchange, Store, SubmitPayout
from walletd.sessions.registry import Caller, Registry
from walletd.state.events import EventLog
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore
from walletd.wallets.chain import Chain

__all__ = ["Monitor", "MonitorStatistics"]

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 120.0  # one escrow's check; a refresh after a long absence can take a while
CONCURRENT_CHECKS = 4


@attrs.frozen
class MonitorStatistics:
    """What the monitor has done since it was made (as trio's `ParkingLot.statistics()`)."""

    cycles: int  # cycles begun (each at a known chain height)
    cold_opens: int  # cold checks that got a session (one refused for want of a slot is not)
    # What it asked the escrows' sessions, by kind:
    funding_checks: int  # refresh and read the funding (warm or cold)
    wallet_stores: int  # store the wallets after a funding change
    pre_exchanges: int  # exchange multisig info ahead of a payout
    resubmits: int  # relay a lost payout's recorded blob again


class Monitor:
    def __init__(
        self,
        cfg: MonitorConfig,
        *,
        store: StateStore,
        registry: Registry,
        events: EventLog,
        chain: Chain,
        metrics: Metrics,
        ownership: Ownership,
    ) -> None:
        # In a cluster each escrow is watched by the host holding it; an unheld one by whichever
        # host opens it first with a free slot (the cold worker), so the hosts share the work.
        self._ownership: Ownership = ownership
        self._store = store
        self._registry = registry
        self._events = events
        self._chain = chain
        self._metrics = metrics
        self.enabled: bool = cfg.enabled
        self.interval: float = cfg.poll_interval
        self.cold_interval: float = cfg.cold_interval
        self.height_check: float = cfg.height_check
        self.pre_exchange_enabled: bool = cfg.pre_exchange
        self._wake = trio.Event()
        self._cold_wake = trio.Event()
        self._refreshed_at: dict[str, int] = {}  # escrow -> chain height of its last refresh
        self._cold_checked: dict[str, float] = {}
        self.height: int | None = None
        self._first_height: int | None = None
        self._cycled_height: int | None = None  # the height the last finished cycle ran at
        self._cycle_done = trio.Event()  # set (and replaced) as each cycle finishes
        self._cycles = 0
        self._cold_opens = 0
        self._funding_checks = 0
        self._wallet_stores = 0
        self._pre_exchanges = 0
        self._resubmits = 0
        self._limiter = trio.CapacityLimiter(CONCURRENT_CHECKS)

    def statistics(self) -> MonitorStatistics:
        """What the monitor has done so far."""
        return MonitorStatistics(
            cycles=self._cycles,
            cold_opens=self._cold_opens,
            funding_checks=self._funding_checks,
            wallet_stores=self._wallet_stores,
            pre_exchanges=self._pre_exchanges,
            resubmits=self._resubmits,
        )

    async def wait_cycled(self, height: int) -> None:
        """Return once a cycle has checked the warm escrows at `height` or above."""
        while self._cycled_height is None or self._cycled_height < height:
            await self._cycle_done.wait()

    def set_interval(self, seconds: float) -> None:
        self.interval = seconds
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.enabled:
            task_status.started()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_height)
            nursery.start_soon(self._cold_worker)
            task_status.started()
            while True:
                with trio.move_on_after(self.interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                try:
                    await self.cycle()
                except StoreUnavailable as exc:
                    log.error("monitor cycle skipped", error=exc.message)

    async def _watch_height(self) -> None:
        while True:
            try:
                height = await self._chain.height()
            except (WalletdError, KeyError, ValueError) as exc:
                log.warning("monerod height unavailable", error=str(exc))
            else:
                if height != self.height:
                    self.height = height
                    if self._first_height is None:
                        self._first_height = height
                    self._report_lag()
                    self._wake.set()
                    self._cold_wake.set()
            await trio.sleep(self.height_check)

    # ---- one cycle -------------------------------------------------------------------------------

    async def cycle(self) -> None:
        """Check every warm watched escrow and every payout in flight once.

        Checks run concurrently (each escrow's wallets are separate processes), a few at a
        time, and each within CHECK_TIMEOUT: one stuck wallet-rpc never holds up the others."""
        started = trio.current_time()
        height = self.height
        if height is None:
            return
        self._cycles += 1
        escrows = await self._store.list_escrows()
        self._forget_unwatched({r.escrow_id for r in escrows if r.state in WATCHED})
        elsewhere = await self._ownership.owned_elsewhere()
        async with trio.open_nursery() as nursery:
            for rec in escrows:
                if rec.escrow_id in elsewhere:
                    continue  # its owner watches it
                if rec.state in WATCHED and self._registry.is_open(rec.escrow_id):
                    nursery.start_soon(self._guarded, rec, height, self.check_funding)
                elif rec.state in PAYING:
                    nursery.start_soon(self._guarded, rec, height, self.check_payout)
                elif self._wants_exchange(rec):
                    nursery.start_soon(self._guarded, rec, height, self.pre_exchange)
        self._metrics.monitor_cycle.observe(trio.current_time() - started)
        self._cycled_height = height
        self._cycle_done.set()
        self._cycle_done = trio.Event()
        self._report_lag()

    def _report_lag(self) -> None:
        """walletd_monitor_lag_blocks: how far monerod's chain is ahead of the height the last
        finished cycle ran at (before the first, of the height the monitor first read)."""
        base = self._cycled_height if self._cycled_height is not None else self._first_height
        if self.height is not None and base is not None:
            self._metrics.monitor_lag.set(max(0, self.height - base))

    def _forget_unwatched(self, watched: set[str]) -> None:
        """Drop what is kept per escrow for escrows past funding (or gone): without this the
        dicts would hold an entry for every escrow ever watched."""
        for table in (self._refreshed_at, self._cold_checked):
            for escrow_id in table.keys() - watched:
                del table[escrow_id]

    async def _guarded(
        self, rec: EscrowRecord, height: int, check: Callable[[EscrowRecord, int], Awaitable[None]]
    ) -> None:
        async with self._limiter:
            with trio.move_on_after(CHECK_TIMEOUT) as scope:
                try:
                    await check(rec, height)
                except WalletdError as exc:
                    log.warning("monitor check failed", escrow_id=rec.escrow_id, error=str(exc))
            if scope.cancelled_caught:
                log.warning("monitor check timed out", escrow_id=rec.escrow_id)

    async def check_funding(self, rec: EscrowRecord, height: int, *, cold: bool = False) -> None:
        if self._refreshed_at.get(rec.escrow_id) == height:
            return  # no new block since this wallet last looked: nothing can have changed
        self._funding_checks += 1
        async with self._ownership.holding(rec.escrow_id):  # the write below is fenced by it
            funding = await self._registry.call(
                rec.escrow_id,
                GetFunding(refresh=True, amount=rec.amount),
                caller=Caller.COLD_MONITOR if cold else Caller.MONITOR,
            )
            await self._apply_funding(rec.escrow_id, funding, height)
        # Only once recorded: a check whose result the database refused is redone next cycle.
        self._refreshed_at[rec.escrow_id] = height

    async def _apply_funding(self, escrow_id: str, f: SeenFunding, height: int) -> None:
        # The check's one read of the record, fresh under the lease and after the refresh: the
        # listed one may be a cycle old, and the write below sets the state and funding whole
        # (a payout may have started meanwhile: then nothing is written).
        rec = await self._store.get_escrow(escrow_id)
        if rec is None:
            return  # gone meanwhile (an abandoned creation)
        seen = FundingSeen(f.balance, f.unlocked_balance, f.confirmations, f.height)
        move = funding_seen(rec, seen, height=height, now=utcnow())
        if move is None:
            return  # moved on meanwhile (a payout started)
        if move.reorged_from is not None:
            log.warning(
                "funding reorged away",
                escrow_id=escrow_id,
                balance=f.balance,
                previous_balance=move.reorged_from,
            )
        await self._events.change(escrow_id, move.events, state=move.state, funding=move.funding)
        if move.step is not None:
            await self._store_wallets(escrow_id)

    async def _store_wallets(self, escrow_id: str) -> None:
        """The wallets just saw the escrow's funding change: store them now, not at the next
        periodic store, so a crash (or, in a cluster, the next owner, which opens the files
        last saved in the database) does not start from wallets that never saw the deposit."""
        self._wallet_stores += 1
        try:
            await self._registry.call(escrow_id, Store(), caller=Caller.MONITOR)
        except WalletdError as exc:  # the periodic store will do it
            log.warning(
                "wallet store after a funding change failed", escrow_id=escrow_id, error=str(exc)
            )

    def _wants_exchange(self, rec: EscrowRecord) -> bool:
        if not self.pre_exchange_enabled or not exchange_ahead(rec):
            return False
        # Low priority: never into a session with an API call in hand; the next cycle will do.
        info = self._registry.session_info(rec.escrow_id)
        return info is not None and not info.exchanged and not info.busy

    async def pre_exchange(self, rec: EscrowRecord, height: int) -> None:
        """Exchange the escrow's multisig info ahead of its payout. Never once a payout is
        recorded: the session also refuses it once it has begun preparing one."""
        # Read again: the cycle listed it before waiting for a check slot, and a payout
        # recorded since then must not meet an exchange.
        fresh = await self._store.get_escrow(rec.escrow_id)
        if fresh is None or not self._wants_exchange(fresh):
            return
        self._pre_exchanges += 1
        await self._registry.call(rec.escrow_id, PreExchange(), caller=Caller.MONITOR)

    async def check_payout(self, rec: EscrowRecord, height: int) -> None:
        payout = rec.payout
        if payout is None or not payout.txid:
            return
        async with self._ownership.holding(rec.escrow_id):  # its writes are fenced by it
            await self._check_submitted(rec, payout.txid, height)

    async def _check_submitted(self, rec: EscrowRecord, txid: str, height: int) -> None:
        """Count the payout's confirmations (the listed record: every write is compare-and-set
        on its payout), end the escrow at the required number, resubmit a lost payout."""
        status = await self._chain.tx_status(txid)
        if status is None:
            await self._resubmit(rec)
            return
        confirmations = status.confirmations(height)
        payout = confirmations_seen(rec, confirmations)
        if payout is not None:
            rec = await self._store.update_escrow(
                rec.escrow_id,
                payout=payout,
                expect_payout=ExpectedPayout.of(rec.payout),  # still the submitted one read
            )
        end = finished(rec, confirmations)
        if end is not None:
            await self._events.change(rec.escrow_id, [end.event], state=end.state)
            assert rec.payout is not None
            self._metrics.payout(rec.payout.kind.value, "confirmed")
            await self._registry.close(rec.escrow_id, reason="finished")

    async def _resubmit(self, rec: EscrowRecord) -> None:
        """The daemon lost the payout (pool flushed, restart): relay the recorded blob again. It
        is the same signed transaction, so this can never make a second payout."""
        step = lost_payout(rec, self.height)
        if step is None:
            return
        if isinstance(step, WaitForDaemon):
            log.warning(
                "monerod in use is behind the escrow's ready height; resubmit later",
                escrow_id=rec.escrow_id,
                height=step.height,
                ready_height=step.ready_height,
            )
            return
        assert rec.payout is not None
        log.warning(
            "payout not known to monerod; resubmitting the recorded blob",
            escrow_id=rec.escrow_id,
            txid=rec.payout.txid,
        )
        self._resubmits += 1
        self._ownership.check_held(rec.escrow_id)  # relays money: the lease must be valid
        await self._registry.call(
            rec.escrow_id,
            SubmitPayout(step.signer, step.txids, step.signed_txset),
            caller=Caller.MONITOR,
        )
        self._metrics.payout(rec.payout.kind.value, "resubmitted")

    # ---- cold escrows ----------------------------------------------------------------------------

    async def _cold_worker(self) -> None:
        while True:
            try:
                rec = await self._next_cold()
            except StoreUnavailable as exc:
                log.error("cold check skipped", error=exc.message)
                rec = None
            if rec is None or not self._registry.can_open_for_monitor():
                with trio.move_on_after(max(1.0, min(self.cold_interval, 5.0))):
                    await self._cold_wake.wait()
                self._cold_wake = trio.Event()
                continue
            self._cold_checked[rec.escrow_id] = trio.current_time()
            assert self.height is not None
            with trio.move_on_after(CHECK_TIMEOUT) as scope:
                try:
                    self._cold_opens += 1
                    await self.check_funding(rec, self.height, cold=True)
                except Capacity:
                    self._cold_opens -= 1
                except WalletdError as exc:
                    log.warning("cold check failed", escrow_id=rec.escrow_id, error=str(exc))
            if scope.cancelled_caught:
                log.warning("cold check timed out", escrow_id=rec.escrow_id)

    async def _next_cold(self) -> EscrowRecord | None:
        if self.height is None:
            return None
        now = trio.current_time()
        due: list[tuple[float, EscrowRecord]] = []
        elsewhere = await self._ownership.owned_elsewhere()
        for state in WATCHED:
            for rec in await self._store.list_escrows(state):
                if rec.escrow_id in elsewhere:
                    # Its owner checks it. If that owner dies, the escrow is next due a
                    # cold_interval after it was last seen owned: taken-over escrows open by
                    # need (a request's), not all at once beside the requests that need them.
                    self._cold_checked[rec.escrow_id] = now
                    continue
                if self._registry.is_open(rec.escrow_id):
                    continue
                if self._refreshed_at.get(rec.escrow_id) == self.height:
                    continue
                last = self._cold_checked.get(rec.escrow_id, -math.inf)
                if now - last >= self.cold_interval:
                    due.append((last, rec))
        if not due:
            return None
        due.sort(key=lambda item: item[0])
        return due[0][1]
