"""The cluster's hosts: each one's heartbeat (sessions open, capacity), and which are alive.

Every host upserts its row on a heartbeat; `last_seen` is the database's clock, so whether a host
is live never depends on the hosts' clocks. `GET /v1/cluster` lists them, and the monitor spreads
unowned escrows over live hosts with free capacity (the cluster's capacity is the sum).
"""

from __future__ import annotations

from datetime import datetime

import attrs

from walletd.cluster.db import Connection, Database

__all__ = ["LIVE_WITHIN", "HostInfo", "Hosts"]

LIVE_WITHIN = 30.0  # seconds since its last heartbeat within which `list` calls a host live


@attrs.frozen
class HostInfo:
    """One host as `GET /v1/cluster` lists it."""

    host_id: str
    last_seen: datetime
    sessions: int
    capacity: int  # its max_sessions
    live: bool  # seen within the bound when read, by the database clock


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
