"""PostgreSQL from trio: psycopg 3's sync API, run in worker threads over a small connection pool.

psycopg's async API needs asyncio, and walletd runs on trio. Its sync connections are thread-safe
to hand between threads (one at a time, which the pool guarantees), so each database job is a plain
function `job(conn) -> T` run by `trio.to_thread.run_sync` in one transaction. A `CapacityLimiter`
as wide as the pool keeps threads from queueing inside the pool where trio cannot cancel them.

**Bounds.** trio cannot stop a thread blocked in the driver, and an abandoned job keeps its limiter
slot until its thread returns, so every job is bounded where it blocks: in the server and in the
socket. Each connection sets (`Bounds`, derived from the lease TTL) `lock_timeout`, so no job waits
for a row for ever; `idle_in_transaction_session_timeout`, so a host that stalls inside a
transaction (SIGSTOP, a VM pause, a cut network) holds its rows, the `event_counter` row and lease
rows among them, no longer than `Bounds.stall`: the server ends its session; `statement_timeout`;
and TCP keepalives and `tcp_user_timeout` on both ends, so a dead peer breaks the connection
instead of hanging it. Lease renewals run on a reserved connection of their own (`renewal=True`):
they never wait for a pool slot behind other work, so a host whose writes are all stuck keeps its
leases.

**The database down.** A connection that breaks (the server gone, the network cut) or a pool that
cannot give one marks the database down: from then on every job fails at once with
`ClusterUnavailable` (a 503) instead of waiting for a connection, while `watch` probes with a fresh
connection every `PROBE_INTERVAL`; the first probe that gets through refreshes the pools and lets
jobs run again. `watch` also cuts the connection of a job running past `Bounds.job` (a server
that stopped answering on a live socket runs none of its own timers). Without `watch` running
(tools, tests) nothing is refused early and nothing is cut.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import attrs
import psycopg
import psycopg_pool
import structlog
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from walletd.errors import ClusterUnavailable

__all__ = ["Bounds", "Connection", "Database", "bounds_for", "describe_url"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[TupleRow]

CONNECT_TIMEOUT = 10.0  # seconds to get a pooled connection before ClusterUnavailable
PROBE_INTERVAL = 0.5  # seconds between probes while the database is down
RENEWAL_CONNECTIONS = 2  # the reserved connections lease renewals run on
DEFAULT_TTL = 15.0  # the bounds of a Database made without a lease TTL (tools, tests)

# SQLSTATEs of a server ending the session (shutdown, crash, starting up): the database is down.
_SERVER_GONE = {"57P01", "57P02", "57P03"}


class _PoolLog(logging.Handler):
    """psycopg_pool's own lines (each failed reconnect while the database is down) as walletd's
    debug lines: never raw text on stderr beside the JSON log. `Database` says down and back."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("cluster database pool", message=record.getMessage())


_pool_logger = logging.getLogger("psycopg.pool")
_pool_logger.addHandler(_PoolLog())
_pool_logger.propagate = False


@attrs.frozen
class Bounds:
    """How long a connection may wait or hold, in seconds; see the module docstring."""

    stall: float  # idle_in_transaction_session_timeout: a stalled transaction ends after this
    lock: float  # lock_timeout: a row lock is waited for at most this long
    statement: float  # statement_timeout
    tcp_user_timeout: float  # unacknowledged data this long breaks the connection
    keepalive_idle: int  # seconds of silence before TCP keepalive probes (then 1 s apart, 3)
    job: float  # a job still running after this long has its connection cut (`watch`)

    def libpq(self) -> dict[str, str | int]:
        """Connection parameters: the client's socket bounds, the server's session settings."""
        settings = {
            "lock_timeout": f"{int(self.lock * 1000)}ms",
            "statement_timeout": f"{int(self.statement * 1000)}ms",
            "idle_in_transaction_session_timeout": f"{int(self.stall * 1000)}ms",
            # the server side of the socket: a vanished client's session ends too
            "tcp_keepalives_idle": str(self.keepalive_idle),
            "tcp_keepalives_interval": "1",
            "tcp_keepalives_count": "3",
            "tcp_user_timeout": f"{int(self.tcp_user_timeout * 1000)}",
        }
        return {
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(self.tcp_user_timeout * 1000),
            "options": " ".join(f"-c {k}={v}" for k, v in settings.items()),
        }


def bounds_for(lease_ttl: float) -> Bounds:
    """The bounds for a cluster with this lease TTL.

    A stalled transaction is ended after ttl/3 (1 to 10 s): an expired lease whose row it held
    is taken over within lease_ttl + ttl/3, and a host's writes queued behind it resume by then.
    A lock is waited for twice that, so a writer queued behind a stalled holder gets the row
    once the server ended the stall instead of failing first. Statements get 30 s or two TTLs:
    wallet files are megabytes. A whole job gets two statements' time: past that only a server
    that stopped answering on a live socket (itself stopped, its disk hung) keeps it, and the
    server's own timers do not run then, so walletd cuts the connection."""
    stall = min(max(lease_ttl / 3, 1.0), 10.0)
    statement = max(30.0, 2 * lease_ttl)
    return Bounds(
        stall=stall,
        lock=2 * stall,
        statement=statement,
        tcp_user_timeout=max(2 * stall, 5.0),
        keepalive_idle=max(1, int(stall)),
        job=2 * statement,
    )


def describe_url(url: str) -> str:
    """`cluster.database_url`'s host and port as an error may name them (never the password)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "cluster.database_url (unparsable)"
    host = str(params.get("host") or params.get("hostaddr") or "local socket")
    port = str(params.get("port") or 5432)
    return f"cluster.database_url ({host}:{port})"


def _reason(exc: BaseException) -> str:
    """libpq's reason, one line: the first line of its last "failed: " part, without the hint
    (libpq names host, port, user, never the password)."""
    last = str(exc).rsplit("failed: ", 1)[-1].strip()
    return " ".join(last.splitlines()[0].split()) if last else type(exc).__name__


class Database:
    """A small pool of connections to the cluster database, used from trio."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 4,
        connect_timeout: float = CONNECT_TIMEOUT,
        lease_ttl: float = DEFAULT_TTL,
        bounds: Bounds | None = None,
    ) -> None:
        """`bounds`: instead of those `lease_ttl` gives (a test's shorter ones)."""
        self.bounds = bounds or bounds_for(lease_ttl)
        self._url = url
        self._kwargs: dict[str, object] = {
            "autocommit": True,
            "connect_timeout": max(1, int(connect_timeout)),
            **self.bounds.libpq(),
        }
        options = conninfo_to_dict(url).get("options")
        if options:  # the URL's own options stay, ours added after them
            self._kwargs["options"] = f"{options} {self._kwargs['options']}"
        # open=False: connections are made by `open` (in a thread), not in the constructor.
        self._pool = self._make_pool("walletd-cluster", 1, max_size, connect_timeout)
        self._renewals = self._make_pool(
            "walletd-renewals", 1, RENEWAL_CONNECTIONS, connect_timeout
        )
        self._limiter = trio.CapacityLimiter(max_size)
        self._renewal_limiter = trio.CapacityLimiter(RENEWAL_CONNECTIONS)
        self._connect_timeout = connect_timeout
        self.down: str | None = None  # why the database is known down; None while it answers
        # Jobs running now: their connection and when they began (for the watchdog in `watch`).
        self._running: dict[int, tuple[Connection, float]] = {}
        self._running_lock = threading.Lock()
        self.cut = 0  # connections cut by the watchdog since start
        self._down_at = 0.0  # time.monotonic() when it went down
        self._watching = False

    def _make_pool(
        self, name: str, min_size: int, max_size: int, timeout: float
    ) -> psycopg_pool.ConnectionPool[Connection]:
        return psycopg_pool.ConnectionPool(
            self._url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=timeout,
            kwargs=self._kwargs,
            name=name,
        )

    async def open(self) -> None:
        """Connect (one direct connection first, so that a wrong URL or a database down fails
        here with libpq's reason, naming the key, its host and port: never the password)."""
        await self.probe()
        try:
            for pool in (self._pool, self._renewals):
                await trio.to_thread.run_sync(self._open_pool, pool)
        except psycopg_pool.PoolTimeout as exc:
            raise ClusterUnavailable(
                f"{describe_url(self._url)}: cannot connect: no connection within"
                f" {self._connect_timeout:g} s"
            ) from exc
        self.down = None

    async def probe(self) -> None:
        """One direct connection, as `open` makes first (no pool): ClusterUnavailable naming
        the key, host and port if it cannot be made."""
        try:
            await trio.to_thread.run_sync(self._connect_once)
        except psycopg.Error as exc:
            raise ClusterUnavailable(
                f"{describe_url(self._url)}: cannot connect: {_reason(exc)}"
            ) from None

    def _open_pool(self, pool: psycopg_pool.ConnectionPool[Connection]) -> None:
        pool.open(wait=True, timeout=self._connect_timeout)

    def _connect_once(self) -> None:
        with psycopg.connect(self._url, **self._kwargs) as conn:  # type: ignore[arg-type]
            conn.execute("SELECT 1")

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._renewals.close)
        await trio.to_thread.run_sync(self._pool.close)

    async def run(
        self,
        job: Callable[[Connection], T],
        *,
        abandon_on_cancel: bool = False,
        renewal: bool = False,
    ) -> T:
        """Run `job(conn)` in a worker thread inside one transaction; commit if it returns.

        With `abandon_on_cancel` a cancelled caller stops waiting at once, the job's outcome then
        being unknown (it may still commit): only for reads and for writes whose caller treats
        "unknown" as "failed", like a lease renew. `renewal`: on the reserved connections.
        While the database is known down (and `watch` probes it) it fails at once.
        """
        if self.down is not None and self._watching:
            raise ClusterUnavailable(f"cluster database unavailable ({self.down})")
        pool, limiter = (
            (self._renewals, self._renewal_limiter) if renewal else (self._pool, self._limiter)
        )
        return await trio.to_thread.run_sync(
            self._run_in, pool, job, abandon_on_cancel=abandon_on_cancel, limiter=limiter
        )

    def run_sync(self, job: Callable[[Connection], T]) -> T:
        """`run` for code already in a worker thread (and for the sync property test)."""
        return self._run_in(self._pool, job)

    def _run_in(
        self, pool: psycopg_pool.ConnectionPool[Connection], job: Callable[[Connection], T]
    ) -> T:
        try:
            with pool.connection() as conn:
                key = id(conn)
                with self._running_lock:
                    self._running[key] = (conn, time.monotonic())
                try:
                    with conn.transaction():
                        return job(conn)
                except psycopg.Error as exc:
                    if not conn.broken:
                        raise  # the statement's own error (OperationalError: below)
                    # The session ended under the job: the server or the network failed, or
                    # the server ended a stall (ours) of this transaction. Never the caller's.
                    if exc.sqlstate is None or exc.sqlstate in _SERVER_GONE:
                        self._went_down(f"connection lost: {type(exc).__name__}")
                    raise ClusterUnavailable(
                        f"cluster database failed ({type(exc).__name__})"
                    ) from exc
                finally:
                    # Before the connection goes back to the pool: the watchdog never cuts a
                    # connection another job has taken since.
                    with self._running_lock:
                        del self._running[key]
        except psycopg_pool.PoolTimeout as exc:
            # The limiter is as wide as the pool, so no job waits here for a busy connection:
            # a timeout means no connection could be made.
            self._went_down("no connection")
            raise ClusterUnavailable("cluster database: no connection available") from exc
        except psycopg.OperationalError as exc:
            # The server failed the statement for a reason not the caller's, or one of the
            # bounds ended its wait (a lock, a statement): the caller may retry.
            raise ClusterUnavailable(f"cluster database failed ({type(exc).__name__})") from exc

    def _cut_overdue(self) -> None:
        """Shut the socket of every job running longer than `Bounds.job`: its thread, blocked in
        the driver, then fails (the connection broken) and frees its limiter slot."""
        now = time.monotonic()
        with self._running_lock:
            for conn, began in self._running.values():
                if now - began > self.bounds.job and not conn.closed:
                    try:
                        sock = socket.socket(fileno=conn.fileno())
                    except (OSError, psycopg.Error):
                        continue
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    finally:
                        sock.detach()  # the descriptor stays the driver's, to close
                    self.cut += 1
                    log.error(
                        "cluster database job overran its bound: connection cut",
                        bound_s=self.bounds.job,
                    )

    def _went_down(self, reason: str) -> None:
        if self.down is None:
            self._down_at = time.monotonic()
            log.error("cluster database down: calls fail at once until it answers", reason=reason)
        self.down = reason

    async def watch(self) -> None:
        """While the database is down, probe it with a fresh connection every PROBE_INTERVAL;
        once one gets through, drop the pools' dead connections and let jobs run again."""
        self._watching = True
        try:
            while True:
                self._cut_overdue()
                if self.down is None:
                    await trio.sleep(PROBE_INTERVAL)
                    continue
                try:
                    await trio.to_thread.run_sync(self._connect_once, abandon_on_cancel=True)
                except psycopg.Error:
                    await trio.sleep(PROBE_INTERVAL)
                    continue
                for pool in (self._renewals, self._pool):
                    await trio.to_thread.run_sync(pool.check, abandon_on_cancel=True)
                self.down = None
                log.warning(
                    "cluster database back", down_s=round(time.monotonic() - self._down_at, 1)
                )
        finally:
            self._watching = False
