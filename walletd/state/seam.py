"""The durable-state seam: what the daemon needs from its database, whichever database it is.

Two implementations: `LocalState`, the embedded SQLite `Store` of one host (the default), and the
cluster's PostgreSQL store (`walletd.cluster.pg_store`), whose every call is a round trip made in
a worker thread. The seam is async for the second: the SQLite calls stay inline (they never
checkpoint, so a caller's read-modify-write is as atomic as before) behind `async def`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, Unpack

from walletd.escrows.model import EscrowRecord, EscrowState, PayoutProof
from walletd.jsontypes import JsonMapping
from walletd.state.store import EscrowChanges, EventRecord, NewEvent, Store

__all__ = ["LocalState", "StateStore"]


class StateStore(Protocol):
    """Escrows, payout proofs and the event feed. A database that cannot be used raises an
    `Unavailable` (503 to the API); `failure` remembers the last one until a write succeeds."""

    errors: int
    failure: str | None
    on_error: Callable[[], None]

    async def insert_escrow(
        self, rec: EscrowRecord, events: Sequence[NewEvent] = ()
    ) -> list[EventRecord]: ...
    async def get_escrow(self, escrow_id: str) -> EscrowRecord | None: ...
    async def escrow_state(self, escrow_id: str) -> EscrowState | None: ...
    async def list_escrows(self, state: EscrowState | None = None) -> list[EscrowRecord]: ...
    async def count_escrows(self) -> int: ...
    async def wallet_files_in_use(self, *, except_escrow: str | None = None) -> set[str]: ...
    async def escrow_with_address(self, address: str) -> str | None: ...
    async def update_escrow(
        self, escrow_id: str, **changes: Unpack[EscrowChanges]
    ) -> EscrowRecord: ...
    async def change_escrow(
        self, escrow_id: str, changes: EscrowChanges, events: Sequence[NewEvent] = ()
    ) -> tuple[EscrowRecord, list[EventRecord]]: ...
    async def delete_escrow(self, escrow_id: str) -> None:
        """Forget an abandoned creation (a cluster also marks its stored wallet files
        abandoned: never restored again)."""

    async def put_payout_proof(self, escrow_id: str, proof: PayoutProof) -> None: ...
    async def get_payout_proof(self, escrow_id: str) -> PayoutProof | None: ...
    async def append_event(
        self, type_: str, escrow_id: str | None, data: JsonMapping
    ) -> EventRecord: ...
    async def events_after(self, seq: int, limit: int = 500) -> list[EventRecord]: ...
    async def last_event_seq(self) -> int: ...
    async def prune_events(self, before: str, limit: int) -> int: ...
    async def probe(self) -> bool: ...
    async def aclose(self) -> None: ...


class LocalState:
    """`StateStore` over the host's SQLite `Store`: each call runs inline, as it always has."""

    def __init__(self, store: Store) -> None:
        self.sqlite = store

    @property
    def errors(self) -> int:
        return self.sqlite.errors

    @errors.setter
    def errors(self, value: int) -> None:
        self.sqlite.errors = value

    @property
    def failure(self) -> str | None:
        return self.sqlite.failure

    @failure.setter
    def failure(self, value: str | None) -> None:
        self.sqlite.failure = value

    @property
    def on_error(self) -> Callable[[], None]:
        return self.sqlite.on_error

    @on_error.setter
    def on_error(self, value: Callable[[], None]) -> None:
        self.sqlite.on_error = value

    async def insert_escrow(
        self, rec: EscrowRecord, events: Sequence[NewEvent] = ()
    ) -> list[EventRecord]:
        return self.sqlite.insert_escrow(rec, events)

    async def get_escrow(self, escrow_id: str) -> EscrowRecord | None:
        return self.sqlite.get_escrow(escrow_id)

    async def escrow_state(self, escrow_id: str) -> EscrowState | None:
        return self.sqlite.escrow_state(escrow_id)

    async def list_escrows(self, state: EscrowState | None = None) -> list[EscrowRecord]:
        return self.sqlite.list_escrows(state)

    async def count_escrows(self) -> int:
        return self.sqlite.count_escrows()

    async def wallet_files_in_use(self, *, except_escrow: str | None = None) -> set[str]:
        return self.sqlite.wallet_files_in_use(except_escrow=except_escrow)

    async def escrow_with_address(self, address: str) -> str | None:
        return self.sqlite.escrow_with_address(address)

    async def update_escrow(self, escrow_id: str, **changes: Unpack[EscrowChanges]) -> EscrowRecord:
        return self.sqlite.update_escrow(escrow_id, **changes)

    async def change_escrow(
        self, escrow_id: str, changes: EscrowChanges, events: Sequence[NewEvent] = ()
    ) -> tuple[EscrowRecord, list[EventRecord]]:
        return self.sqlite.change_escrow(escrow_id, changes, events)

    async def delete_escrow(self, escrow_id: str) -> None:
        self.sqlite.delete_escrow(escrow_id)

    async def put_payout_proof(self, escrow_id: str, proof: PayoutProof) -> None:
        self.sqlite.put_payout_proof(escrow_id, proof)

    async def get_payout_proof(self, escrow_id: str) -> PayoutProof | None:
        return self.sqlite.get_payout_proof(escrow_id)

    async def append_event(
        self, type_: str, escrow_id: str | None, data: JsonMapping
    ) -> EventRecord:
        return self.sqlite.append_event(type_, escrow_id, data)

    async def events_after(self, seq: int, limit: int = 500) -> list[EventRecord]:
        return self.sqlite.events_after(seq, limit)

    async def last_event_seq(self) -> int:
        return self.sqlite.last_event_seq()

    async def prune_events(self, before: str, limit: int) -> int:
        return self.sqlite.prune_events(before, limit)

    async def probe(self) -> bool:
        return self.sqlite.probe()

    async def aclose(self) -> None:
        self.sqlite.close()
