"""A host that stalls mid-transaction (SIGSTOP, a VM pause, a cut network) while holding one of
the cluster's hot rows never freezes the other hosts' database work.

The stalled host is a real walletd `Database` connection paused inside its transaction, right
after it took the row: the `event_counter` row (any event append takes it) or a lease row
(`fenced_job` locks it `FOR UPDATE`). Meanwhile another host, with the pool a node gets, hammers
the database with fenced writes that append events (they all queue on the counter row) and keeps
leases of its own. What an operator would check: that host loses no lease (its renewals do not
wait behind the queued writes), its writes go through again once the stall bound has passed (the
server ends the stalled transaction), and the stalled host's expired lease is taken over within
lease_ttl plus that bound.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import trio

from walletd.cluster.db import Connection, Database
from walletd.cluster.holder import LeaseHolder
from walletd.cluster.leases import Leases, Tenure, append_event
from walletd.cluster.migrations import migrate
from walletd.cluster.node import POOL_SIZE
from walletd.errors import ClusterUnavailable

pytestmark = pytest.mark.pg

TTL = 4.0
HELD = 3  # leases the healthy host keeps renewing
WRITERS = 2 * POOL_SIZE  # more writers than pool slots: every slot ends up waiting on the row


def _host_db(url: str) -> Database:
    """A host's database as `ClusterNode` makes it."""
    return Database(url, max_size=POOL_SIZE, lease_ttl=TTL)


def _stall_job(
    row: str, leases: Leases, stalled: Tenure, in_tx: Callable[[], None], resume: threading.Event
) -> Callable[[Connection], None]:
    """Take the hot row, then pause inside the transaction until `resume` (a stopped host)."""
    leases_job: Callable[[Connection], None]

    def pause(conn: Connection) -> None:
        in_tx()
        resume.wait(60)

    if row == "event_counter":  # an event about no escrow: the counter row alone

        def leases_job(conn: Connection) -> None:
            append_event(conn, "stall", None, {}, None)
            pause(conn)

        return leases_job
    # a fenced write: the lease row FOR UPDATE, nothing else
    return leases.fenced_job(stalled, pause)


@pytest.mark.parametrize("row", ["event_counter", "lease_row"])
async def test_a_stalled_transaction_on_a_hot_row_freezes_no_other_host(
    db_url: str, row: str
) -> None:
    """While host A sits stalled in a transaction holding `row`, host B (more writers than pool
    slots, all wanting the event counter) renews every lease it holds, its writes go through
    again within the stall bound, and B takes A's lease within lease_ttl plus the bound once it
    has expired."""
    a_db, b_db = _host_db(db_url), _host_db(db_url)
    await a_db.open()
    await b_db.open()
    await migrate(b_db)
    a_leases, b_leases = Leases(a_db, TTL), Leases(b_db, TTL)
    bound = b_db.bounds.stall
    lost: list[str] = []
    appended: list[tuple[float, float]] = []
    resume = threading.Event()
    token = trio.lowlevel.current_trio_token()
    in_tx = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            for i in range(HELD):
                started = trio.current_time()
                tenure = await b_leases.acquire(f"b{i}", "B")
                assert tenure is not None

                async def on_lost(escrow_id: str = f"b{i}") -> None:
                    lost.append(escrow_id)

                holder = LeaseHolder(
                    b_leases, tenure, on_lost, acquired_at=started, clock=trio.current_time
                )
                nursery.start_soon(holder.run)
                for _ in range(WRITERS // HELD):
                    nursery.start_soon(_writer, b_leases, tenure, appended)

            a_acquired = trio.current_time()
            a_tenure = await a_leases.acquire("a1", "A")
            assert a_tenure is not None  # A never renews it: A is the stalled host

            async def stalled_host() -> None:
                job = _stall_job(
                    row,
                    a_leases,
                    a_tenure,
                    lambda: trio.from_thread.run_sync(in_tx.set, trio_token=token),
                    resume,
                )
                try:
                    await a_db.run(job)
                except ClusterUnavailable:
                    pass  # the server ended A's stalled transaction: what the bound is for

            # A's last act, its lease nearly run out: the write that stalls (so that B's acquire
            # of the expired lease meets the row still locked).
            await trio.sleep_until(a_acquired + TTL - 1.0)
            nursery.start_soon(stalled_host)
            await in_tx.wait()
            stall_began = trio.current_time()

            # B takes A's lease once it expired: within lease_ttl plus the stall bound (room for
            # a loaded machine: another ttl). Timed, not fail_after: a job in a worker thread
            # cannot be cancelled, only bounded.
            while (await b_leases.acquire("a1", "B")) is None:
                assert trio.current_time() - a_acquired < 3 * TTL + bound, "A's lease never freed"
                await trio.sleep(0.2)
            taken_after = trio.current_time() - a_acquired
            print(f"{row}: A's lease taken by B {taken_after:.2f} s after A acquired it")
            assert taken_after <= TTL + bound + TTL

            # B's writes go through again once the stall bound has passed: one begun after the
            # stall began has committed.
            while not [end for start, end in appended if start > stall_began]:
                assert trio.current_time() - stall_began < bound + TTL, "B's writes stuck"
                await trio.sleep(0.1)
            done = min(end for start, end in appended if start > stall_began) - stall_began
            print(f"{row}: B's writes commit again {done:.2f} s into the stall")
            # Keep the pressure on for a while longer: still no lease lost.
            await trio.sleep_until(stall_began + 2 * TTL)
            assert lost == []
            resume.set()
            nursery.cancel_scope.cancel()
    finally:
        resume.set()
        await a_db.close()
        await b_db.close()
    assert lost == []


async def _writer(leases: Leases, tenure: Tenure, appended: list[tuple[float, float]]) -> None:
    """A fenced write with an event, again and again; a refused or failed one is retried.
    `appended` gets (start, end) of each that committed."""

    def write(conn: Connection) -> int:
        return append_event(conn, "test", tenure.escrow_id, {}, tenure)

    while True:
        started = trio.current_time()
        try:
            await leases.fenced_write(tenure, write)
        except ClusterUnavailable:
            await trio.sleep(0.1)
        else:
            appended.append((started, trio.current_time()))
        await trio.sleep(0.01)
