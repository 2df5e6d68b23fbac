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
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable

import attrs
import structlog
import trio

from walletd.config import MonitorConfig
from walletd.errors import Capacity, StoreUnavailable, WalletdError
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    ExpectedPayout,
    Funding,
    Payout,
    utcnow,
)
from walletd.jsontypes import JsonObject
from walletd.ops.metrics import Metrics
from walletd.sessions.messages import Funding as SeenFunding
from walletd.sessions.messages import GetFunding, PreExchange, Store, SubmitPayout
from walletd.sessions.registry import Caller, Registry
from walletd.state.events import EventLog
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore
from walletd.wallets.chain import Chain

__all__ = ["Monitor"]

log = structlog.get_logger(__name__)

WATCHED = (EscrowState.AWAITING_FUNDING, EscrowState.FUNDED)
CHECK_TIMEOUT = 120.0  # one escrow's check; a refresh after a long absence can take a while
CONCURRENT_CHECKS = 4
PAYING = (EscrowState.RELEASING, EscrowState.REFUNDING)  # each has one move: its end


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
        self.cycles = 0
        self.session_calls: Counter[str] = Counter()  # what the monitor asked sessions, by kind
        self.cold_opens = 0
        self._limiter = trio.CapacityLimiter(CONCURRENT_CHECKS)

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
        self.cycles += 1
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
        self.session_calls["funding"] += 1
        async with self._ownership.holding(rec.escrow_id):  # the write below is fenced by it
            funding = await self._registry.call(
                rec.escrow_id,
                GetFunding(refresh=True, amount=rec.amount),
                caller=Caller.COLD_MONITOR if cold else Caller.MONITOR,
            )
            await self._apply_funding(rec, funding, height)
        # Only once recorded: a check whose result the database refused is redone next cycle.
        self._refreshed_at[rec.escrow_id] = height

    async def _apply_funding(self, rec: EscrowRecord, f: SeenFunding, height: int) -> None:
        fresh = await self._store.get_escrow(rec.escrow_id)
        if fresh is None or fresh.state not in WATCHED:
            return  # moved on meanwhile (a payout started)
        state = fresh.state
        funding = Funding(
            balance=f.balance,
            unlocked_balance=f.unlocked_balance,
            confirmations=f.confirmations,
            checked_at=utcnow(),
        )
        seen: JsonObject = {
            "balance": f.balance,
            "unlocked_balance": f.unlocked_balance,
            "confirmations": f.confirmations,
        }
        events: list[tuple[str, JsonObject]] = []
        if state is EscrowState.AWAITING_FUNDING and f.balance >= fresh.amount:
            state = EscrowState.FUNDED
            events.append(("funded", seen))
        elif state is EscrowState.FUNDED and f.balance < fresh.amount <= fresh.funding.balance:
            # A reorg took (part of) the deposit away before it was ready. States only move
            # forward, so the escrow stays funded, but it cannot become ready on funds that are
            # gone (the check below needs them unlocked and confirmed): the server hears it once,
            # when the balance drops, and again `ready` if the funds are mined back.
            events.append(("funding_reorged", {**seen, "previous_balance": fresh.funding.balance}))
            log.warning(
                "funding reorged away",
                escrow_id=rec.escrow_id,
                balance=f.balance,
                previous_balance=fresh.funding.balance,
            )
        if (
            state is EscrowState.FUNDED
            and f.unlocked_balance >= fresh.amount
            and f.confirmations >= fresh.required_confirmations
        ):
            state = EscrowState.READY
            events.append(("ready", seen))
            # The wallet's own height after its refresh is the chain that showed the funds
            # ready; the cycle's cached daemon height may be older than that (blocks mined
            # since the cycle began), and a ready height set too low would let a payout go to a
            # daemon that has not seen the deposit.
            funding = attrs.evolve(funding, ready_height=max(height, f.height))
        await self._events.change(rec.escrow_id, events, state=state, funding=funding)
        if events:
            await self._store_wallets(rec.escrow_id)

    async def _store_wallets(self, escrow_id: str) -> None:
        """The wallets just saw the escrow's funding change: store them now, not at the next
        periodic store, so a crash (or, in a cluster, the next owner, which opens the files
        last saved in the database) does not start from wallets that never saw the deposit."""
        self.session_calls["store"] += 1
        try:
            await self._registry.call(escrow_id, Store(), caller=Caller.MONITOR)
        except WalletdError as exc:  # the periodic store will do it
            log.warning(
                "wallet store after a funding change failed", escrow_id=escrow_id, error=str(exc)
            )

    def _wants_exchange(self, rec: EscrowRecord) -> bool:
        if (
            not self.pre_exchange_enabled
            or rec.state is not EscrowState.READY
            or rec.payout is not None
        ):
            return False
        # Low priority: never into a session with an API call in hand; the next cycle will do.
        info = self._registry.session_info(rec.escrow_id)
        return info is not None and not info.exchanged and not info.busy

    async def pre_exchange(self, rec: EscrowRecord, height: int) -> None:
        """Exchange the escrow's multisig info ahead of its payout. Never once a payout is
        recorded: the session also refuses it once it has begun preparing one."""
        fresh = await self._store.get_escrow(rec.escrow_id)
        if fresh is None or not self._wants_exchange(fresh):
            return
        self.session_calls["pre_exchange"] += 1
        await self._registry.call(rec.escrow_id, PreExchange(), caller=Caller.MONITOR)

    async def check_payout(self, rec: EscrowRecord, height: int) -> None:
        payout = rec.payout
        txid = payout.txid if payout else None
        if payout is None or not txid:
            return
        async with self._ownership.holding(rec.escrow_id):  # its writes are fenced by it
            await self._check_submitted(rec, payout, txid, height)

    async def _check_submitted(
        self, rec: EscrowRecord, payout: Payout, txid: str, height: int
    ) -> None:
        status = await self._chain.tx_status(txid)
        if status is None:
            await self._resubmit(rec)
            return
        confirmations = status.confirmations(height)
        if confirmations != payout.confirmations:
            rec = await self._store.update_escrow(
                rec.escrow_id,
                payout=attrs.evolve(payout, confirmations=confirmations),
                expect_payout=ExpectedPayout.of(payout),  # still the submitted one read
            )
        if confirmations >= rec.required_confirmations:
            (final,) = rec.state.moves
            done = {"txid": txid, "confirmations": confirmations}
            await self._events.change(rec.escrow_id, [(final, done)], state=final)
            self._metrics.payout(payout.kind.value, "confirmed")
            await self._registry.close(rec.escrow_id, reason="finished")

    async def _resubmit(self, rec: EscrowRecord) -> None:
        """The daemon lost the payout (pool flushed, restart): relay the recorded blob again. It
        is the same signed transaction, so this can never make a second payout."""
        payout = rec.payout
        assert payout is not None
        assert payout.txids is not None
        assert payout.signed_txset is not None
        ready_at = rec.funding.ready_height
        if ready_at is not None and self.height is not None and self.height < ready_at:
            log.warning(
                "monerod in use is behind the escrow's ready height; resubmit later",
                escrow_id=rec.escrow_id,
                height=self.height,
                ready_height=ready_at,
            )
            return
        log.warning(
            "payout not known to monerod; resubmitting the recorded blob",
            escrow_id=rec.escrow_id,
            txid=payout.txid,
        )
        self.session_calls["resubmit"] += 1
        self._ownership.check_held(rec.escrow_id)  # relays money: the lease must be valid
        await self._registry.call(
            rec.escrow_id,
            SubmitPayout("arbiter", payout.txids, payout.signed_txset),
            caller=Caller.MONITOR,
        )
        self._metrics.payout(payout.kind.value, "resubmitted")

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
                    self.cold_opens += 1
                    await self.check_funding(rec, self.height, cold=True)
                except Capacity:
                    self.cold_opens -= 1
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
