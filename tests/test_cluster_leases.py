"""Cluster foundation against a real PostgreSQL: migrations, leases with epochs, fenced writes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.pgtest import advance_db_clock
from walletd.cluster.db import Connection, Database
from walletd.cluster.holder import LeaseHolder
from walletd.cluster.leases import Leases, Tenure, append_event
from walletd.cluster.migrations import migrate, migrations
from walletd.errors import ClusterUnavailable, Fenced

pytestmark = pytest.mark.pg

TTL = 10.0


def _write_event(tenure: Tenure) -> Callable[[Connection], int]:
    def write(conn: Connection) -> int:
        return append_event(conn, "test", tenure.escrow_id, {"n": 1}, tenure)

    return write


async def test_migrations_create_the_tables_once(db_url: str) -> None:
    """Start-up migrations create every table and record the version; hosts that start together
    (or again later) apply each migration exactly once."""
    dbs = [Database(db_url) for _ in range(3)]
    for d in dbs:
        await d.open()
    try:
        versions: list[int] = []

        async def start(d: Database) -> None:
            versions.append(await migrate(d))

        async with trio.open_nursery() as nursery:
            for d in dbs:
                nursery.start_soon(start, d)
        assert versions == [len(migrations())] * 3
        assert await migrate(dbs[0]) == len(migrations())

        def tables(conn: Connection) -> tuple[set[str], int]:
            names = {
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema='public'"
                )
            }
            row = conn.execute("SELECT count(*) FROM schema_version").fetchone()
            assert row is not None
            return names, int(row[0])

        names, applied = await dbs[0].run(tables)
        assert {
            "schema_version",
            "hosts",
            "leases",
            "event_counter",
            "escrows",
            "payouts",
            "events",
            "wallet_files",
        } <= names
        assert applied == len(migrations())
    finally:
        for d in dbs:
            await d.close()


async def test_newer_schema_is_refused(db: Database) -> None:
    """A database migrated by a newer walletd is not used by this one."""
    await db.run(lambda c: c.execute("INSERT INTO schema_version VALUES (999, 'future', now())"))
    with pytest.raises(RuntimeError, match="newer than this walletd"):
        await migrate(db)


async def test_unreachable_database_is_unavailable() -> None:
    """A database nobody listens on fails `open` with ClusterUnavailable, naming no URL."""
    d = Database("postgresql://walletd:secret@127.0.0.1:1/x", connect_timeout=1.0)
    with pytest.raises(ClusterUnavailable) as caught:
        await d.open()
    assert "secret" not in str(caught.value)
    await d.close()


async def test_acquire_only_free_or_expired(db: Database, db_url: str) -> None:
    """A live lease cannot be taken (not even by its holder); an expired one can, with a larger
    epoch; a released one too."""
    leases = Leases(db, TTL)
    a = await leases.acquire("e1", "A")
    assert a is not None
    assert a.epoch == 1
    assert await leases.acquire("e1", "B") is None
    assert await leases.acquire("e1", "A") is None
    advance_db_clock(db_url, TTL + 1)
    b = await leases.acquire("e1", "B")
    assert b is not None
    assert b.epoch == 2
    assert await leases.release(b)
    assert not await leases.release(b)  # only once
    a2 = await leases.acquire("e1", "A")
    assert a2 is not None
    assert a2.epoch == 3
    [lease] = await leases.list()
    assert (lease.host_id, lease.epoch, lease.live) == ("A", 3, True)


async def test_renew_only_by_owner_before_expiry(db: Database, db_url: str) -> None:
    """Renew extends the lease for its owner with its epoch; a stale epoch, another host, or an
    already expired lease is refused."""
    leases = Leases(db, TTL)
    a = await leases.acquire("e1", "A")
    assert a is not None
    advance_db_clock(db_url, TTL - 2)
    assert await leases.renew(a)
    advance_db_clock(db_url, TTL - 2)  # alive only thanks to the renew
    assert await leases.acquire("e1", "B") is None
    assert not await leases.renew(Tenure("e1", "B", a.epoch))
    assert not await leases.renew(Tenure("e1", "A", a.epoch + 1))
    advance_db_clock(db_url, TTL)
    assert not await leases.renew(a)  # expired: not revived


async def test_fenced_write_refuses_stale_epochs(db: Database, db_url: str) -> None:
    """A write with the current epoch commits; after the lease expired or changed owner, the old
    holder's write is refused (Fenced, counted) and leaves nothing behind."""
    leases = Leases(db, TTL)
    a = await leases.acquire("e1", "A")
    assert a is not None
    seq = await leases.fenced_write(a, _write_event(a))
    assert seq == 1
    advance_db_clock(db_url, TTL + 1)
    with pytest.raises(Fenced):
        await leases.fenced_write(a, _write_event(a))
    b = await leases.acquire("e1", "B")
    assert b is not None
    with pytest.raises(Fenced):
        await leases.fenced_write(a, _write_event(a))
    with pytest.raises(Fenced):  # never leased at all
        await leases.fenced_write(Tenure("e2", "A", 1), _write_event(a))
    assert await leases.fenced_write(b, _write_event(b)) == 2
    assert leases.statistics().fenced_writes == 3

    def events(conn: Connection) -> list[tuple[int, str, int]]:
        return [
            (int(r[0]), str(r[1]), int(r[2]))
            for r in conn.execute("SELECT seq, host_id, epoch FROM events ORDER BY seq")
        ]

    assert await db.run(events) == [(1, "A", 1), (2, "B", 2)]


async def test_fenced_write_holds_off_a_takeover(db: Database, db_url: str) -> None:
    """While a fenced write's transaction is open, another host cannot take the lease over: its
    acquire waits for the row lock and then sees the lease (still live) held, so no write of an
    old owner can commit after a new owner's epoch exists."""
    leases = Leases(db, TTL)
    a = await leases.acquire("e1", "A")
    assert a is not None
    in_write = trio.Event()
    finish = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def slow_write(conn: Connection) -> int:
        trio.from_thread.run_sync(in_write.set, trio_token=token)
        trio.from_thread.run(finish.wait, trio_token=token)
        return append_event(conn, "slow", "e1", {}, a)

    results: list[object] = []

    async def take_over() -> None:
        results.append(await leases.acquire("e1", "B"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leases.fenced_write, a, slow_write)
        await in_write.wait()
        nursery.start_soon(take_over)
        # the acquire is blocked on the lease row: pg_locks shows a waiter
        while True:
            waiting = await db.run(
                lambda c: c.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
            )
            if waiting and waiting[0]:
                break
            await trio.sleep(0.01)
        finish.set()
    assert results == [None]


class CountingLeases(Leases):
    """Leases that report each successful renew (to wait for renewals without polling)."""

    def __init__(self, db: Database, ttl: float, wanted: int) -> None:
        super().__init__(db, ttl)
        self.renewed = 0
        self.wanted = wanted
        self.enough = trio.Event()

    async def renew(self, tenure: Tenure) -> bool:
        ok = await super().renew(tenure)
        self.renewed += ok
        if self.renewed >= self.wanted:
            self.enough.set()
        return ok


async def test_holder_renews_and_self_fences(db: Database, db_url: str) -> None:
    """A LeaseHolder keeps its lease alive past its first TTL by renewing; once it cannot renew
    (here: the lease expired by the database clock and another host took it), it calls on_lost,
    and its writes are refused from then on."""
    ttl = 3.0
    leases = CountingLeases(db, ttl, wanted=4)  # renews every ttl/3: 4 renewals span > ttl
    started = trio.current_time()
    a = await leases.acquire("e1", "A")
    assert a is not None
    lost = trio.Event()

    async def on_lost() -> None:
        lost.set()

    holder = LeaseHolder(leases, a, on_lost, acquired_at=started, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder.run)
        await leases.enough.wait()
        assert trio.current_time() - started > ttl
        assert await leases.acquire("e1", "B") is None  # still A's, thanks to the renewals
        assert not holder.lost
        advance_db_clock(db_url, 10)  # A "paused" past its lease: the database sees it expired
        b = await leases.acquire("e1", "B")
        assert b is not None
        await lost.wait()
    assert holder.lost
    with pytest.raises(Fenced):
        await leases.fenced_write(a, _write_event(a))
