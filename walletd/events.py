"""The event feed: appended to the state database, woken long polls.

Sequence numbers come from SQLite's AUTOINCREMENT, so they only grow and survive restarts.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from walletd.store import EventRecord, Store

__all__ = ["EventLog"]

log = structlog.get_logger(__name__)

MAX_POLL_S = 60.0


class EventLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = trio.Event()

    def emit(self, type_: str, escrow_id: str | None = None, **data: Any) -> EventRecord:
        """Record an event and wake every waiting long poll."""
        event = self._store.append_event(type_, escrow_id, data)
        log.info("event", type=type_, escrow_id=escrow_id, seq=event.seq, **data)
        self._changed.set()
        self._changed = trio.Event()
        return event

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
