"""The PostgreSQL store's cluster behaviour: fenced writes, one ordered event feed, NOTIFY wake-ups,
database failures reported like SQLite's, and host heartbeats. What it shares with the SQLite
store is in test_store_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import psycopg
import pytest
import trio

from tests.harness import escrow_record
from tests.pgtest import advance_db_clock
from walletd.cluster.db import Database
from walletd.cluster.hosts import Hosts
from walletd.cluster.leases import Leases, Tenure
from walletd.cluster.migrations import migrate
from walletd.cluster.postgres_store import EVENTS_CHANNEL, PgStore
from walletd.errors import ClusterUnavailable, Fenced, StoreUnavailable
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    Funding,
    Payout,
    PayoutKind,
    PayoutPhase,
    PayoutProof,
    utcnow,
)
from walletd.state.store import EventRecord

pytestmark = pytest.mark.pg

TTL = 10.0


def _record(escrow_id: str) -> EscrowRecord:
    return escrow_record(escrow_id, sealed=None)


@attrs.define
class Host:
    """One walletd host's view: its own pool, leases, the tenures it holds, and its store."""

    host_id: str
    db: Database
    leases: Leases
    held: dict[str, Tenure]
    store: PgStore

    async def acquire(self, escrow_id: str) -> Tenure:
        tenure = await self.leases.acquire(escrow_id, self.host_id)
        assert tenure is not None
        self.held[escrow_id] = tenure
        return tenure


async def _host(url: str, host_id: str) -> Host:
    db = Database(url)
    await db.open()
    await migrate(db)
    leases = Leases(db, TTL)
    held: dict[str, Tenure] = {}
    return Host(host_id, db, leases, held, PgStore(db, leases, held.get, host_id))


@pytest.fixture
async def hosts(db_url: str) -> AsyncIterator[tuple[Host, Host]]:
    a = await _host(db_url, "A")
    b = await _host(db_url, "B")
    try:
        yield a, b
    finally:
        await a.db.close()
        await b.db.close()


Snapshot = tuple[list[EscrowRecord], list[EventRecord], int, PayoutProof | None]


async def _snapshot(store: PgStore) -> Snapshot:
    """Everything a refused write must leave as it was (the seq counter included)."""
    return (
        await store.list_escrows(),
        await store.events_after(0),
        await store.last_event_seq(),
        await store.get_payout_proof("e1"),
    )


async def test_writes_without_a_lease_are_refused(hosts: tuple[Host, Host]) -> None:
    """A host that holds no lease on an escrow can neither record it, change it, delete it, keep
    its payout proof nor append its events: each is refused (Fenced, counted as a refused write)
    and leaves no escrow, no event and no seq used; an event about no escrow needs no lease."""
    a, _ = hosts
    with pytest.raises(Fenced):
        await a.store.insert_escrow(_record("e1"), [("escrow_created", {})])
    assert await _snapshot(a.store) == ([], [], 0, None)
    await a.acquire("e1")
    await a.store.insert_escrow(_record("e1"))
    before = await _snapshot(a.store)
    del a.held["e1"]  # e.g. the holder declared it lost
    refused = [
        a.store.change_escrow("e1", {"state": EscrowState.FUNDED}, [("funded", {})]),
        a.store.update_escrow("e1", funding=Funding(balance=5)),
        a.store.delete_escrow("e1"),
        a.store.put_payout_proof("e1", PayoutProof("t", "4e1", "k", "p")),
        a.store.append_event("session_opened", "e1", {}),
    ]
    for write in refused:
        with pytest.raises(Fenced):
            await write
    assert await _snapshot(a.store) == before
    assert a.leases.statistics().fenced_writes == 6
    assert a.store.errors == 0  # a refused write is not the database failing
    event = await a.store.append_event("daemon_started", None, {})
    assert event.seq == 1


async def test_a_stale_owner_changes_nothing(db_url: str, hosts: tuple[Host, Host]) -> None:
    """A host whose lease expired (paused past it) and was then taken over writes nothing more:
    its payout step, its state change and its events are refused before and after the takeover,
    no seq is consumed, and the new owner reads the signed payout the old owner recorded."""
    a, b = hosts
    await a.acquire("e1")
    await a.store.insert_escrow(_record("e1"), [("escrow_created", {})])
    signed = Payout(
        kind=PayoutKind.RELEASE,
        address="4dest",
        phase=PayoutPhase.SIGNED,
        created_at=utcnow(),
        txids=("aa",),
        signed_txset="00ff" * 100,
        amount=4,
        fee=1,
    )
    await a.store.update_escrow("e1", state=EscrowState.FUNDED)
    await a.store.update_escrow("e1", state=EscrowState.READY)
    await a.store.change_escrow(
        "e1", {"state": EscrowState.RELEASING, "payout": signed}, [("payout_signed", {})]
    )
    before = await _snapshot(a.store)
    advance_db_clock(db_url, TTL + 1)  # A paused past its lease: expired, nobody else yet
    submitted = attrs.evolve(signed, phase=PayoutPhase.SUBMITTED, txid="aa")
    with pytest.raises(Fenced):
        await a.store.change_escrow("e1", {"payout": submitted}, [("payout_submitted", {})])
    await b.acquire("e1")
    with pytest.raises(Fenced):
        await a.store.update_escrow("e1", payout=submitted)
    with pytest.raises(Fenced):
        await a.store.append_event("payout_submitted", "e1", {})
    assert await _snapshot(b.store) == before
    assert a.leases.statistics().fenced_writes == 3
    rec = await b.store.get_escrow("e1")
    assert rec is not None
    assert rec.payout == signed  # the new owner resubmits exactly this blob
    _, [event] = await b.store.change_escrow(
        "e1", {"payout": submitted}, [("payout_submitted", {})]
    )
    assert event.seq == before[2] + 1  # the refused writes took no seq


async def test_event_seqs_follow_commit_order_across_hosts(
    db_url: str, hosts: tuple[Host, Host]
) -> None:
    """Two hosts appending events for their own escrows at the same time produce one feed: seqs
    1..n without gap or repeat, committed (and notified) in seq order, each host's events in the
    order it wrote them, and `last_event_seq` is the last one."""
    a, b = hosts
    for host, escrow_id in ((a, "ea"), (b, "eb")):
        await host.acquire(escrow_id)
        await host.store.insert_escrow(_record(escrow_id))
    per_writer = 30
    writers = 3  # per host: concurrent transactions contend for the counter row

    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {EVENTS_CHANNEL}")

        async def write(host: Host, escrow_id: str, writer: int) -> None:
            for n in range(per_writer):
                await host.store.append_event("tick", escrow_id, {"writer": writer, "n": n})

        async with trio.open_nursery() as nursery:
            for host, escrow_id in ((a, "ea"), (b, "eb")):
                for writer in range(writers):
                    nursery.start_soon(write, host, escrow_id, writer)
        total = 2 * writers * per_writer
        notified = [int(n.payload) for n in listener.notifies(timeout=5, stop_after=total)]

    assert notified == list(range(1, total + 1))  # NOTIFY is delivered in commit order
    events = await a.store.events_after(0, limit=1000)
    assert [e.seq for e in events] == list(range(1, total + 1))
    for escrow_id in ("ea", "eb"):
        for writer in range(writers):
            ns = [
                e.data["n"]
                for e in events
                if e.escrow_id == escrow_id and e.data["writer"] == writer
            ]
            assert ns == list(range(per_writer))
    assert await b.store.last_event_seq() == total
    assert [e.seq for e in await b.store.events_after(total - 2)] == [total - 1, total]


async def test_each_event_notifies_its_seq_at_commit(db_url: str, hosts: tuple[Host, Host]) -> None:
    """Every appended event wakes listeners on the `walletd_events` channel with its seq (the
    long polls of every host); a change refused or rolled back notifies nothing."""
    a, _ = hosts
    await a.acquire("e1")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {EVENTS_CHANNEL}")
        created = await a.store.insert_escrow(_record("e1"), [("escrow_created", {})])
        with pytest.raises(ValueError, match="cannot move"):  # IllegalMove: rolled back
            await a.store.change_escrow("e1", {"state": EscrowState.COMPLETED}, [("done", {})])
        with pytest.raises(Fenced):
            await a.store.append_event("x", "e2", {})
        free = await a.store.append_event("daemon_started", None, {})
        payloads = [n.payload for n in listener.notifies(timeout=2)]
    assert payloads == [str(created[0].seq), str(free.seq)]
    assert (created[0].seq, free.seq) == (1, 2)


async def test_database_failure_is_reported_like_sqlite(db_url: str) -> None:
    """While the cluster database cannot be reached, reads and writes fail with a
    StoreUnavailable (what every caller already catches), counted, reported to the metrics
    hook and remembered for /v1/health; once it is back, a successful probe clears it."""
    db = Database(db_url, connect_timeout=1.0)  # not connected yet: like a database down
    leases = Leases(db, TTL)
    store = PgStore(db, leases, lambda e: Tenure(e, "A", 1), "A")
    reported: list[int] = []
    store.on_error = lambda: reported.append(1)
    with pytest.raises(StoreUnavailable) as caught:
        await store.get_escrow("e1")
    assert isinstance(caught.value, ClusterUnavailable)
    assert db_url not in str(caught.value)
    with pytest.raises(StoreUnavailable):
        await store.append_event("daemon_started", None, {})
    assert not await store.probe()
    assert (store.errors, len(reported)) == (3, 3)
    assert store.failure is not None
    await db.open()
    try:
        await migrate(db)
        assert await store.count_escrows() == 0
        assert store.failure is not None  # a read proves nothing about writes
        assert await store.probe()
        assert store.failure is None
        assert store.errors == 3
    finally:
        await db.close()


async def test_duplicate_escrow_is_not_a_database_failure(hosts: tuple[Host, Host]) -> None:
    """Recording an escrow id twice is the caller's mistake (the driver's IntegrityError, as
    with SQLite), not counted as the database failing; the first record stays."""
    a, _ = hosts
    await a.acquire("e1")
    rec = _record("e1")
    await a.store.insert_escrow(rec)
    with pytest.raises(psycopg.IntegrityError):
        await a.store.insert_escrow(attrs.evolve(rec, amount=9), [("escrow_created", {})])
    assert (a.store.errors, a.store.failure) == (0, None)
    assert await a.store.get_escrow("e1") == rec
    assert await a.store.last_event_seq() == 0


async def test_hosts_heartbeat_and_liveness(db_url: str, hosts: tuple[Host, Host]) -> None:
    """Each host's heartbeat records its sessions and capacity (updated in place, one row per
    host); a host not heard from within the bound is listed as not live and left out of
    `live_hosts`."""
    a, _ = hosts
    registry = Hosts(a.db, live_within=30)
    assert await registry.list() == []
    await registry.heartbeat("A", 1, 4)
    await registry.heartbeat("B", 0, 2)
    advance_db_clock(db_url, 20)
    await registry.heartbeat("A", 3, 4)
    listed = await registry.list()
    assert [(h.host_id, h.sessions, h.capacity, h.live) for h in listed] == [
        ("A", 3, 4, True),
        ("B", 0, 2, True),
    ]
    assert listed[0].last_seen > listed[1].last_seen
    assert [h.host_id for h in await registry.live_hosts(10)] == ["A"]
    advance_db_clock(db_url, 15)  # B last seen 35 s ago, A 15 s ago
    assert [(h.host_id, h.live) for h in await registry.list()] == [("A", True), ("B", False)]
    assert [h.host_id for h in await registry.live_hosts(30)] == ["A"]
