"""Requests forwarded through PostgreSQL to the host that owns the escrow's session.

Hosts "a" and "b" (and "c", which never serves) are each a Database pool, a Listener, a Forwarder
and, when serving, a ForwardServer, all on one fresh database, in one process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import attrs
import pytest
import structlog
import trio

from walletd.cluster.db import Connection, Database
from walletd.cluster.forwarding import (
    ForwardedCall,
    ForwardedReply,
    Forwarder,
    ForwardHandler,
    ForwardServer,
    forwarding_channels,
)
from walletd.cluster.notifications import Listener
from walletd.errors import ClusterUnavailable, ForwardOutcomeUnknown, OwnerDidNotAnswer

pytestmark = pytest.mark.pg

SECRET = b'{"password":"hunter2-secret"}'


@attrs.define
class Host:
    host_id: str
    listener: Listener
    forwarder: Forwarder
    server: ForwardServer | None


@asynccontextmanager
async def host(
    db: Database,
    db_url: str,
    host_id: str,
    handler: ForwardHandler | None = None,
    *,
    max_concurrent: int = 16,
    scan_seconds: float = 3.0,
    keep_seconds: float = 60.0,
    poll_seconds: float = 0.5,
) -> AsyncIterator[Host]:
    """A host's forwarding machinery, running until the block ends; it serves if `handler`."""
    listener = Listener(db_url, forwarding_channels(host_id), poll_seconds=0.1)
    forwarder = Forwarder(db, listener, host_id, poll_seconds=poll_seconds)
    server = None
    if handler is not None:
        server = ForwardServer(
            db,
            listener,
            host_id,
            handler,
            max_concurrent=max_concurrent,
            scan_seconds=scan_seconds,
            keep_seconds=keep_seconds,
        )
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        await nursery.start(forwarder.run)
        if server is not None:
            await nursery.start(server.run)
        yield Host(host_id, listener, forwarder, server)
        nursery.cancel_scope.cancel()


def call(path: str = "/v1/escrows/e1", body: bytes = b"", method: str = "GET") -> ForwardedCall:
    return ForwardedCall(
        method=method,
        path=path,
        segments=tuple(path.split("/")[1:]),
        query={"wait": "0"},
        body=body,
        escrow_id="e1",
    )


async def echo(c: ForwardedCall) -> ForwardedReply:
    """A handler that says who it is and what it got."""
    seen = {"method": c.method, "segments": list(c.segments), "query": dict(c.query)}
    seen["body"] = c.body.decode()
    return ForwardedReply(201, json.dumps(seen).encode(), headers=(("x-served-by", "b"),))


async def count_rows(db: Database) -> int:
    def job(conn: Connection) -> int:
        row = conn.execute("SELECT count(*) FROM forwarded_requests").fetchone()
        assert row is not None
        return int(row[0])

    return await db.run(job)


async def test_forwarded_request_is_answered_by_the_owner(db: Database, db_url: str) -> None:
    """A request forwarded from a to b is run by b's handler, with its method, path segments,
    query and body intact, and a gets b's reply (status, body, content type, headers); the row
    is deleted once the reply is read."""
    async with host(db, db_url, "a") as a, host(db, db_url, "b", echo) as b:
        segments_call = ForwardedCall(
            "POST", "/v1/escrows/e1/x", ("v1", "escrows", "e1/x"), {"wait": "0"}, SECRET, "e1/x"
        )
        with trio.fail_after(5):
            reply = await a.forwarder.forward("b", segments_call, timeout=5)
        assert reply.status == 201
        assert reply.content_type == "application/json"
        assert reply.headers == (("x-served-by", "b"),)
        assert json.loads(reply.body) == {
            "method": "POST",
            "segments": ["v1", "escrows", "e1/x"],  # not re-split: "e1/x" stays one segment
            "query": {"wait": "0"},
            "body": SECRET.decode(),
        }
        assert await count_rows(db) == 0
        assert b.server is not None
        assert b.server.statistics().answered == 1


async def test_replies_come_back_fast_on_notifications(db: Database, db_url: str) -> None:
    """The origin is woken by the owner's notification, not by its slow poll: round trips take
    far less than the poll interval."""
    async with host(db, db_url, "a", poll_seconds=60) as a, host(db, db_url, "b", echo):
        with trio.fail_after(10):  # one missed wake-up would take 60 s
            for _ in range(5):
                await a.forwarder.forward("b", call(), timeout=30)


async def test_concurrent_requests_each_get_their_own_reply(db: Database, db_url: str) -> None:
    """Many requests forwarded at once, from two hosts, are all answered with their own reply;
    the owner runs several at a time but never more than its limit."""
    running = 0
    most = 0

    async def slow_echo(c: ForwardedCall) -> ForwardedReply:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(0.05)
        running -= 1
        return ForwardedReply(200, c.body)

    replies: dict[bytes, bytes] = {}

    async def one(forwarder: Forwarder, n: int) -> None:
        body = f"{forwarder.host_id}-{n}".encode()
        replies[body] = (await forwarder.forward("b", call(body=body), timeout=10)).body

    async with (
        host(db, db_url, "a") as a,
        host(db, db_url, "c") as c,
        host(db, db_url, "b", slow_echo, max_concurrent=4),
    ):
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for n in range(15):
                    nursery.start_soon(one, a.forwarder, n)
                    nursery.start_soon(one, c.forwarder, n)
    assert len(replies) == 30
    assert all(body == reply for body, reply in replies.items())
    assert 1 < most <= 4
    assert await count_rows(db) == 0


async def test_unanswered_request_times_out_and_never_runs(db: Database, db_url: str) -> None:
    """A request to a host that does not answer fails after the timeout with a clear
    `unavailable` error naming the host and saying it was not run; its row is gone, and when
    that host starts serving later it does not run it."""
    ran: list[ForwardedCall] = []

    async def record(c: ForwardedCall) -> ForwardedReply:
        ran.append(c)
        return ForwardedReply(200, b"{}")

    async with host(db, db_url, "a") as a:
        started = trio.current_time()
        with pytest.raises(OwnerDidNotAnswer, match="owner host b did not answer in time"):
            await a.forwarder.forward("b", call(body=SECRET), timeout=0.5)
        assert 0.5 <= trio.current_time() - started < 4
        assert await count_rows(db) == 0
        assert a.forwarder.statistics().not_answered == 1
        async with host(db, db_url, "b", record, scan_seconds=0.1):
            await trio.sleep(0.5)
        assert ran == []


async def test_an_owner_that_does_not_claim_in_time_is_given_up_early(
    db: Database, db_url: str
) -> None:
    """With a claim timeout, a request nobody claims (its owner died) is withdrawn unrun after
    the claim timeout, not the whole request timeout; a live owner's slow answer still comes
    back after the claim timeout, since it claimed the request at once."""
    finish = trio.Event()

    async def slow(c: ForwardedCall) -> ForwardedReply:
        await finish.wait()
        return ForwardedReply(200, b"{}")

    async with host(db, db_url, "a") as a:
        with trio.fail_after(20):  # the request's own timeout is 60 s
            with pytest.raises(OwnerDidNotAnswer):
                await a.forwarder.forward("b", call(), timeout=60, claim_timeout=0.5)
        assert await count_rows(db) == 0
        async with host(db, db_url, "b", slow), trio.open_nursery() as nursery:
            nursery.start_soon(_set_later, finish, 1.5)
            reply = await a.forwarder.forward("b", call(), timeout=30, claim_timeout=0.5)
            assert reply.status == 200


async def _set_later(event: trio.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    event.set()


async def test_expired_rows_are_never_claimed_and_are_purged(db: Database, db_url: str) -> None:
    """A row its origin could not withdraw (the origin crashed, or lost the database) is never
    run once its deadline passed, and the periodic purge deletes it."""
    ran: list[ForwardedCall] = []

    async def record(c: ForwardedCall) -> ForwardedReply:
        ran.append(c)
        return ForwardedReply(200, b"{}")

    origin = Forwarder(db, Listener(db_url, forwarding_channels("a")), "a")
    await db.run(origin._insert_job("b", call(body=SECRET), 0.2))  # as a crashed origin left it
    await trio.sleep(0.3)
    async with host(db, db_url, "b", record, scan_seconds=0.1, keep_seconds=0.2) as b:
        await trio.sleep(0.3)
        assert ran == []
        assert b.server is not None
        assert await b.server.purge() == 1
    assert await count_rows(db) == 0


async def test_claimed_but_slow_request_reports_unknown_outcome(db: Database, db_url: str) -> None:
    """When the owner took the request but has not answered by the timeout, the origin says the
    outcome is unknown (504 `timeout` class), deletes the row, and the owner's late reply is
    dropped. The request's body is erased from the row as soon as it is claimed."""
    claimed = trio.Event()
    finish = trio.Event()

    async def slow(c: ForwardedCall) -> ForwardedReply:
        claimed.set()
        await finish.wait()
        return ForwardedReply(200, b"{}")

    async with host(db, db_url, "a") as a, host(db, db_url, "b", slow) as b:
        outcome: list[BaseException] = []

        async def forward() -> None:
            try:
                await a.forwarder.forward("b", call(body=SECRET), timeout=1.0)
            except ForwardOutcomeUnknown as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            await claimed.wait()

            def bodies(conn: Connection) -> list[object]:
                return [r[0] for r in conn.execute("SELECT body FROM forwarded_requests")]

            assert await db.run(bodies) == [None]
        [error] = outcome
        assert "owner host b took the request" in str(error)
        assert "outcome is unknown" in str(error)
        assert await count_rows(db) == 0
        finish.set()
        assert b.server is not None
        with trio.fail_after(5):
            while True:  # the late reply's write finds no row: counted, nothing else to see
                if b.server.replies_dropped:
                    break
                await trio.sleep(0.05)
        assert b.server.statistics().answered == 0


class FailingForwarder(Forwarder):
    """A Forwarder whose reads of the reply fail once `failing` is set (the database went away
    while it waited)."""

    failing = False

    def _take_reply_job(
        self, row_id: int
    ) -> Callable[[Connection], ForwardedReply | Literal["claimed", "unclaimed"]]:
        job = super()._take_reply_job(row_id)

        def failing_job(conn: Connection) -> ForwardedReply | Literal["claimed", "unclaimed"]:
            if self.failing:
                raise ClusterUnavailable("cluster database failed (OperationalError)")
            return job(conn)

        return failing_job


async def test_database_failure_while_waiting_says_whether_it_ran(
    db: Database, db_url: str
) -> None:
    """If the database fails while the origin waits, a request not yet claimed is withdrawn and
    the failure is reported as `unavailable` (retry is safe); a claimed one is reported with an
    unknown outcome."""
    claimed = trio.Event()

    async def hang(c: ForwardedCall) -> ForwardedReply:
        claimed.set()
        await trio.sleep_forever()

    listener = Listener(db_url, forwarding_channels("a"), poll_seconds=0.1)
    origin = FailingForwarder(db, listener, "a", poll_seconds=0.05)
    origin.failing = True
    with pytest.raises(ClusterUnavailable):
        await origin.forward("b", call(body=SECRET), timeout=5)
    assert await count_rows(db) == 0
    origin.failing = False
    async with host(db, db_url, "b", hang), trio.open_nursery() as nursery:

        async def fail_once_claimed() -> None:
            await claimed.wait()
            origin.failing = True

        nursery.start_soon(fail_once_claimed)
        with pytest.raises(ForwardOutcomeUnknown, match="outcome is unknown"):
            await origin.forward("b", call(body=SECRET), timeout=5)
    assert await count_rows(db) == 0


async def test_cancelled_caller_withdraws_its_request(db: Database, db_url: str) -> None:
    """When the client's request is cancelled while forwarded (the client went away), the row is
    withdrawn at once and never runs."""
    async with host(db, db_url, "a") as a:
        with trio.move_on_after(0.2):
            await a.forwarder.forward("b", call(body=SECRET), timeout=30)
        assert await count_rows(db) == 0


async def test_two_servers_for_one_host_run_each_request_once(db: Database, db_url: str) -> None:
    """Even with two ForwardServers for host b (started twice by mistake, or during a restart),
    every forwarded request runs exactly once."""
    runs: dict[bytes, int] = {}

    async def count(c: ForwardedCall) -> ForwardedReply:
        runs[c.body] = runs.get(c.body, 0) + 1
        await trio.sleep(0.01)
        return ForwardedReply(200, c.body)

    async def one(forwarder: Forwarder, n: int) -> None:
        body = str(n).encode()
        assert (await forwarder.forward("b", call(body=body), timeout=10)).body == body

    async with (
        host(db, db_url, "a") as a,
        host(db, db_url, "b", count, scan_seconds=0.05) as b1,
        host(db, db_url, "b", count, scan_seconds=0.05) as b2,
    ):
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for n in range(40):
                    nursery.start_soon(one, a.forwarder, n)
        assert b1.server is not None
        assert b2.server is not None
        assert b1.server.statistics().answered + b2.server.statistics().answered == 40
    assert runs == {str(n).encode(): 1 for n in range(40)}


async def test_rows_missed_by_notifications_are_served_by_the_scan(
    db: Database, db_url: str
) -> None:
    """A request forwarded while its owner was not listening (its notification lost) is found
    and answered when the owner starts serving."""
    async with host(db, db_url, "a") as a:
        replies: list[ForwardedReply] = []
        answered = trio.Event()

        async def forward() -> None:
            replies.append(await a.forwarder.forward("b", call(), timeout=10))
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            await trio.sleep(0.3)  # sent, notified, nobody listening
            async with host(db, db_url, "b", echo, scan_seconds=60):
                with trio.fail_after(5):
                    await answered.wait()
        assert replies[0].status == 201


async def test_failing_handler_answers_internal_and_logs_no_body(db: Database, db_url: str) -> None:
    """A handler that raises is answered 500 `internal`, and neither the origin's nor the owner's
    log holds the request's body (it may carry a wallet password)."""

    async def broken(c: ForwardedCall) -> ForwardedReply:
        raise RuntimeError("bug")

    with structlog.testing.capture_logs() as logs:
        async with host(db, db_url, "a") as a, host(db, db_url, "b", broken):
            reply = await a.forwarder.forward("b", call(body=SECRET), timeout=5)
            with pytest.raises(OwnerDidNotAnswer):
                await a.forwarder.forward("c", call(body=SECRET), timeout=0.2)
    assert reply.status == 500
    assert json.loads(reply.body)["error"]["code"] == "internal"
    assert any(entry["event"] == "forwarded request failed" for entry in logs)
    assert "hunter2" not in repr(logs)


async def test_forwarding_to_itself_is_refused(db: Database, db_url: str) -> None:
    """A host never forwards to itself (it would wait on its own server for nothing)."""
    async with host(db, db_url, "a") as a:
        with pytest.raises(ValueError, match="itself"):
            await a.forwarder.forward("a", call(), timeout=1)
