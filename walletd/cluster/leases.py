"""Escrow leases with a fencing epoch, and the fenced write every durable escrow write goes through.

A lease row says which host may open an escrow's wallets until `expires_at`, computed by the
database clock (`cluster_now() + ttl`), so hosts' clocks never matter. `epoch` grows on every change
of owner (a released lease keeps its row and its epoch): it is the fencing token. A write about an
escrow runs `fenced_write`, which in the same transaction locks the lease row (FOR KEY SHARE: the
owner's renewals pass it, a change of owner waits for it) and checks that the writer's epoch is the
current one and unexpired; otherwise it raises `Fenced` and nothing is written. A host paused
past its lease and then resumed can therefore change nothing: by then its lease has expired, or
another host holds a larger epoch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import attrs

from walletd.cluster.db import Connection, Database
from walletd.errors import Fenced
from walletd.jsontypes import JsonMapping

__all__ = [
    "Lease",
    "LeaseStatistics",
    "Leases",
    "Tenure",
    "append_event",
    "append_event_row",
]

T = TypeVar("T")


@attrs.frozen
class Tenure:
    """What a host holds after acquiring an escrow's lease: the token it writes with."""

    escrow_id: str
    host_id: str
    epoch: int


@attrs.frozen
class Lease:
    """A lease row as `GET /v1/cluster` will list it (host_id None: released)."""

    escrow_id: str
    host_id: str | None
    epoch: int
    expires_at: datetime
    live: bool  # unexpired by the database clock when read


@attrs.frozen
class LeaseStatistics:
    """What `Leases.statistics()` reports (since start)."""

    fenced_writes: int  # writes refused: a stale lease, or none held


class Leases:
    """Acquire, renew and release escrow leases; run fenced writes. Counts refused writes."""

    def __init__(self, db: Database, ttl: float) -> None:
        self.db = db
        self.ttl = ttl
        self._fenced_writes = 0  # writes refused as stale (`statistics`)
        self._count_lock = threading.Lock()  # jobs run in several worker threads

    # ---- the jobs, sync (run in a worker thread by Database) ------------------------------------

    def acquire_job(self, escrow_id: str, host_id: str) -> Callable[[Connection], Tenure | None]:
        def job(conn: Connection) -> Tenure | None:
            # FOR UPDATE first: it waits for every fenced write in flight (they hold the row FOR
            # KEY SHARE), so no write checked under the old owner commits after the new one's
            # epoch exists. The upsert alone would not wait: it changes no key column, so its
            # row lock does not conflict with KEY SHARE.
            conn.execute("SELECT 1 FROM leases WHERE escrow_id = %s FOR UPDATE", (escrow_id,))
            # Free (never leased, released) or expired: take it with the next epoch. Held and
            # unexpired (by anyone, this host included: it must renew instead): no row back.
            row = conn.execute(
                """
                INSERT INTO leases AS l (escrow_id, host_id, epoch, expires_at)
                VALUES (%(e)s, %(h)s, 1, cluster_now() + make_interval(secs => %(ttl)s))
                ON CONFLICT (escrow_id) DO UPDATE
                    SET host_id = excluded.host_id, epoch = l.epoch + 1,
                        expires_at = excluded.expires_at
                    WHERE l.host_id IS NULL OR l.expires_at <= cluster_now()
                RETURNING epoch
                """,
                {"e": escrow_id, "h": host_id, "ttl": self.ttl},
            ).fetchone()
            return Tenure(escrow_id, host_id, int(row[0])) if row else None

        return job

    def renew_job(self, tenure: Tenure) -> Callable[[Connection], bool]:
        def job(conn: Connection) -> bool:
            # Only the owner, with its epoch, before expiry: an expired lease is not revived (its
            # holder has self-fenced by then, and another host may be about to take it).
            cur = conn.execute(
                """
                UPDATE leases SET expires_at = cluster_now() + make_interval(secs => %(ttl)s)
                WHERE escrow_id = %(e)s AND host_id = %(h)s AND epoch = %(epoch)s
                    AND expires_at > cluster_now()
                """,
                {
                    "e": tenure.escrow_id,
                    "h": tenure.host_id,
                    "epoch": tenure.epoch,
                    "ttl": self.ttl,
                },
            )
            return cur.rowcount == 1

        return job

    def release_job(self, tenure: Tenure) -> Callable[[Connection], bool]:
        def job(conn: Connection) -> bool:
            cur = conn.execute(
                """
                UPDATE leases SET host_id = NULL, expires_at = cluster_now()
                WHERE escrow_id = %s AND host_id = %s AND epoch = %s
                """,
                (tenure.escrow_id, tenure.host_id, tenure.epoch),
            )
            return cur.rowcount == 1

        return job

    def fenced_job(
        self, tenure: Tenure, write: Callable[[Connection], T]
    ) -> Callable[[Connection], T]:
        def job(conn: Connection) -> T:
            # FOR KEY SHARE: the lease cannot change owner until this transaction ends, so the
            # check still holds when the write commits (an acquire takes the row FOR UPDATE,
            # which waits for this lock, then re-reads). The expiry is checked at lock time, by
            # the database clock. Not FOR UPDATE: the owner's own renewal (an UPDATE of
            # expires_at alone) must never queue behind its writes, which may wait on other
            # rows (the event counter) for up to lock_timeout; under load such a queue once
            # made a host miss its renewals and lose leases it was using.
            row = conn.execute(
                """
                SELECT host_id, epoch, expires_at > cluster_now() FROM leases
                WHERE escrow_id = %s FOR KEY SHARE
                """,
                (tenure.escrow_id,),
            ).fetchone()
            if row is None or row[0] != tenure.host_id or row[1] != tenure.epoch or not row[2]:
                with self._count_lock:
                    self._fenced_writes += 1
                raise Fenced(f"escrow {tenure.escrow_id}: lease lost (epoch {tenure.epoch} stale)")
            return write(conn)

        return job

    def refused(self, escrow_id: str) -> Fenced:
        """The error for a write about an escrow this host holds no lease on (never had one, or
        has given it up or lost it): counted with the stale writes, and nothing is written."""
        with self._count_lock:
            self._fenced_writes += 1
        return Fenced(f"escrow {escrow_id}: no lease held by this host")

    def statistics(self) -> LeaseStatistics:
        with self._count_lock:
            return LeaseStatistics(fenced_writes=self._fenced_writes)

    # ---- the trio API ---------------------------------------------------------------------------

    async def acquire(self, escrow_id: str, host_id: str) -> Tenure | None:
        """Take the lease if free or expired (epoch + 1); None if another live holder has it."""
        return await self.db.run(self.acquire_job(escrow_id, host_id))

    async def renew(self, tenure: Tenure) -> bool:
        """Extend by ttl from now (database clock); False if the lease is no longer ours.

        Abandoned on cancel: a renew whose outcome is unknown counts as failed. On the reserved
        connections: never queued behind other work."""
        return await self.db.run(self.renew_job(tenure), abandon_on_cancel=True, renewal=True)

    async def release(self, tenure: Tenure) -> bool:
        """Give the lease up (the next acquire by anyone gets epoch + 1)."""
        return await self.db.run(self.release_job(tenure))

    async def fenced_write(self, tenure: Tenure, write: Callable[[Connection], T]) -> T:
        """Run `write(conn)` in one transaction with the lease check first; `Fenced` if stale."""
        return await self.db.run(self.fenced_job(tenure, write))

    async def list(self) -> list[Lease]:
        def job(conn: Connection) -> list[Lease]:
            rows = conn.execute(
                "SELECT escrow_id, host_id, epoch, expires_at, expires_at > cluster_now()"
                " FROM leases ORDER BY escrow_id"
            ).fetchall()
            return [Lease(r[0], r[1], int(r[2]), r[3], bool(r[4])) for r in rows]

        return await self.db.run(job, abandon_on_cancel=True)


def append_event(
    conn: Connection, type_: str, escrow_id: str | None, data: JsonMapping, tenure: Tenure | None
) -> int:
    """Append an event in the caller's transaction; return its seq."""
    return append_event_row(conn, type_, escrow_id, data, tenure)[0]


def append_event_row(
    conn: Connection,
    type_: str,
    escrow_id: str | None,
    data: JsonMapping,
    tenure: Tenure | None,
    *,
    notify: str | None = None,
) -> tuple[int, datetime]:
    """Append an event in the caller's transaction, notify its seq on `notify` (sent at
    commit); return its seq and time.

    seq is taken from the counter row, which this transaction then holds locked until it commits:
    events get their seq in commit order across hosts, which the feed's readers rely on (they read
    by seq; a sequence would hand out numbers that commit out of order). The row is the cluster's
    one hot row, so it is taken in a single statement, as late as the writer can, and a holder
    that stalls before committing loses its session after `Bounds.stall` (see `db`)."""
    row = conn.execute(
        """
        WITH c AS (UPDATE event_counter SET seq = seq + 1 RETURNING seq),
        e AS (
            INSERT INTO events (seq, type, escrow_id, at, data, host_id, epoch)
            SELECT c.seq, %(type)s, %(escrow)s, cluster_now(), %(data)s::jsonb, %(host)s,
                %(epoch)s FROM c
            RETURNING seq, at
        )
        SELECT seq, at, CASE WHEN %(channel)s::text IS NULL THEN NULL
            ELSE pg_notify(%(channel)s::text, seq::text) END FROM e
        """,
        {
            "type": type_,
            "escrow": escrow_id,
            "data": json.dumps(dict(data)),
            "host": tenure.host_id if tenure else None,
            "epoch": tenure.epoch if tenure else None,
            "channel": notify,
        },
    ).fetchone()
    assert row is not None  # the migration inserts the one counter row
    return int(row[0]), row[1]
