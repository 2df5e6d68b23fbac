"""LISTEN/NOTIFY wake-ups from the cluster database: delivery, reconnection, prompt stop."""

from __future__ import annotations

import psycopg
import pytest
import trio

from walletd.cluster.notifications import EVENTS_CHANNEL, Listener, notify
from walletd.errors import ClusterUnavailable

pytestmark = pytest.mark.pg

OTHER = "walletd_test_other"


def send(url: str, channel: str, payload: str, *, commit: bool = True) -> None:
    """`notify` from another connection (another host), in a transaction that commits or not."""
    with psycopg.connect(url) as conn:
        notify(conn, channel, payload)
        if commit:
            conn.commit()
        else:
            conn.rollback()


def backend_alive(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        found = row.fetchone()
        return bool(found and found[0])


async def test_plain_notify_wakes_the_events_subscriber(db_url: str) -> None:
    """A notification on the events channel from any connection (another host) wakes the
    subscriber with its payload, in order, once its transaction commits; one on another channel,
    or in a transaction rolled back, does not."""
    listener = Listener(db_url, [EVENTS_CHANNEL, OTHER], poll_seconds=0.1)
    async with trio.open_nursery() as nursery:
        with listener.subscribe(EVENTS_CHANNEL) as events:
            await nursery.start(listener.run)
            with trio.fail_after(5):
                first = await events.wait()
            assert first.missed  # on connecting: "re-read, anything before may be lost"
            await trio.to_thread.run_sync(send, db_url, OTHER, "x")
            await trio.to_thread.run_sync(lambda: send(db_url, EVENTS_CHANNEL, "0", commit=False))
            await trio.to_thread.run_sync(send, db_url, EVENTS_CHANNEL, "17")
            await trio.to_thread.run_sync(send, db_url, EVENTS_CHANNEL, "18")
            with trio.fail_after(5):
                payloads: list[str] = []
                while len(payloads) < 2:
                    wakeup = await events.wait()
                    assert not wakeup.missed
                    payloads += wakeup.payloads
            assert payloads == ["17", "18"]
        nursery.cancel_scope.cancel()


async def test_listener_reconnects_after_its_backend_is_terminated(db_url: str) -> None:
    """When the server ends the listener's connection, the listener reconnects on its own,
    wakes every subscriber with `missed` (notifications meanwhile are lost), and delivers the
    notifications sent after that."""
    listener = Listener(db_url, [EVENTS_CHANNEL, OTHER], poll_seconds=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        with listener.subscribe(EVENTS_CHANNEL) as events, listener.subscribe(OTHER) as other:
            pid = listener.backend_pid
            assert pid is not None

            def terminate() -> None:
                with psycopg.connect(db_url, autocommit=True) as conn:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

            await trio.to_thread.run_sync(terminate)
            with trio.fail_after(10):
                assert (await events.wait()).missed
                assert (await other.wait()).missed
            assert listener.connections == 2
            assert listener.backend_pid not in (None, pid)
            await trio.to_thread.run_sync(send, db_url, EVENTS_CHANNEL, "after")
            with trio.fail_after(5):
                assert (await events.wait()).payloads == ("after",)
        nursery.cancel_scope.cancel()


async def test_cancel_stops_the_listener_promptly(db_url: str) -> None:
    """Cancelling `run` returns at once, and the listener's database connection is closed soon
    after (within its poll interval), so a stopping host leaves no backend behind."""
    listener = Listener(db_url, [EVENTS_CHANNEL], poll_seconds=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        pid = listener.backend_pid
        assert pid is not None
        await trio.sleep(0.1)
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - cancelled_at < 0.1
    with trio.fail_after(5):
        while True:  # polling the server: nothing else can tell us
            if not await trio.to_thread.run_sync(backend_alive, db_url, pid):
                break
            await trio.sleep(0.05)


async def test_unreachable_database_fails_the_start() -> None:
    """A listener that cannot connect at start fails with ClusterUnavailable (not a hang, and
    without the URL in the message)."""
    listener = Listener("postgresql://walletd:secret@127.0.0.1:1/x", [EVENTS_CHANNEL])
    with pytest.raises(ClusterUnavailable) as caught:
        await listener.run()
    assert "secret" not in str(caught.value)


def test_subscribe_refuses_unknown_channels() -> None:
    """Channels are fixed when the listener is made: subscribing to another is a bug, said so."""
    listener = Listener("postgresql://unused@127.0.0.1:1/x", [EVENTS_CHANNEL])
    with pytest.raises(ValueError, match="not a channel"):
        listener.subscribe("nope")
