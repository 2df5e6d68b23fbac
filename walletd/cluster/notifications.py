"""LISTEN/NOTIFY wake-ups from the cluster database, delivered into trio.

A notification is only a wake-up: whoever is woken re-reads the state it cares about from the
database (events by seq, forwarded requests by row). Notifications can be lost (a dropped
connection forgets what was sent meanwhile), so after every (re)connection every subscriber is
woken with `missed=True`, and its owner is expected to re-read everything, not just the payloads.

One `Listener` per host owns ONE dedicated autocommit connection (never from the pool: a pooled
connection would be handed to other jobs and its LISTENs lost). psycopg's `notifies()` blocks, so
it runs in a worker thread of its own (its own CapacityLimiter: it does not take one of trio's
default thread slots for long) and hands each notification to trio with `trio.from_thread`. On
cancel the trio side stops waiting at once; the thread notices within `POLL_SECONDS` and closes
the connection itself, so no other thread ever touches the connection while it is in use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType

import attrs
import psycopg
import structlog
import trio
from psycopg import sql
from psycopg.conninfo import make_conninfo

from walletd.cluster.db import CONNECT_TIMEOUT, Connection
from walletd.errors import ClusterUnavailable

__all__ = ["EVENTS_CHANNEL", "Listener", "Subscription", "Wakeup", "notify"]

log = structlog.get_logger(__name__)

EVENTS_CHANNEL = "walletd_events"  # NOTIFY after an event is appended: long polls re-read by seq

POLL_SECONDS = 0.5  # the thread checks for a stop this often (bounds how long a stop takes)
PING_SECONDS = 10.0  # a quiet connection is checked with `SELECT 1` this often
MAX_PENDING = 1024  # payloads kept per subscriber between waits; beyond: dropped, `missed` set
BACKOFF_FIRST = 0.1  # seconds before the first reconnect attempt; doubles up to BACKOFF_MAX
BACKOFF_MAX = 5.0

# libpq settings that make a dead peer (host gone, network cut) an error within seconds instead
# of a read that never returns.
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


def notify(conn: Connection, channel: str, payload: str) -> None:
    """NOTIFY in the caller's transaction: delivered when (and only if) it commits, so a woken
    reader always finds what it was woken for (e.g. after `append_event`: EVENTS_CHANNEL, seq)."""
    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


@attrs.frozen
class Wakeup:
    """What a subscriber learns when it wakes: the payloads since its last wait, in order, and
    whether some may be missing (connection re-established, or too many pending): then it must
    re-read everything it watches."""

    payloads: tuple[str, ...]
    missed: bool


class Subscription:
    """Notifications of one channel for one consumer, coalesced between its waits.

    Use as a context manager (`with listener.subscribe(ch) as sub:`) so it is removed when done.
    Subscribe BEFORE reading the state it guards: a notification sent between the read and the
    wait is then kept, not lost."""

    def __init__(self, listener: Listener, channel: str) -> None:
        self.channel = channel
        self._listener = listener
        self._payloads: list[str] = []
        self._missed = False
        self._changed = trio.Event()

    def _push(self, payload: str | None) -> None:
        """One notification (None: some may have been missed)."""
        if payload is None or len(self._payloads) >= MAX_PENDING:
            self._missed = True
        else:
            self._payloads.append(payload)
        self._changed.set()

    def pending(self) -> bool:
        return bool(self._payloads) or self._missed

    async def wait(self) -> Wakeup:
        """Wait until at least one notification (or a possible loss) came since the last wait."""
        while not self.pending():
            await self._changed.wait()
        self._changed = trio.Event()
        wakeup = Wakeup(tuple(self._payloads), self._missed)
        self._payloads.clear()
        self._missed = False
        return wakeup

    def close(self) -> None:
        self._listener._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Listener:
    """LISTENs on a fixed set of channels over its own connection; `run` keeps it connected."""

    def __init__(
        self,
        url: str,
        channels: Iterable[str],
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        poll_seconds: float = POLL_SECONDS,
        ping_seconds: float = PING_SECONDS,
    ) -> None:
        self._url = url  # never logged: it may hold a password
        self.channels = frozenset(channels)
        if not self.channels:
            raise ValueError("a Listener needs at least one channel")
        self._connect_timeout = connect_timeout
        self._poll_seconds = poll_seconds
        self._ping_seconds = ping_seconds
        self._subscribers: dict[str, set[Subscription]] = {c: set() for c in self.channels}
        self._thread_slot = trio.CapacityLimiter(1)  # one thread at a time holds the connection
        self.connections = 0  # successful connect + LISTEN, the first included
        self.backend_pid: int | None = None  # the server process of the current connection
        self.listening = False

    def subscribe(self, channel: str) -> Subscription:
        """A new subscription to one of this listener's channels (works before `run` too: it is
        then woken, with `missed`, once the listener is connected)."""
        if channel not in self.channels:
            raise ValueError(f"not a channel of this listener: {channel!r}")
        sub = Subscription(self, channel)
        self._subscribers[channel].add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subscribers[sub.channel].discard(sub)

    def _deliver(self, channel: str, payload: str | None) -> None:
        for sub in list(self._subscribers.get(channel, ())):
            sub._push(payload)

    def _wake_all(self) -> None:
        for channel in self.channels:
            self._deliver(channel, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and LISTEN (a failure here raises ClusterUnavailable), report started, then
        deliver notifications until cancelled, reconnecting with backoff whenever the connection
        is lost. Every (re)connection wakes every subscriber with `missed=True`."""
        conn: Connection | None = await self._connect_and_listen()
        task_status.started()
        backoff = BACKOFF_FIRST
        while True:
            if conn is not None:
                try:
                    await self._pump(conn)
                except psycopg.Error as exc:
                    log.warning("cluster listener lost its connection", error=type(exc).__name__)
                conn = None
                self.listening = False
                self.backend_pid = None
            await trio.sleep(backoff)
            try:
                conn = await self._connect_and_listen()
            except ClusterUnavailable:
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            log.info("cluster listener reconnected", connections=self.connections)

    async def _connect_and_listen(self) -> Connection:
        stop = threading.Event()

        def connect() -> Connection:
            conninfo = make_conninfo(
                self._url, connect_timeout=max(1, int(self._connect_timeout)), **_KEEPALIVE
            )
            conn = psycopg.connect(conninfo, autocommit=True)
            try:
                for channel in sorted(self.channels):
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            except BaseException:
                conn.close()
                raise
            if stop.is_set():  # the trio side was cancelled meanwhile: nobody will use it
                conn.close()
            return conn

        try:
            conn = await trio.to_thread.run_sync(
                connect, abandon_on_cancel=True, limiter=self._thread_slot
            )
        except psycopg.Error as exc:
            raise ClusterUnavailable(
                f"cluster database: cannot listen ({type(exc).__name__})"
            ) from exc
        finally:
            stop.set()
        self.connections += 1
        self.backend_pid = conn.info.backend_pid
        self.listening = True
        self._wake_all()  # anything sent while we were not listening is lost: re-read
        return conn

    async def _pump(self, conn: Connection) -> None:
        """Deliver the connection's notifications until it fails (raises) or we are cancelled."""
        stop = threading.Event()
        token = trio.lowlevel.current_trio_token()
        poll, ping = self._poll_seconds, self._ping_seconds

        def pump() -> None:
            try:
                last_ping = time.monotonic()
                while not stop.is_set():
                    for note in conn.notifies(timeout=poll):
                        if stop.is_set():
                            return
                        trio.from_thread.run_sync(
                            self._deliver, note.channel, note.payload, trio_token=token
                        )
                    if time.monotonic() - last_ping >= ping:
                        conn.execute("SELECT 1")  # notifications meanwhile wait in a backlog
                        last_ping = time.monotonic()
            except trio.RunFinishedError:
                return
            finally:
                conn.close()

        try:
            await trio.to_thread.run_sync(pump, abandon_on_cancel=True, limiter=self._thread_slot)
        finally:
            stop.set()  # cancelled: the abandoned thread closes the connection within `poll`
