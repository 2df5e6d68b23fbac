"""PostgreSQL from trio: psycopg 3's sync API, run in worker threads over a small connection pool.

psycopg's async API needs asyncio, and walletd runs on trio. Its sync connections are thread-safe
to hand between threads (one at a time, which the pool guarantees), so each database job is a plain
function `job(conn) -> T` run by `trio.to_thread.run_sync` in one transaction. A `CapacityLimiter`
as wide as the pool keeps threads from queueing inside the pool where trio cannot cancel them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg.rows import TupleRow

from walletd.state.store import StoreUnavailable

__all__ = ["ClusterUnavailable", "Connection", "Database"]

T = TypeVar("T")
Connection = psycopg.Connection[TupleRow]

CONNECT_TIMEOUT = 10.0  # seconds to get a pooled connection before ClusterUnavailable


class ClusterUnavailable(StoreUnavailable):
    """The cluster database cannot be reached or failed a statement for a reason not our own
    (a `StoreUnavailable`: whoever handles the database failing handles this)."""


class Database:
    """A small pool of connections to the cluster database, used from trio."""

    def __init__(
        self, url: str, *, max_size: int = 4, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        # open=False: connections are made by `open` (in a thread), not in the constructor.
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            name="walletd-cluster",
        )
        self._limiter = trio.CapacityLimiter(max_size)
        self._connect_timeout = connect_timeout

    async def open(self) -> None:
        """Connect (waits for the first connection, so a wrong URL fails here, clearly)."""
        try:
            await trio.to_thread.run_sync(
                lambda: self._pool.open(wait=True, timeout=self._connect_timeout)
            )
        except psycopg_pool.PoolTimeout as exc:
            raise ClusterUnavailable("cluster database unreachable") from exc

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._pool.close)

    async def run(self, job: Callable[[Connection], T], *, abandon_on_cancel: bool = False) -> T:
        """Run `job(conn)` in a worker thread inside one transaction; commit if it returns.

        With `abandon_on_cancel` a cancelled caller stops waiting at once, the job's outcome then
        being unknown (it may still commit): only for reads and for writes whose caller treats
        "unknown" as "failed", like a lease renew.
        """
        return await trio.to_thread.run_sync(
            self.run_sync, job, abandon_on_cancel=abandon_on_cancel, limiter=self._limiter
        )

    def run_sync(self, job: Callable[[Connection], T]) -> T:
        """`run` for code already in a worker thread (and for the sync property test)."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                return job(conn)
        except psycopg_pool.PoolTimeout as exc:
            raise ClusterUnavailable("cluster database: no connection available") from exc
        except psycopg.OperationalError as exc:
            # The server or the network failed (not the statement): the caller may retry.
            raise ClusterUnavailable(f"cluster database failed ({type(exc).__name__})") from exc
