"""The event feed: appended to the state database, woken long polls.

Sequence numbers come from SQLite's AUTOINCREMENT, so they only grow and survive restarts.

`emit` records an event that announces something already done elsewhere (a session opened or
closed, a wallet-rpc restarted or repaired): when the database refuses it, the event is lost and
said so in the log, because failing the caller (a session's supervisor, the registry) would turn
a full disk into a dead daemon. Events that go with a state change are written in the same
transaction as the change (`insert`, `change`), so those are never lost: the change fails with
them and is retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
import trio

from walletd.store import EscrowRecord, EventRecord, NewEvent, Store, StoreUnavailable

__all__ = ["EventLog"]

log = structlog.get_logger(__name__)

MAX_POLL_S = 60.0


class EventLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = trio.Event()

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

    def change(self, escrow_id: str, events: Sequence[NewEvent], **changes: Any) -> EscrowRecord:
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

    async def wait_after(self, after: int, timeout: float, limit: int = 500) -> list[EventRecord]:
        """Events newer than `after`, waiting up to `timeout` seconds for the first one."""
        with trio.move_on_after(min(max(timeout, 0.0), MAX_POLL_S)):
            while True:
                events = self._store.events_after(after, limit)
                if events:
                    return events
                await self._changed.wait()
        return []
