"""The cluster's hosts: each one's heartbeat (sessions open, capacity), and which are alive.

Every host upserts its row on a heartbeat (every lease_ttl/3); `last_seen` is the database's
clock, so whether a host is live never depends on the hosts' clocks. A host is live while its
last heartbeat is younger than `lease_ttl`: the bound its leases live by, so a killed host stops
being live about when its leases expire (not later: requests for its escrows are not forwarded
to it, see `lease_owner`). A host that stops gracefully withdraws its row (`withdraw`), so the
others stop forwarding to it at once. `GET /v1/cluster` lists the rows.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from walletd.cluster.db import Connection, Database

__all__ = ["LIVE_WITHIN", "HostInfo", "Hosts", "LeaseOwner"]

LIVE_WITHIN = 15.0  # seconds since its last heartbeat within which a host is live (lease_ttl)


@attrs.frozen
class HostInfo:
    """One host as `GET /v1/cluster` lists it."""

    host_id: str
    last_seen: datetime
    sessions: int
    capacity: int  # its max_sessions
    live: bool  # seen within the bound when read, by the database clock


@attrs.frozen
class LeaseOwner:
    """Who holds an escrow's live lease, as a request about it must know to reach it."""

    host_id: str
    expires_at: datetime  # the lease's end unless renewed (database clock)
    lease_left: float  # seconds until then, when read
    live: bool  # the holder's heartbeat is fresh (a killed or stopped host's is not)


class Hosts:
    """Heartbeats in and host lists out, on the `hosts` table."""

    def __init__(self, db: Database, *, live_within: float = LIVE_WITHIN) -> None:
        self.db = db
        self.live_within = live_within

    async def heartbeat(self, host_id: str, sessions: int, max_sessions: int) -> None:
        """Say this host is alive now (database clock) with `sessions` of `max_sessions` open.

        Abandoned on cancel: a heartbeat whose outcome is unknown is simply sent again."""

        def job(conn: Connection) -> None:
            conn.execute(
                """
                INSERT INTO hosts (host_id, last_seen, sessions, max_sessions)
                VALUES (%s, cluster_now(), %s, %s)
                ON CONFLICT (host_id) DO UPDATE SET last_seen = excluded.last_seen,
                    sessions = excluded.sessions, max_sessions = excluded.max_sessions
                """,
                (host_id, sessions, max_sessions),
            )

        await self.db.run(job, abandon_on_cancel=True)

    async def withdraw(self, host_id: str) -> None:
        """A graceful stop: this host is gone from the list, and no longer live for the others
        (they stop forwarding to it at once, and take its escrows as its leases are released).
        Its next start's heartbeat adds it again."""

        def job(conn: Connection) -> None:
            conn.execute("DELETE FROM hosts WHERE host_id = %s", (host_id,))

        await self.db.run(job)

    async def lease_owner(self, escrow_id: str) -> LeaseOwner | None:
        """The holder of the escrow's live lease and whether that host is live; None if no
        host holds it (never leased, released, or expired), by the database clock."""

        def job(conn: Connection) -> LeaseOwner | None:
            row = conn.execute(
                """
                SELECT l.host_id, l.expires_at,
                    extract(epoch FROM l.expires_at - cluster_now())::float8,
                    coalesce(h.last_seen > cluster_now() - make_interval(secs => %s), false)
                FROM leases l LEFT JOIN hosts h ON h.host_id = l.host_id
                WHERE l.escrow_id = %s AND l.host_id IS NOT NULL AND l.expires_at > cluster_now()
                """,
                (self.live_within, escrow_id),
            ).fetchone()
            if row is None:
                return None
            return LeaseOwner(str(row[0]), row[1], float(row[2]), bool(row[3]))

        return await self.db.run(job, abandon_on_cancel=True)

    async def live_hosts(self, within: float) -> list[HostInfo]:
        """The hosts seen within the last `within` seconds (database clock), by id."""
        return await self._select(within, live_only=True)

    async def _select(self, within: float, *, live_only: bool) -> list[HostInfo]:
        def job(conn: Connection) -> list[HostInfo]:
            rows = conn.execute(
                """
                SELECT * FROM (
                    SELECT host_id, last_seen, sessions, max_sessions,
                        last_seen > cluster_now() - make_interval(secs => %s) AS live
                    FROM hosts
                ) h
                WHERE live OR NOT %s
                ORDER BY host_id COLLATE "C"
                """,
                (within, live_only),
            ).fetchall()
            return [HostInfo(r[0], r[1], int(r[2]), int(r[3]), bool(r[4])) for r in rows]

        return await self.db.run(job, abandon_on_cancel=True)

    # Last in the class: below it, `list` in an annotation would name this method.
    async def list(self) -> list[HostInfo]:
        """Every host that ever beat, by id; `live` if seen within `live_within` seconds."""
        return await self._select(self.live_within, live_only=False)
