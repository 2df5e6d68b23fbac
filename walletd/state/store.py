"""The state store: what the daemon needs from its database, whichever database it is, and
the records both databases share (an event, an escrow's changes, the database failing).

Two implementations, named as a pair: `walletd.state.sqlite_store` (`LocalState` over the
embedded SQLite `Store` of one host) and `walletd.cluster.postgres_store` (`PgStore`, the cluster's
PostgreSQL), whose every call is a round trip made in a worker thread. The protocol is async for
the second: the SQLite calls stay inline (they never checkpoint, so a caller's read-modify-write
is as atomic as before) behind `async def`. The two `_nowait` calls are the exception, as trio's
`send_nowait` is: the embedded store answers them inline, a remote one raises `trio.WouldBlock`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypedDict, Unpack

import attrs

from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    ExpectedPayout,
    Funding,
    Payout,
    PayoutProof,
    utcnow,
)
from walletd.jsontypes import JsonMapping, JsonObject
from walletd.state.columns import funding_to_json as _funding_to_json
from walletd.state.columns import payout_to_json as _payout_to_json

__all__ = [
    "EscrowChanges",
    "EventRecord",
    "NewEvent",
    "StateStore",
    "changed_columns",
]


@attrs.frozen
class EventRecord:
    seq: int
    type: str
    escrow_id: str | None
    at: str
    data: JsonMapping

    def to_json(self) -> JsonObject:
        return {
            "seq": self.seq,
            "type": self.type,
            "escrow_id": self.escrow_id,
            "at": self.at,
            **self.data,
        }


NewEvent = tuple[str, JsonMapping]  # (type, data) of an event to append with a change


def changed_columns(changes: EscrowChanges) -> dict[str, str | None]:
    """The escrow columns a change writes, as stored (JSON text for the JSON columns), with
    `updated_at`; ValueError for no change or an unknown field. Both stores use it."""
    unknown = set(changes) - EscrowChanges.__optional_keys__
    if not changes or unknown:
        raise ValueError(f"cannot update {sorted(unknown)}")
    if set(changes) == {"expect_payout"}:
        raise ValueError("cannot update ['expect_payout'] alone: it is a condition, not a change")
    columns: dict[str, str | None] = {}
    if "state" in changes:
        columns["state"] = changes["state"].value
    if "multisig_address" in changes:
        columns["multisig_address"] = changes["multisig_address"]
    if "funding" in changes:
        columns["funding"] = _funding_to_json(changes["funding"])
    if "payout" in changes:
        columns["payout"] = _payout_to_json(changes["payout"])
    columns["updated_at"] = utcnow()
    return columns


class EscrowChanges(TypedDict, total=False):
    """The columns of an escrow that may change after it is recorded, and `expect_payout`: not
    a column but the condition of the change (compare-and-set): it is made only if the recorded
    payout is still at that phase with those txids, else `PayoutChanged` and nothing is written.
    Every payout step of the lifecycle and the monitor says what it expects."""

    state: EscrowState
    multisig_address: str
    funding: Funding
    payout: Payout
    expect_payout: ExpectedPayout


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
    def escrow_state_nowait(self, escrow_id: str) -> EscrowState | None:
        """`escrow_state` without waiting: `trio.WouldBlock` if the store cannot answer inline."""
        ...

    def append_event_nowait(
        self, type_: str, escrow_id: str | None, data: JsonMapping
    ) -> EventRecord:
        """`append_event` without waiting: `trio.WouldBlock` if the store cannot write inline
        (the caller then queues the event for `append_event`, in order)."""
        ...

    async def events_after(self, seq: int, limit: int = 500) -> list[EventRecord]: ...
    async def last_event_seq(self) -> int: ...
    async def prune_events(self, before: str, limit: int) -> int: ...
    async def probe(self) -> bool: ...
    async def aclose(self) -> None: ...
