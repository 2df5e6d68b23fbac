"""The session registry: a supervisor of escrow sessions with a cap, LRU eviction and an idle TTL.

It is OTP's simple_one_for_one: sessions are transient children started in the registry's nursery
and registered as soon as their entry exists, so concurrent callers for one escrow share one
opening (the check and the insert happen with no checkpoint in between: never two sessions for one
escrow). An entry holds its slot from the moment its opening starts until its wallets are closed.

When a slot is needed at the cap, the caller joins the slot queue (`slots.py`): money-moving calls
(`Caller.PAYOUT`, `Caller.API_MONEY`) first, then reads and the monitor, each in arrival order. The
head of the queue gets the first free slot, or the least recently used session that is idle (no
call in hand or queued) is sent `Leave("evicted")` for it: it finishes, stores and closes its
wallets, and only then does the head, which holds that slot reserved (no third party can take it
meanwhile), open its session. A busy session is never chosen: the head waits for the first one to
finish its call, ahead of every caller behind it. A caller not served within its bound gets
`Capacity` (503): `payout_wait` (the request timeout) for money, `capacity_wait` for the rest. A
session that outlives `evict_grace` after being told to leave is cancelled.

A session is only ever used with the spec it was opened from: a caller that passes its own spec
(a creation or an adoption, opening wallets not yet recorded) while the escrow's entry was opened
from another one gets `Conflict`, never that session. Otherwise a creation racing an adoption of
the same id would run its multisig setup on the adopted wallets and record their address under
wallet files that were never made.

Only API calls count as use (`Caller.API`, `API_MONEY`): the monitor's checks and the payout task
never refresh a session's idle time, and a session opened only for the monitor sorts first for
eviction. A session whose last call moved money, less than `MONEY_HOLD` ago, is held for money:
only another money-moving caller may evict it, and only after every other idle session, so a
payout between two steps (a database write, a daemon call) keeps its session while reads wait;
money use is not use for the idle TTL.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog
import trio

from walletd.errors import Capacity, SessionClosed, Unavailable, public_error
from walletd.sessions.entry import Entry as _Entry
from walletd.sessions.entry import State as _State
from walletd.sessions.handles import SessionSpec
from walletd.sessions.limits import Limits, RegistryStatistics, SessionInfo, SessionStatistics
from walletd.sessions.mailbox import SessionHandle
from walletd.sessions.messages import Leave, Message
from walletd.sessions.slots import Caller, SlotQueue, Waiter

__all__ = ["Caller", "Limits", "Registry", "RegistryStatistics", "SessionInfo"]

log = structlog.get_logger(__name__)


class RunnableSession(Protocol):
    """What `new_session` makes of a spec: an `EscrowSession` in production."""

    async def run(self, *, task_status: trio.TaskStatus[SessionHandle]) -> None: ...

    def statistics(self) -> SessionStatistics: ...


SessionRunner = Callable[[SessionSpec], RunnableSession]
SpecLookup = Callable[[str], Awaitable[SessionSpec]]
EventSink = Callable[..., None]  # sync: called inside the bookkeeping
R = TypeVar("R")


class Registry:
    def __init__(
        self,
        lookup: SpecLookup,
        new_session: SessionRunner,
        limits: Limits,
        *,
        on_event: EventSink | None = None,
    ) -> None:
        self._lookup = lookup
        self._new_session = new_session
        self.limits = limits
        self._on_event = on_event or (lambda *a, **k: None)
        self._entries: dict[str, _Entry] = {}
        self._reserved = 0
        self._queue = SlotQueue()
        self._pumping = False
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._sweep_changed = trio.Event()
        self._closing = False
        self._counters = dict.fromkeys(
            ("opened", "closed", "evicted", "expired", "hits", "misses", "failed"), 0
        )
        # Sessions running now, and the wallet-rpc restarts of those that ended.
        self._running: set[RunnableSession] = set()
        self._ended_restarts = 0

    # ---- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The registry's nursery: every session lives here; the idle sweep runs beside them."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sweep_loop)
            nursery.start_soon(self._hold_loop)
            task_status.started()
            await trio.sleep_forever()

    async def shutdown(self, timeout: float) -> None:
        """Tell every session to leave (they store and close), wait up to `timeout`, then cancel."""
        self._closing = True
        self._queue.refuse_all()
        for entry in list(self._entries.values()):
            self._tell_leave(entry, "shutdown")
        with trio.move_on_after(timeout):
            while self._entries:
                await self._wait_changed()
        for entry in list(self._entries.values()):
            log.error("session did not close in time; cancelling", escrow_id=entry.escrow_id)
            entry.leave_reason = entry.leave_reason or "shutdown"  # ours: not a session failure
            entry.scope.cancel()
        with trio.move_on_after(5):
            while self._entries:
                await self._wait_changed()

    def set_limits(self, limits: Limits) -> None:
        """Apply new limits now; a lower cap evicts idle sessions down to it."""
        self.limits = limits
        self._sweep_changed.set()
        excess = len(self._entries) - limits.max_active
        for entry in self._lru_idle():
            if excess <= 0:
                break
            self._tell_leave(entry, "evicted")
            excess -= 1
        self._notify()

    def restart_all(self, reason: str) -> int:
        """Every session leaves (stores and closes its wallets) and the next call opens it anew;
        one still opening leaves as soon as it is open. A daemon switch uses this: the new
        sessions get wallet-rpc processes started against the new daemon. Calls in flight finish
        first; queued ones are retried on the new session (see `call`). Returns how many."""
        count = 0
        for entry in list(self._entries.values()):
            if entry.state is _State.OPEN:
                self._tell_leave(entry, reason)
                count += 1
            elif entry.state is _State.OPENING:
                entry.leave_when_open = reason
                count += 1
        return count

    # ---- the public operations -------------------------------------------------------------------

    def session_address(self, escrow_id: str) -> str | None:
        """The multisig address the open session verified on every wallet."""
        entry = self._entries.get(escrow_id)
        return entry.handle.address if entry and entry.handle else None

    async def call(
        self,
        escrow_id: str,
        message: Message[R],
        *,
        caller: Caller,
        spec: SessionSpec | None = None,
    ) -> R:
        """Send `message` to the escrow's session, opening it first if needed.

        `Caller.COLD_MONITOR` opens a session only into a free slot, one held by a monitor-only
        session, or one the API has not used for monitor_evict_after (the monitor's
        cold_interval); else it answers Capacity at once, so monitoring never thrashes the cap."""
        for _attempt in range(3):
            entry, _ = await self._acquire(escrow_id, caller, spec=spec)
            try:
                assert entry.handle is not None
                return await entry.handle.request(message)
            except SessionClosed:
                # It left between our lookup and our message (shutdown, failure): open anew.
                with trio.move_on_after(
                    self.limits.evict_grace
                ):  # the old entry must be gone first
                    await entry.closed.wait()
                continue
            finally:
                self._release(entry, caller)
        raise Unavailable(f"session for {escrow_id} keeps closing; try again later")

    async def open(
        self, escrow_id: str, *, caller: Caller, spec: SessionSpec | None = None
    ) -> tuple[bool, float]:
        """Get-or-create the session; returns (created, seconds the caller waited for it).

        `spec` opens wallets not yet recorded as an escrow (adoption checks them this way)."""
        start = trio.current_time()
        entry, created = await self._acquire(escrow_id, caller, spec=spec)
        self._release(entry, caller)
        return (created, trio.current_time() - start)

    async def close(self, escrow_id: str, reason: str = "explicit") -> bool:
        """Close the escrow's session if one is open; waits until its wallets are closed."""
        entry = self._entries.get(escrow_id)
        if entry is None:
            return False
        if entry.state is _State.OPENING:
            await entry.ready.wait()
        self._tell_leave(entry, reason)
        await entry.closed.wait()
        return True

    def is_open(self, escrow_id: str) -> bool:
        return self._is_open(escrow_id)

    def sessions(self) -> list[SessionInfo]:
        """Open sessions, most recently used first."""
        now = trio.current_time()
        entries = [e for e in self._entries.values() if e.state is _State.OPEN]
        entries.sort(key=lambda e: e.lru_key(now), reverse=True)
        return [self._info(e, now) for e in entries]

    def session_info(self, escrow_id: str) -> SessionInfo | None:
        entry = self._entries.get(escrow_id)
        if entry is None or entry.state is not _State.OPEN:
            return None
        return self._info(entry, trio.current_time())

    def statistics(self) -> RegistryStatistics:
        now = trio.current_time()
        open_entries = [e for e in self._entries.values() if e.state is _State.OPEN]
        ages = [now - (e.opened_at or now) for e in open_entries]
        restarts = self._ended_restarts
        restarts += sum(s.statistics().wallet_rpc_restarts for s in self._running)
        return RegistryStatistics(
            active_sessions=len(open_entries),
            max_sessions=self.limits.max_active,
            utilization=round(len(open_entries) / self.limits.max_active, 4),
            avg_age_s=round(sum(ages) / len(ages), 3) if ages else 0.0,
            oldest_age_s=round(max(ages), 3) if ages else 0.0,
            **self._counters,
            waiting=self._queue.waiting(),
            wallet_rpc_restarts=restarts,
        )

    # ---- slots and entries -----------------------------------------------------------------------

    def _is_open(self, escrow_id: str) -> bool:
        entry = self._entries.get(escrow_id)
        return entry is not None and entry.state is _State.OPEN

    def can_open_for_monitor(self) -> bool:
        """A monitor-only opening would find a slot without evicting a recently used session."""
        if self._queue:
            return False  # callers wait for slots: the cold monitor never passes them
        if len(self._entries) + self._reserved < self.limits.max_active:
            return True
        return any(self._cold(e) for e in self._lru_idle())

    def _cold(self, entry: _Entry) -> bool:
        """Evictable for the monitor: never used by the API (nor a payout), or not for
        monitor_evict_after."""
        used = entry.last_use()
        return used is None or trio.current_time() - used >= self.limits.monitor_evict_after

    async def _acquire(
        self, escrow_id: str, caller: Caller, *, spec: SessionSpec | None = None
    ) -> tuple[_Entry, bool]:
        """The escrow's open entry with one more call in flight (the caller must `_release`),
        and whether this caller started its opening."""
        created = False
        while True:
            entry = self._entries.get(escrow_id)
            if entry is not None:
                entry.check_spec(spec)
            if entry is not None and entry.state is _State.OPEN:
                self._counters["hits"] += 1
                break
            if entry is not None and entry.state is _State.LEAVING:
                await entry.closed.wait()
                continue
            self._counters["misses"] += 1
            if entry is None:
                entry, created = await self._start_entry(escrow_id, spec, caller)
                entry.check_spec(spec)  # someone else's, started while we reserved a slot
            # Shared opening: every caller for this escrow waits on the same event. The opening
            # runs in the registry's nursery, so one caller giving up harms no other. While
            # they wait, the fresh session is not idle: no one may evict it before they use it.
            entry.waiting += 1
            try:
                await entry.ready.wait()
            finally:
                entry.waiting -= 1
            if entry.error is not None:
                raise _fresh(entry.error)
            if entry.state is _State.OPEN:
                break
        entry.inflight += 1
        self._used(entry, caller)
        return entry, created

    def _release(self, entry: _Entry, caller: Caller) -> None:
        entry.inflight -= 1
        self._used(entry, caller)
        if entry.inflight == 0:
            self._notify()  # idle now: the head of the slot queue may take it (_pump)

    @staticmethod
    def _used(entry: _Entry, caller: Caller) -> None:
        now = trio.current_time()
        if caller.counts_as_use:
            entry.last_api_use = now
        if caller.moves_money:
            entry.last_money_use = now
        entry.money_last = caller.moves_money

    async def _start_entry(
        self, escrow_id: str, spec: SessionSpec | None, caller: Caller
    ) -> tuple[_Entry, bool]:
        """Reserve a slot (evicting if needed), then start the session's opening.

        Returns the entry and True, or someone else's entry for the escrow and False."""
        if spec is None:
            spec = await self._lookup(escrow_id)  # NotFound before any slot is touched
        existing = self._entries.get(escrow_id)
        if existing is not None:  # someone else started it while we looked it up
            return existing, False
        await self._reserve_slot(caller)
        existing = self._entries.get(escrow_id)
        if existing is not None:
            self._reserved -= 1
            self._notify()
            return existing, False
        self._reserved -= 1
        entry = _Entry(escrow_id, created_at=trio.current_time(), spec=spec)
        self._entries[escrow_id] = entry
        assert self._nursery is not None, "registry is not running"
        self._nursery.start_soon(self._supervise, entry, spec)
        return entry, True

    async def _reserve_slot(self, caller: Caller) -> None:
        """Reserve a slot for `caller` (`self._reserved`, which the caller turns into its entry
        or gives back): at once, or in its turn in the slot queue within its bound."""
        if self._closing:
            raise Unavailable("walletd is shutting down")
        if caller is Caller.COLD_MONITOR:
            # Never waits: a free slot or a cold session's now, and only if nobody is queued.
            taken, victim = (False, None) if self._queue else self._take_slot(caller)
            if not taken:
                raise Capacity(
                    f"no session slot for a cold check ({len(self._entries)} of "
                    f"{self.limits.max_active} in use)"
                )
        else:
            victim = await self._queued(caller)
        if victim is not None:
            try:
                # The slot is ours once the victim's wallets are closed (its evict_grace
                # bounds this). A caller that gives up meanwhile hands the slot back: the
                # victim still leaves, and its slot goes to the next in line.
                await victim.closed.wait()
            except BaseException:
                self._reserved -= 1
                self._notify()
                raise

    async def _queued(self, caller: Caller) -> _Entry | None:
        """Wait in the slot queue; the victim told to leave for us, or None (a free slot)."""
        waiter = self._queue.push(caller)
        self._pump()  # served at once if a slot is free or can be freed, else wait our turn
        bound = self.limits.payout_wait if caller.moves_money else self.limits.capacity_wait
        try:
            with trio.move_on_after(bound):
                await waiter.granted.wait()
        except BaseException:
            self._withdraw(waiter)
            raise
        if waiter.refused:
            raise Unavailable("walletd is shutting down")
        if not waiter.granted.is_set():
            self._withdraw(waiter)
            busy = sum(e.inflight > 0 or e.waiting > 0 for e in self._entries.values())
            raise Capacity(
                f"no session slot could be freed within {bound:g} s "
                f"({len(self._entries)} of {self.limits.max_active} in use, {busy} busy, "
                f"{len(self._queue)} waiting)"
            )
        victim = waiter.victim
        assert victim is None or isinstance(victim, _Entry)
        return victim

    def _withdraw(self, waiter: Waiter) -> None:
        """A waiter that gave up: out of the queue, or its granted slot given back."""
        if waiter.granted.is_set():
            if not waiter.refused:
                self._reserved -= 1
        else:
            self._queue.leave(waiter)
        self._notify()

    def _pump(self) -> None:
        """Serve the slot queue from its head, as far as slots are free or can be freed. Runs
        inside the bookkeeping of every change (`_notify`), with no checkpoint: a slot that
        becomes free or evictable goes to the head before any other task runs."""
        if self._pumping:
            return  # a change made while serving (an eviction): the loop below sees it
        self._pumping = True
        try:
            while (waiter := self._queue.head()) is not None and not self._closing:
                taken, victim = self._take_slot(waiter.caller)
                if not taken:
                    break  # those behind the head have no more rights to slots than it
                self._queue.grant(waiter, victim)
        finally:
            self._pumping = False

    def _take_slot(self, caller: Caller) -> tuple[bool, _Entry | None]:
        """Reserve a free slot, or tell the least recently used idle session `caller` may evict
        to leave and reserve its slot (returned as the victim); (False, None) if neither can be
        done now.

        A session already leaving whose slot nobody reserved (expired, restarting) frees one
        soon: no second session is evicted meanwhile."""
        if len(self._entries) + self._reserved < self.limits.max_active:
            self._reserved += 1
            return True, None
        leaving = sum(e.state is _State.LEAVING for e in self._entries.values())
        victims = self._lru_idle()
        if not caller.moves_money:
            now = trio.current_time()
            victims = [v for v in victims if (v.held_for_money_until() or now) <= now]
        if caller is Caller.COLD_MONITOR:
            victims = [v for v in victims if self._cold(v)]
        if leaving > self._reserved or not victims:
            return False, None
        self._reserved += 1  # before it leaves, so no other caller takes the slot it frees
        self._tell_leave(victims[0], "evicted")
        return True, victims[0]

    async def _hold_loop(self) -> None:
        """A session held for money becomes evictable for reads when its hold ends, and no
        call ending says so: serve the queue again then (or at the next change, and look anew)."""
        while True:
            with trio.move_on_after(self._until_a_hold_ends()):
                await self._wait_changed()
            self._pump()

    def _until_a_hold_ends(self) -> float:
        """Seconds until the first idle session held for money may be evicted by anyone."""
        now = trio.current_time()
        ends = [
            until
            for e in self._lru_idle()
            if (until := e.held_for_money_until()) is not None and until > now
        ]
        return min(ends) - now if ends else math.inf

    def _lru_idle(self) -> list[_Entry]:
        idle = [
            e
            for e in self._entries.values()
            if e.state is _State.OPEN and e.inflight == 0 and e.waiting == 0
        ]
        now = trio.current_time()
        idle.sort(key=lambda e: e.lru_key(now))
        return idle

    def _tell_leave(self, entry: _Entry, reason: str) -> None:
        if entry.state is not _State.OPEN:
            return
        entry.state = _State.LEAVING
        entry.leave_reason = reason
        assert entry.handle is not None
        if not entry.handle.tell(Leave(reason)):
            entry.scope.cancel()
        else:
            entry.scope.deadline = trio.current_time() + self.limits.evict_grace
        self._notify()

    async def _supervise(self, entry: _Entry, spec: SessionSpec) -> None:
        session = self._new_session(spec)
        self._running.add(session)
        try:
            with entry.scope:
                await session.run(task_status=_OnReady(self, entry))
        except trio.Cancelled:
            entry.leave_reason = entry.leave_reason or "shutdown"
            raise
        except Exception as exc:  # noqa: BLE001 - a failing session is reported, never crashes us
            if entry.opened_at is None:
                entry.error = exc
                log.warning("session open failed", escrow_id=entry.escrow_id, error=str(exc))
            else:
                entry.leave_reason = "failed"
                self._counters["failed"] += 1
                log.error("session failed", escrow_id=entry.escrow_id, error=str(exc))
        finally:
            self._running.discard(session)
            self._ended_restarts += session.statistics().wallet_rpc_restarts
            self._finish(entry)

    def _opened(self, entry: _Entry, handle: SessionHandle) -> None:
        entry.handle = handle
        entry.opened_at = trio.current_time()
        if entry.state is _State.OPENING:
            entry.state = _State.OPEN
        self._counters["opened"] += 1
        self._on_event("session_opened", entry.escrow_id)
        entry.ready.set()
        if self._closing:
            # Shutdown began while it was opening (and could not be told then): leave now.
            self._tell_leave(entry, "shutdown")
        elif entry.leave_when_open is not None:
            self._tell_leave(entry, entry.leave_when_open)
        self._notify()

    def _finish(self, entry: _Entry) -> None:
        if self._entries.get(entry.escrow_id) is entry:
            del self._entries[entry.escrow_id]
        if entry.opened_at is not None:
            reason = entry.leave_reason or "failed"
            self._counters["closed"] += 1
            if reason == "evicted":
                self._counters["evicted"] += 1
            elif reason == "expired":
                self._counters["expired"] += 1
            self._on_event("session_closed", entry.escrow_id, reason=reason)
        if entry.error is None and entry.opened_at is None:
            entry.error = Unavailable("session closed while opening")
        entry.ready.set()
        entry.closed.set()
        self._notify()

    # ---- idle TTL --------------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            with trio.move_on_after(self.limits.sweep_interval):
                await self._sweep_changed.wait()
                self._sweep_changed = trio.Event()
                continue
            self.sweep()

    def sweep(self) -> int:
        """Close every idle session whose last API use is older than the idle TTL."""
        now = trio.current_time()
        expired = 0
        for entry in list(self._entries.values()):
            if entry.state is not _State.OPEN or entry.inflight or entry.waiting:
                continue
            last = entry.last_api_use if entry.last_api_use is not None else entry.opened_at
            if last is not None and now - last >= self.limits.idle_ttl:
                self._tell_leave(entry, "expired")
                expired += 1
        if expired:
            log.info("idle sessions expired", count=expired)
        return expired

    # ---- helpers ---------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._pump()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    @staticmethod
    def _info(entry: _Entry, now: float) -> SessionInfo:
        last = entry.last_api_use if entry.last_api_use is not None else entry.opened_at or now
        return SessionInfo(
            escrow_id=entry.escrow_id,
            age_s=now - (entry.opened_at or now),
            idle_s=now - last,
            busy=entry.inflight > 0,
            exchanged=entry.handle is not None and entry.handle.exchanged,
        )


class _OnReady:
    """The task_status a session reports to: registers it the moment its wallets are open."""

    def __init__(self, registry: Registry, entry: _Entry) -> None:
        self._registry = registry
        self._entry = entry

    def started(self, value: SessionHandle | None = None) -> None:
        assert value is not None
        self._registry._opened(self._entry, value)


def _fresh(error: BaseException) -> Exception:
    """A new exception for each waiter of a failed opening (one instance raised in many tasks
    would share and grow one traceback)."""
    return public_error(error).copy()  # the same class: SessionFailed stays SessionFailed
