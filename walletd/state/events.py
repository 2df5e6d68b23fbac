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

import structlog
import trio
import trio.lowlevel

from walletd.escrows.model import EscrowRecord
from walletd.jsontypes import JsonObject
from walletd.state.store import EscrowChanges, EventRecord, NewEvent, Store, StoreUnavailable

__all__ = ["PRUNE_BATCH", "PRUNE_INTERVAL", "EventLog", "page_json"]

log = structlog.get_logger(__name__)

MAX_POLL_S = 60.0
PRUNE_INTERVAL = 3600.0  # seconds between pruning rounds
PRUNE_BATCH = 1000  # events deleted per transaction


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


class EventLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = trio.Event()

    # Any: an event's data is JSON, stored and served as given.
    def emit(self, type_: str, escrow_id: str | None = None, **data: Any) -> EventRecord | None:
        """Record an event and wake every waiting long poll; None if the database refused it."""
        try:
            event = self._store.append_event(type_, escrow_id, data)
        except StoreUnavailable as exc:
            log.error("event not recorded", type=type_, escrow_id=escrow_id, error=exc.message)
            return None
        self._published([event])
        return event

    def insert(self, rec: EscrowRecord, events: Sequence[NewEvent]) -> None:
        """Record a new escrow together with its events (one transaction), then publish them."""
        self._published(self._store.insert_escrow(rec, events))

    def change(
        self, escrow_id: str, events: Sequence[NewEvent], **changes: Unpack[EscrowChanges]
    ) -> EscrowRecord:
        """Change an escrow and record the events that say so in one transaction."""
        rec, appended = self._store.change_escrow(escrow_id, changes, events)
        self._published(appended)
        return rec

    def _published(self, events: Sequence[EventRecord]) -> None:
        for event in events:
            log.info(
                "event", type=event.type, escrow_id=event.escrow_id, seq=event.seq, **event.data
            )
        if events:
            self._changed.set()
            self._changed = trio.Event()

    @property
    def last_seq(self) -> int:
        return self._store.last_event_seq()

    async def prune(self, retention_days: int) -> int:
        """Delete events older than `retention_days` (never the newest); returns the count."""
        cutoff = datetime.now(UTC) - timedelta(days=retention_days)
        before = cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        total = 0
        while True:
            deleted = self._store.prune_events(before, PRUNE_BATCH)
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
        with trio.move_on_after(min(max(timeout, 0.0), MAX_POLL_S)):
            while True:
                events = self._store.events_after(after, limit)
                if events:
                    return events
                await self._changed.wait()
        return []
