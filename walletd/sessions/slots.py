"""Who asks the registry for a session, and the queue of callers waiting for a session slot.

At the cap a caller that needs a new session waits for a slot. Waiters are served strictly in
order, never by whoever happens to wake first after a slot frees: first by priority (money-moving
calls, `Priority.MONEY`, before reads and the monitor's checks, `Priority.ROUTINE`), then by
arrival (FIFO within a priority). The registry hands a slot to the head of the queue the moment
one is free or can be freed (an idle session evicted for it), synchronously in the bookkeeping
that made it so: a read that finishes its call cannot start the next one on that session before
a queued payout has claimed the slot, so a stream of reads never starves a payout.

No waiter behind the head may evict more than the head: money-moving callers, which alone may
evict a session held for money (the registry's `MONEY_HOLD`), are all ahead of the rest, and the
cold monitor, which may evict less, never queues (it takes a slot at once or answers Capacity).
So when the head cannot be served nobody behind it can either, and strict order costs nothing.

How long a waiter waits is the registry's `Limits`: `payout_wait` (the request timeout) for money,
`capacity_wait` for the rest; a waiter that gives up (its bound, or its caller gone) leaves its
place at once.
"""

from __future__ import annotations

import bisect
import enum
import itertools

import attrs
import trio

__all__ = ["Caller", "Priority", "SlotQueue", "Waiter"]


class Priority(enum.IntEnum):
    """The order in which waiting callers get slots (lower first)."""

    MONEY = 0
    ROUTINE = 1


class Caller(enum.Enum):
    """Who asks the registry for a session: it decides what counts as use, who may evict, and
    the caller's place in the queue for a slot."""

    API = "api"
    """A client of the socket API: the call counts as use (LRU position, idle time)."""
    API_MONEY = "api_money"
    """A client's money-moving call (a release or refund, a creation): counts as use like API,
    and waits for a slot like the payout task."""
    MONITOR = "monitor"
    """The monitor's warm checks, sessions reopened at start-up for it, and the multisig sync
    after a payout was submitted: not use."""
    COLD_MONITOR = "cold_monitor"
    """The monitor's cold checks: not use, and it opens a session only into a free slot, one
    held by a session no client used (or not for `monitor_evict_after`); else Capacity at once,
    so watching many escrows never thrashes the cap. It never waits, nor passes a waiter."""
    PAYOUT = "payout"
    """The payout task (run in the lifecycle's nursery, also resumed at start-up with no client
    waiting): not use, but it may evict like the API and waits for a slot first in line."""

    @property
    def counts_as_use(self) -> bool:
        return self in (Caller.API, Caller.API_MONEY)

    @property
    def may_evict_api(self) -> bool:
        return self is not Caller.COLD_MONITOR

    @property
    def moves_money(self) -> bool:
        """Its session sorts last for eviction while a money-moving call was its last use."""
        return self in (Caller.PAYOUT, Caller.API_MONEY)

    @property
    def priority(self) -> Priority:
        return Priority.MONEY if self.moves_money else Priority.ROUTINE


@attrs.define(eq=False)
class Waiter:
    """One caller's place in the queue. `victim` is the session told to leave for it (None: a
    free slot), set with `granted`; or `refused`, also set with it: the registry is closing."""

    caller: Caller
    seq: int
    granted: trio.Event = attrs.field(factory=trio.Event)
    victim: object | None = None
    refused: bool = False

    def order(self) -> tuple[int, int]:
        return (self.caller.priority, self.seq)


class SlotQueue:
    """Waiters in service order: by priority, then by arrival."""

    def __init__(self) -> None:
        self._waiters: list[Waiter] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._waiters)

    def push(self, caller: Caller) -> Waiter:
        waiter = Waiter(caller, next(self._seq))
        bisect.insort(self._waiters, waiter, key=Waiter.order)
        return waiter

    def head(self) -> Waiter | None:
        return self._waiters[0] if self._waiters else None

    def grant(self, waiter: Waiter, victim: object | None) -> None:
        """Hand the slot to `waiter` (the head) and take it out of the queue."""
        self._waiters.remove(waiter)
        waiter.victim = victim
        waiter.granted.set()

    def leave(self, waiter: Waiter) -> None:
        """A waiter that gave up before it was served: its place goes to those behind it."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def refuse_all(self) -> None:
        for waiter in self._waiters:
            waiter.refused = True
            waiter.granted.set()
        self._waiters.clear()

    def waiting(self) -> dict[str, int]:
        """How many wait, per caller kind (every kind named, zeros included)."""
        counts = dict.fromkeys((c.value for c in Caller if c is not Caller.COLD_MONITOR), 0)
        for waiter in self._waiters:
            counts[waiter.caller.value] += 1
        return counts
