"""The event feed: appended to the state database, woken long polls.

Sequence numbers come from SQLite's AUTOINCREMENT, so they only grow and survive restarts.
AUTOINCREMENT (not a plain rowid) matters once events are pruned: a rowid would restart after
the largest row left, so a restart after pruning could hand out a seq a client has already seen.

Events older than `daemon.events_retention_days` are pruned in the background, in small
batches, never the newest (the feed's position is always visible). A client whose cursor is
older than the oldest kept event gets the oldest kept events onward, and the reply says
`"pruned": true` with `"oldest_seq"`: it missed events and should resynchronise its escrows
with `GET /v1/escrows`.

`emit` records an event that announces something already done elsewhere (a session opened or
closed, a wallet-rpc restarted or repaired): when the database refuses it, the event is lost and
said so in the log, because failing the caller (a session's supervisor, the registry) would turn
a full disk into a dead daemon. Events that go with a state change are written in the same
transaction as the change (`insert`, `change`), so those are never lost: the change fails with
them and is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Unpack

import attrs
import structlog
import trio
import trio.lowlevel

from walletd.errors import StoreUnavailable
from walletd.escrows.model import EscrowRecord, EscrowState
from walletd.jsontypes import JsonObject
from walletd.state.store import EscrowChanges, EventRecord, NewEvent, StateStore

__all__ = ["PRUNE_BATCH", "PRUNE_INTERVAL", "EventLog", "page_json"]

log = structlog.get_logger(__name__)

MAX_POLL_S = 60.0
PRUNE_INTERVAL = 3600.0  # seconds between pruning rounds
PRUNE_BATCH = 1000  # events deleted per transaction
SOON_QUEUE = 10_000  # events `emit_soon` may hold before dropping (each is a few hundred bytes)


def page_json(after: int, events: Sequence[EventRecord]) -> JsonObject:
    """The /v1/events reply. Seqs have no gaps except where events were pruned (a rolled-back
    insert rolls AUTOINCREMENT's counter back too), so a first event past `after + 1` means
    the client's cursor fell into the pruned range."""
    body: JsonObject = {
        "events": [e.to_json() for e in events],
        "next": events[-1].seq if events else max(after, 0),
    }
    if events and events[0].seq > max(after, 0) + 1:
        body.update(pruned=True, oldest_seq=events[0].seq)
    return body


@attrs.frozen
class _Soon:
    type: str
    escrow_id: str | None
    data: dict[str, Any]  # Any: event JSON
    session_announcement: bool


def _lost(soon: _Soon, why: str) -> None:
    log.error("event not recorded", type=soon.type, escrow_id=soon.escrow_id, error=why)


class EventLog:
    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._changed = trio.Event()
        # `emit_soon`'s queue, written in order by `run`, for callers that cannot wait (the
        # registry announcing a session from inside its bookkeeping) when the store is remote.
        self._soon_send, self._soon_receive = trio.open_memory_channel[_Soon](SOON_QUEUE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write `emit_soon`'s events, in the order they were queued."""
        task_status.started()
        async for soon in self._soon_receive:
            if soon.session_announcement:
                try:
                    state = await self._store.escrow_state(soon.escrow_id or "")
                except StoreUnavailable as exc:
                    _lost(soon, exc.message)
                    continue
                if state is None or state is EscrowState.CREATING:
                    continue
            await self.emit(soon.type, soon.escrow_id, **soon.data)

    # Any: an event's data is JSON, stored and served as given.
    def emit_soon(
        self,
        type_: str,
        escrow_id: str | None = None,
        *,
        session_announcement: bool = False,
        **data: Any,
    ) -> None:
        """`emit` from code that cannot wait. The embedded store writes it at once, as `emit`
        would; a remote store's write is queued and made by `run`, in order (a full queue drops
        the event and says so, as `emit` does when the database refuses one).

        `session_announcement`: a session opened or closed, which an escrow being created or
        adopted does not announce (it gets its session_opened after escrow_created)."""
        soon = _Soon(type_, escrow_id, data, session_announcement)
        try:
            self._write_now(soon)
        except trio.WouldBlock:  # a remote store: `run` writes it
            try:
                self._soon_send.send_nowait(soon)
            except (trio.WouldBlock, trio.ClosedResourceError):
                _lost(soon, "queue closed")
        except StoreUnavailable as exc:
            _lost(soon, exc.message)

    def _write_now(self, soon: _Soon) -> None:
        """Write `soon` inline (the embedded store), or `trio.WouldBlock` (a remote one)."""
        if soon.session_announcement:
            state = self._store.escrow_state_nowait(soon.escrow_id or "")
            if state is None or state is EscrowState.CREATING:
                return
        self._published([self._store.append_event_nowait(soon.type, soon.escrow_id, soon.data)])

    def close_queue(self) -> None:
        """No more `emit_soon`: `run` ends once it has written what is queued."""
        self._soon_send.close()

    # Any: an event's data is JSON, stored and served as given.
    async def emit(
        self, type_: str, escrow_id: str | None = None, **data: Any
    ) -> EventRecord | None:
        """Record an event and wake every waiting long poll; None if the database refused it."""
        try:
            event = await self._store.append_event(type_, escrow_id, data)
        except StoreUnavailable as exc:
            log.error("event not recorded", type=type_, escrow_id=escrow_id, error=exc.message)
            return None
        self._published([event])
        return event

    async def insert(self, rec: EscrowRecord, events: Sequence[NewEvent]) -> None:
        """Record a new escrow together with its events (one transaction), then publish them."""
        self._published(await self._store.insert_escrow(rec, events))

    async def change(
        self, escrow_id: str, events: Sequence[NewEvent], **changes: Unpack[EscrowChanges]
    ) -> EscrowRecord:
        """Change an escrow and record the events that say so in one transaction."""
        rec, appended = await self._store.change_escrow(escrow_id, changes, events)
        self._published(appended)
        return rec

    def wake(self) -> None:
        """Another host wrote events (a cluster): long polls read the feed again."""
        self._changed.set()
        self._changed = trio.Event()

    def _published(self, events: Sequence[EventRecord]) -> None:
        for event in events:
            log.info(
                "event", type=event.type, escrow_id=event.escrow_id, seq=event.seq, **event.data
            )
        if events:
            self._changed.set()
            self._changed = trio.Event()

    async def last_seq(self) -> int:
        return await self._store.last_event_seq()

    async def prune(self, retention_days: int) -> int:
        """Delete events older than `retention_days` (never the newest); returns the count."""
        cutoff = datetime.now(UTC) - timedelta(days=retention_days)
        before = cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        total = 0
        while True:
            deleted = await self._store.prune_events(before, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
            await trio.lowlevel.checkpoint()  # let other tasks run between batches
        if total:
            log.info("events pruned", count=total, before=before)
        return total

    async def prune_forever(self, retention_days: int) -> None:
        """Prune every PRUNE_INTERVAL; a database error skips one round (0 days: never)."""
        if retention_days <= 0:
            return
        while True:
            try:
                await self.prune(retention_days)
            except StoreUnavailable as exc:
                log.error("event pruning skipped", error=exc.message)
            await trio.sleep(PRUNE_INTERVAL)

    async def wait_after(self, after: int, timeout: float, limit: int = 500) -> list[EventRecord]:
        """Events newer than `after`, waiting up to `timeout` seconds for the first one."""
        # The first read is outside the timeout: a read from a remote store takes time, and a
        # poll with no wait (timeout 0) must still answer what is there.
        changed = self._changed  # taken before each read: a wake-up during it is kept
        events = await self._store.events_after(after, limit)
        if events:
            return events
        with trio.move_on_after(min(max(timeout, 0.0), MAX_POLL_S)):
            while True:
                await changed.wait()
                changed = self._changed
                events = await self._store.events_after(after, limit)
                if events:
                    return events
        return []
