"""What every `StateStore` does, SQLite or the cluster's PostgreSQL: each case runs against both.

The PostgreSQL store runs as the one host holding the lease of every escrow the cases use (its
fencing is tested in test_cluster_postgres_store.py); the PostgreSQL cases skip without
WALLETD_TEST_PG_URL, as every `pg` test does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import attrs
import pytest
import trio

from tests.harness import escrow_record
from tests.pgtest import fresh_database
from walletd.cluster.db import Database
from walletd.cluster.leases import Leases, Tenure
from walletd.cluster.migrations import migrate
from walletd.cluster.postgres_store import PgStore
from walletd.errors import IllegalMove, PayoutChanged
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    ExpectedPayout,
    Funding,
    Payout,
    PayoutKind,
    PayoutPhase,
    PayoutProof,
    utcnow,
)
from walletd.state.columns import payout_from_json, payout_to_json
from walletd.state.sqlite_store import LocalState, Store
from walletd.state.store import EscrowChanges, NewEvent, StateStore

ESCROWS = ("e1", "e2", "e3", "E9", "nobody")  # the ids the cases use: the pg host leases them all


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend: sqlite, or the URL of a fresh PostgreSQL database (sync: a skip raised in
    an async fixture loses its reason under pytest-trio)."""
    if request.param == "sqlite":
        yield "sqlite"
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[StateStore]:
    if backend == "sqlite":
        sqlite = Store(tmp_path / "db")
        try:
            yield LocalState(sqlite)
        finally:
            sqlite.close()
        return
    db = Database(backend)
    await db.open()
    try:
        await migrate(db)
        leases = Leases(db, ttl=600.0)
        held: dict[str, Tenure] = {}
        for escrow_id in ESCROWS:
            tenure = await leases.acquire(escrow_id, "A")
            assert tenure is not None
            held[escrow_id] = tenure
        pg = PgStore(db, leases, held.get, "A")
        yield pg
        await pg.aclose()
    finally:
        await db.close()


def _record(escrow_id: str = "e1", *, created_at: str | None = None) -> EscrowRecord:
    return escrow_record(escrow_id, created_at=created_at)


async def test_escrow_round_trip_and_update(store: StateStore) -> None:
    """An escrow comes back exactly as it was stored; an update changes only what it names (and
    updated_at), and the queries over escrows see it."""
    rec = _record()
    await store.insert_escrow(rec)
    assert await store.get_escrow("e1") == rec
    assert await store.get_escrow("e2") is None
    new = await store.update_escrow("e1", state=EscrowState.FUNDED, funding=Funding(balance=7))
    assert new == attrs.evolve(
        rec, state=EscrowState.FUNDED, funding=Funding(balance=7), updated_at=new.updated_at
    )
    assert new.updated_at >= rec.updated_at
    assert await store.get_escrow("e1") == new
    assert await store.escrow_state("e1") is EscrowState.FUNDED
    assert await store.escrow_state("e2") is None
    assert await store.wallet_files_in_use() == {"e1-buyer", "e1-vendor", "e1-arbiter"}
    assert await store.wallet_files_in_use(except_escrow="e1") == set()
    assert [r.escrow_id for r in await store.list_escrows(EscrowState.FUNDED)] == ["e1"]
    assert await store.list_escrows(EscrowState.READY) == []
    assert await store.count_escrows() == 1
    assert await store.escrow_with_address("4e1") == "e1"
    assert await store.escrow_with_address("4zz") is None


async def test_full_payout_and_funding_read_back_identical(store: StateStore) -> None:
    """A payout with every field set (the signed blob included) and a funding seen ready are
    read back identical; so is a payout with only its intent's fields."""
    await store.insert_escrow(_record())
    intent = Payout(
        kind=PayoutKind.REFUND,
        address="4dest",
        phase=PayoutPhase.INTENT,
        created_at="2026-01-02T00:00:00.000Z",
    )
    assert (await store.update_escrow("e1", payout=intent)).payout == intent
    submitted = Payout(
        kind=PayoutKind.RELEASE,
        address="4dest",
        phase=PayoutPhase.SUBMITTED,
        created_at="2026-01-02T00:00:00.000Z",
        txid="aa",
        confirmations=3,
        submitted_at="2026-01-02T00:00:05.000Z",
        txids=("aa", "bb"),
        signed_txset="0011" * 50,
        amount=4,
        fee=1,
        last_error="wallet-rpc timed out",
        fee_priority=2,
    )
    funding = Funding(5, 5, 12, "2026-01-01T00:00:00.000Z", ready_height=1234)
    rec = await store.update_escrow("e1", payout=submitted, funding=funding)
    assert (rec.payout, rec.funding) == (submitted, funding)
    assert await store.get_escrow("e1") == rec


async def test_payout_changes_are_compare_and_set(store: StateStore) -> None:
    """A payout change that says what it expects (`expect_payout`: the phase and txids it read,
    or no payout) is made only if the recorded payout is still there. Otherwise `PayoutChanged`
    names what is recorded, and nothing is written: not the payout, not the state, not the
    events. A change that expects nothing about the payout is made as before."""
    await store.insert_escrow(_record())
    intent = Payout(PayoutKind.RELEASE, "4dest", PayoutPhase.INTENT, "2026-01-02T00:00:00.000Z")
    signed = attrs.evolve(intent, phase=PayoutPhase.SIGNED, txids=("x",), signed_txset="00")
    with pytest.raises(PayoutChanged):  # expects an intent; there is no payout yet
        await store.update_escrow("e1", payout=signed, expect_payout=ExpectedPayout.of(intent))
    rec = await store.update_escrow("e1", payout=intent, expect_payout=ExpectedPayout.of(None))
    assert rec.payout == intent
    rec = await store.update_escrow("e1", payout=signed, expect_payout=ExpectedPayout.of(intent))
    assert rec.payout == signed
    before = (await store.get_escrow("e1"), await store.events_after(0))
    other = attrs.evolve(signed, txids=("y",), signed_txset="11")
    submitted = attrs.evolve(signed, phase=PayoutPhase.SUBMITTED, txid="x")
    refused: list[tuple[EscrowChanges, list[NewEvent]]] = [
        # a second driver that read the intent before the first one signed
        ({"payout": other, "expect_payout": ExpectedPayout.of(intent)}, []),
        # the right phase but other txids: not the transaction this writer signed
        ({"payout": submitted, "expect_payout": ExpectedPayout.of(other)}, []),
        # a new intent over a payout that is not there any more, with its state and event
        (
            {"payout": intent, "expect_payout": ExpectedPayout.of(None)},
            [("payout_recorded", {})],
        ),
    ]
    for changes, events in refused:
        with pytest.raises(PayoutChanged, match="signed"):
            await store.change_escrow("e1", changes, events)
    assert (await store.get_escrow("e1"), await store.events_after(0)) == before
    rec, _ = await store.change_escrow(
        "e1",
        {"payout": submitted, "expect_payout": ExpectedPayout.of(signed)},
        [("payout_submitted", {})],
    )
    assert rec.payout == submitted
    with pytest.raises(ValueError, match="expect_payout"):  # an expectation alone is no change
        await store.update_escrow("e1", expect_payout=ExpectedPayout.of(submitted))


def test_payouts_written_before_attempts_were_recorded_read_back() -> None:
    """A payout column as older walletd wrote it (no attempts, tried_at, driver, next_try_at)
    reads back as a payout never attempted by a known host, and a payout without attempts is
    written as it always was: neither version misreads the other's rows."""
    old = (
        '{"kind": "release", "address": "4dest", "phase": "signed", "created_at": "t0",'
        ' "txid": null, "confirmations": 0, "submitted_at": null, "txids": ["aa"],'
        ' "signed_txset": "00", "amount": 4, "fee": 1}'
    )
    payout = payout_from_json(old)
    assert (payout.attempts, payout.tried_at, payout.driver, payout.next_try_at) == (
        0,
        None,
        None,
        None,
    )
    assert json.loads(payout_to_json(payout)) == json.loads(old)
    tried = attrs.evolve(payout, attempts=2, tried_at="t1", driver="h1", next_try_at="t2")
    assert payout_from_json(payout_to_json(tried)) == tried


async def test_escrows_listed_by_creation_then_id(store: StateStore) -> None:
    """Escrows are listed oldest first, ties broken by id in byte order (upper case first)."""
    await store.insert_escrow(_record("e2", created_at="2026-01-01T00:00:01.000Z"))
    await store.insert_escrow(_record("e3", created_at="2026-01-01T00:00:00.000Z"))
    await store.insert_escrow(_record("e1", created_at="2026-01-01T00:00:01.000Z"))
    await store.insert_escrow(_record("E9", created_at="2026-01-01T00:00:01.000Z"))
    assert [r.escrow_id for r in await store.list_escrows()] == ["e3", "E9", "e1", "e2"]


async def test_state_change_and_its_event_are_one_transaction(store: StateStore) -> None:
    """A state change and the event announcing it land together or not at all: an event that
    cannot be written leaves the escrow as it was, and a change to no escrow writes no event."""
    inserted = await store.insert_escrow(_record(), [("escrow_created", {"amount": 5})])
    assert [(e.type, e.escrow_id, e.data) for e in inserted] == [
        ("escrow_created", "e1", {"amount": 5})
    ]
    with pytest.raises(TypeError):
        await store.change_escrow(
            "e1", {"state": EscrowState.FUNDED}, [("funded", {"bad": object()})]
        )
    rec = await store.get_escrow("e1")
    assert rec is not None
    assert rec.state == "awaiting_funding"
    with pytest.raises(KeyError):
        await store.change_escrow("nobody", {"state": EscrowState.FUNDED}, [("funded", {})])
    with pytest.raises(KeyError):
        await store.update_escrow("nobody", funding=Funding(balance=1))
    rec, events = await store.change_escrow(
        "e1", {"state": EscrowState.FUNDED}, [("funded", {"balance": 5})]
    )
    assert rec.state == "funded"
    assert await store.events_after(0) == [*inserted, *events]
    assert [(e.type, e.data) for e in events] == [("funded", {"balance": 5})]
    assert events[0].seq > inserted[0].seq


async def test_states_only_move_forward(store: StateStore) -> None:
    """The store refuses a change of state that is not one of EscrowState's moves, and leaves
    the escrow and the event log as they were."""
    await store.insert_escrow(_record())
    with pytest.raises(IllegalMove):
        await store.change_escrow(
            "e1", {"state": EscrowState.RELEASING}, [("payout_submitted", {})]
        )
    rec = await store.get_escrow("e1")
    assert rec is not None
    assert rec.state is EscrowState.AWAITING_FUNDING
    assert await store.events_after(0) == []
    await store.update_escrow("e1", state=EscrowState.READY)
    with pytest.raises(IllegalMove):
        await store.update_escrow("e1", state=EscrowState.FUNDED)


async def test_bad_changes_are_refused(store: StateStore) -> None:
    """A change naming nothing, or a column that may not change, is a ValueError and writes
    nothing."""
    await store.insert_escrow(_record())
    with pytest.raises(ValueError, match="cannot update"):
        await store.change_escrow("e1", {})
    with pytest.raises(ValueError, match="amount"):
        await store.change_escrow("e1", cast(EscrowChanges, {"amount": 9}))
    rec = await store.get_escrow("e1")
    assert rec is not None
    assert rec.amount == 5


async def test_delete_escrow(store: StateStore) -> None:
    """A deleted escrow is gone from every query, and its wallet files are free again."""
    await store.insert_escrow(_record("e1"))
    await store.insert_escrow(_record("e2"))
    await store.delete_escrow("e1")
    assert await store.get_escrow("e1") is None
    assert await store.count_escrows() == 1
    assert await store.wallet_files_in_use() == {"e2-buyer", "e2-vendor", "e2-arbiter"}
    assert await store.escrow_with_address("4e1") is None


async def test_payout_proof_kept_and_replaced(store: StateStore) -> None:
    """A payout proof reads back as stored; storing it again replaces it; an escrow without one
    has none."""
    await store.insert_escrow(_record())
    assert await store.get_payout_proof("e1") is None
    proof = PayoutProof("aa" * 32, "4dest", "key", "OutProofV2abc")
    await store.put_payout_proof("e1", proof)
    assert await store.get_payout_proof("e1") == proof
    again = attrs.evolve(proof, proof="OutProofV2def")
    await store.put_payout_proof("e1", again)
    assert await store.get_payout_proof("e1") == again
    assert await store.get_payout_proof("e2") is None


async def test_event_feed_reads_by_seq(store: StateStore) -> None:
    """Events come back in seq order after a given seq, at most `limit` of them, with their data,
    escrow and a utcnow()-style time; events about no escrow are part of the same feed."""
    await store.insert_escrow(_record())
    assert await store.last_event_seq() == 0
    written = [
        await store.append_event("session_opened", "e1", {"n": 1}),
        await store.append_event("daemon_started", None, {"n": 2}),
        await store.append_event("session_closed", "e1", {"n": 3, "why": {"idle": True}}),
    ]
    seqs = [e.seq for e in written]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert await store.events_after(0) == written
    assert await store.events_after(seqs[0], limit=1) == written[1:2]
    assert await store.events_after(seqs[2]) == []
    assert await store.last_event_seq() == seqs[2]
    for event in written:
        assert event.at.endswith("Z")
        assert len(event.at) == len(utcnow())
    assert written[2].to_json()["why"] == {"idle": True}


async def test_prune_keeps_the_newest_event_and_the_seq(store: StateStore) -> None:
    """Pruning deletes the oldest events dated before the cut-off in batches of `limit`, never
    the newest one; the last seq stays put, so new events still get larger seqs."""
    await store.insert_escrow(_record())
    written = [await store.append_event("tick", "e1", {"n": n}) for n in range(4)]
    await trio.sleep(0.01)
    cut = utcnow()
    assert await store.prune_events(cut, 2) == 2
    assert await store.events_after(0) == written[2:]
    assert await store.prune_events(cut, 10) == 1
    assert await store.events_after(0) == written[3:]
    assert await store.prune_events(cut, 10) == 0
    assert await store.last_event_seq() == written[3].seq
    later = await store.append_event("tick", "e1", {})
    assert later.seq > written[3].seq
    assert await store.prune_events("2000-01-01T00:00:00.000Z", 10) == 0
