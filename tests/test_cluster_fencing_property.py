"""Stateful property test of leases and fencing against the real PostgreSQL (hypothesis).

Two hosts contend for one escrow's lease: acquire, renew, release, write (a fenced write that
appends an event), pause and resume (a paused host does nothing, then carries on with what it last
believed), crash (a host forgets its lease, which is left to expire) and advance (time passes).

Time: the database clock used for leases is `cluster_now()`, `clock_timestamp()` plus an offset
kept in the `cluster_clock` row (0 in production). `advance` adds 4 s to the offset; the TTL is
10 s, so a lease's age at any check is a multiple of 4 s (plus the few milliseconds the example
really takes), never near 10 s: whether a lease has expired is exact, and the model can predict
every answer. A model that only checked invariants after the fact would let a wrong acceptance
through as long as it looked consistent; predicting each answer catches it at the step.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.pgtest import fresh_database
from walletd.cluster.db import Connection, Database
from walletd.cluster.leases import Leases, Tenure, append_event
from walletd.cluster.migrations import migrate
from walletd.errors import Fenced

pytestmark = pytest.mark.pg

TTL = 10.0
STEP = 4.0
ESCROW = "e1"
HOSTS = ("A", "B")


@attrs.define
class ModelLease:
    owner: str | None = None
    epoch: int = 0
    expires: float = 0.0  # model time (sum of advances)


class FencingMachine(RuleBasedStateMachine):
    db: Database  # set by the test before running the machine

    def __init__(self) -> None:
        super().__init__()
        self.leases = Leases(self.db, TTL)
        self.db.run_sync(_reset)
        self.now = 0.0
        self.lease = ModelLease()
        self.held: dict[str, Tenure | None] = dict.fromkeys(HOSTS)
        self.paused: set[str] = set()
        self.accepted: list[tuple[str, int]] = []  # (host, epoch) of every write that committed
        self.epochs: list[int] = []  # every epoch handed out, in order

    def _live(self) -> bool:
        return self.lease.owner is not None and self.now < self.lease.expires

    def _is_current(self, t: Tenure) -> bool:
        return self.lease.owner == t.host_id and self.lease.epoch == t.epoch

    @rule(host=st.sampled_from(HOSTS))
    def acquire(self, host: str) -> None:
        if host in self.paused:
            return
        got = self.db.run_sync(self.leases.acquire_job(ESCROW, host))
        if self._live():
            assert got is None, "a live lease was taken"
            return
        assert got is not None, "a free or expired lease was refused"
        assert got.epoch == self.lease.epoch + 1
        assert all(got.epoch > e for e in self.epochs), "epochs must strictly increase"
        self.epochs.append(got.epoch)
        self.lease = ModelLease(host, got.epoch, self.now + TTL)
        self.held[host] = got

    @rule(host=st.sampled_from(HOSTS))
    def renew(self, host: str) -> None:
        tenure = self.held[host]
        if tenure is None or host in self.paused:
            return
        ok = self.db.run_sync(self.leases.renew_job(tenure))
        assert ok == (self._is_current(tenure) and self._live())
        if ok:
            self.lease.expires = self.now + TTL

    @rule(host=st.sampled_from(HOSTS))
    def release(self, host: str) -> None:
        tenure = self.held[host]
        if tenure is None or host in self.paused:
            return
        ok = self.db.run_sync(self.leases.release_job(tenure))
        assert ok == self._is_current(tenure)
        if ok:
            self.lease.owner = None
            self.lease.expires = self.now
        self.held[host] = None

    @rule(host=st.sampled_from(HOSTS))
    def write(self, host: str) -> None:
        tenure = self.held[host]
        if tenure is None or host in self.paused:
            return
        should = self._is_current(tenure) and self._live()

        def event(conn: Connection) -> int:
            return append_event(conn, "write", ESCROW, {}, tenure)

        try:
            self.db.run_sync(self.leases.fenced_job(tenure, event))
        except Fenced:
            assert not should, "the current owner's write was refused"
            return
        assert should, f"a stale write was accepted (epoch {tenure.epoch})"
        self.accepted.append((host, tenure.epoch))

    @rule(host=st.sampled_from(HOSTS))
    def pause(self, host: str) -> None:
        self.paused.add(host)

    @rule(host=st.sampled_from(HOSTS))
    def resume(self, host: str) -> None:
        self.paused.discard(host)

    @rule(host=st.sampled_from(HOSTS))
    def crash(self, host: str) -> None:
        self.held[host] = None  # restarted: remembers nothing; its lease is left to expire
        self.paused.discard(host)

    @precondition(lambda self: self.now < 400)  # keeps every example short in real time too
    @rule()
    def advance(self) -> None:
        self.db.run_sync(_advance)
        self.now += STEP

    @invariant()
    def database_matches_model(self) -> None:
        row = self.db.run_sync(_lease_row)
        if row is None:
            assert self.lease.epoch == 0
        else:
            assert row == (self.lease.owner, self.lease.epoch, self._live())

    @invariant()
    def at_most_one_host_can_write(self) -> None:
        writers = [
            h
            for h, t in self.held.items()
            if t is not None and self._is_current(t) and self._live()
        ]
        assert len(writers) <= 1

    @invariant()
    def every_committed_write_carries_its_owners_epoch(self) -> None:
        rows = self.db.run_sync(_events)
        assert rows == self.accepted, "the event log differs from the accepted writes"
        assert [e for _, e in rows] == sorted(e for _, e in rows)


def _reset(conn: Connection) -> None:
    conn.execute("TRUNCATE leases, events")
    conn.execute("UPDATE event_counter SET seq = 0")
    conn.execute("UPDATE cluster_clock SET offset_seconds = 0")


def _advance(conn: Connection) -> None:
    conn.execute("UPDATE cluster_clock SET offset_seconds = offset_seconds + %s", (STEP,))


def _lease_row(conn: Connection) -> tuple[str | None, int, bool] | None:
    row = conn.execute(
        "SELECT host_id, epoch, expires_at > cluster_now() FROM leases WHERE escrow_id = %s",
        (ESCROW,),
    ).fetchone()
    return None if row is None else (row[0], int(row[1]), bool(row[2]))


def _events(conn: Connection) -> list[tuple[str, int]]:
    rows = conn.execute("SELECT host_id, epoch FROM events ORDER BY seq").fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


@pytest.fixture
def migrated_db() -> Iterator[Database]:
    with fresh_database() as url:
        db = Database(url)
        trio.run(db.open)
        try:
            trio.run(migrate, db)
            yield db
        finally:
            trio.run(db.close)


def test_leases_and_fencing(migrated_db: Database) -> None:
    """Over any sequence of acquire, renew, release, write, pause, resume, crash and time passing:
    a live lease is never taken, epochs strictly increase, at most one host can write, and every
    write that commits carries the current owner's unexpired epoch (no stale write commits)."""
    FencingMachine.db = migrated_db
    run_state_machine_as_test(
        FencingMachine, settings=settings(max_examples=100, stateful_step_count=50, deadline=None)
    )
