"""Failover between two in-process hosts on one PostgreSQL, with fake wallet-rpc (issue 19, 9).

A host that dies is not waited on: requests for its escrows are not forwarded to it once its
heartbeat is stale, and are served by a survivor as soon as its lease ends. A host that stops
gracefully (SIGTERM) stops claiming forwarded requests first, and hands its leases back as soon
as its sessions are stored and closed: a survivor serves its escrows at once, and no caller of
the survivor ever gets the stopping host's "walletd is shutting down". `GET /v1/cluster` calls a
host live for lease_ttl after its last heartbeat, not longer. The regtest tests measure the same
with real processes (tests/regtest/test_cluster_regtest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from tests.fakes import call
from tests.harness import CLUSTER_TTL, fake_host, run_host, shared_multisig
from tests.pgtest import advance_db_clock, cluster_of
from walletd.app import App
from walletd.testing.fake_chain import FakeWalletWorld

pytestmark = pytest.mark.pg

TTL = CLUSTER_TTL
HANG = 60.0  # only against a hang on a loaded machine: never a timing claim


async def _run_parts(app: App, *, task_status: trio.TaskStatus[None]) -> None:
    """The parts a host needs to serve (cluster, pool, registry, lifecycle), until cancelled."""
    async with trio.open_nursery() as nursery:
        await run_host(nursery, app)
        task_status.started()


async def _killable(nursery: trio.Nursery, app: App) -> tuple[trio.CancelScope, trio.Event]:
    """Run the host's parts in a scope of their own: cancelling it stops the host (the test's
    kill), the event says when it has stopped."""
    scope = trio.CancelScope()
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            with scope:
                await _run_parts(app, task_status=task_status)
        finally:
            done.set()

    await nursery.start(run)
    return scope, done


async def _adopt(app: App, world: FakeWalletWorld, escrow_id: str) -> None:
    s = await shared_multisig(world, f"m-{escrow_id}")
    status, body = await call(app, "POST", "/v1/escrows", s.adopt_body(escrow_id))
    assert status == 201, body
    world.credit(s.address, 5 * 10**11, unlocked=True)


def _sql(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:  # Any: SQL values
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query.encode(), args)
        return cur.fetchall() if cur.description else []


async def test_a_request_for_a_dead_hosts_escrow_is_not_forwarded_to_it(
    tmp_path: Path, db_url: str
) -> None:
    """Host a holds e1 and dies (kill -9: no lease handed back, its heartbeat older than
    lease_ttl while its lease runs on). A read of e1 through b is never forwarded to a (no
    forwarded request withdrawn unanswered, none addressed to a), and b serves it as soon as
    a's lease has expired, under a new epoch."""
    world = FakeWalletWorld()
    a = fake_host(tmp_path, world, db_url, "a")
    b = fake_host(tmp_path, world, db_url, "b")
    async with trio.open_nursery() as nursery:
        await nursery.start(_run_parts, b)
        a_scope, a_done = await _killable(nursery, a)
        await _adopt(a, world, "e1")
        held = cluster_of(a).node.ownership.tenure_of("e1")
        assert held is not None
        # "kill -9": a stops, and the rows stay as a left them (a real kill releases nothing):
        # the lease runs on for a while, the heartbeat is already past lease_ttl.
        a_scope.cancel()
        await a_done.wait()
        _sql(
            db_url,
            "UPDATE leases SET host_id = 'a', epoch = %s,"
            " expires_at = cluster_now() + make_interval(secs => %s) WHERE escrow_id = 'e1'",
            held.epoch,
            TTL / 2,
        )
        _sql(
            db_url,
            "UPDATE hosts SET last_seen = cluster_now() - make_interval(secs => %s)"
            " WHERE host_id = 'a'",
            TTL + 0.5,
        )
        with trio.fail_after(HANG):
            status, body = await call(b, "GET", "/v1/escrows/e1/balance?refresh=true")
        assert status == 200, body
        assert body["balance"] == 5 * 10**11
        assert cluster_of(b).node.forwarder.statistics().not_answered == 0, (
            "a forward to the dead host was waited on"
        )
        assert cluster_of(b).node.forwarder.statistics().answered == 0
        tenure = cluster_of(b).node.ownership.tenure_of("e1")
        assert tenure is not None
        assert tenure.epoch > held.epoch
        assert b.registry.is_open("e1")
        nursery.cancel_scope.cancel()


async def test_a_read_claimed_by_a_host_that_then_dies_is_run_again_on_the_survivor(
    tmp_path: Path, db_url: str
) -> None:
    """Host a holds e1 and claims a balance read forwarded by b, then dies before answering
    (kill -9 right after the claim). b does not wait for an answer that cannot come until its
    request's deadline: once a's lease has expired b runs the read itself and answers 200; the
    forwarded request is counted as one whose outcome is unknown."""
    world = FakeWalletWorld()
    a = fake_host(tmp_path, world, db_url, "a")
    b = fake_host(tmp_path, world, db_url, "b")
    claimed = trio.Event()

    async def claim_then_hang(call: Any) -> Any:  # Any: a ForwardedCall, never answered
        claimed.set()
        await trio.sleep_forever()

    cluster_of(a).forwarding.incoming = lambda api: claim_then_hang  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(_run_parts, b)
        a_scope, a_done = await _killable(nursery, a)
        await _adopt(a, world, "e1")
        held = cluster_of(a).node.ownership.tenure_of("e1")
        assert held is not None
        answer: list[tuple[int, Any]] = []

        async def read() -> None:
            answer.append(await call(b, "GET", "/v1/escrows/e1/balance?refresh=true"))

        nursery.start_soon(read)
        with trio.fail_after(HANG):
            await claimed.wait()
        # kill -9 of a, right after the claim: its rows stay as they were (lease, heartbeat).
        a_scope.cancel()
        await a_done.wait()
        _sql(
            db_url,
            "UPDATE leases SET host_id = 'a', epoch = %s,"
            " expires_at = cluster_now() + make_interval(secs => %s) WHERE escrow_id = 'e1'",
            held.epoch,
            TTL / 2,
        )
        _sql(db_url, "UPDATE hosts SET last_seen = cluster_now() WHERE host_id = 'a'")
        # Only against a hang: the request's own deadline is request_timeout (90 s).
        with trio.fail_after(HANG):
            while not answer:  # noqa: ASYNC110 - the read is a task of its own
                await trio.sleep(0.05)
        status, body = answer[0]
        assert status == 200, body
        assert body["balance"] == 5 * 10**11
        assert cluster_of(b).node.forwarder.statistics().unknown == 1
        assert b.registry.is_open("e1")
        nursery.cancel_scope.cancel()


async def test_a_graceful_stop_hands_the_lease_back_and_the_survivor_serves_at_once(
    tmp_path: Path, db_url: str
) -> None:
    """Host a (the whole daemon) holds e1 while a client reads it in a loop through b; a is
    stopped (SIGTERM) and its session takes a second to store. Every read through b is
    answered 200 (none gets a's 503 "walletd is shutting down"), a hands the lease back right
    after the session is stored and closed (before its wallet-rpc pool and cluster parts
    stop), and b serves e1 from then on, under a new epoch."""
    world = FakeWalletWorld()
    a = fake_host(tmp_path, world, db_url, "a")
    b = fake_host(tmp_path, world, db_url, "b")
    answers: list[tuple[int, str]] = []
    released_while: list[bool] = []
    stored = a.ownership.wallets_stored
    release = cluster_of(a).node.leases.release

    async def slow_store(escrow_id: str, files: Any) -> None:  # Any: as wallets_stored's
        if a._stop.is_set():
            await trio.sleep(1.0)  # a real session's files take a while to upload
        await stored(escrow_id, files)

    pool_stopped = trio.Event()
    run_pool = a.pool.run

    async def recorded_pool(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await run_pool(task_status=task_status)
        finally:
            pool_stopped.set()

    async def recorded_release(tenure: Any) -> bool:  # Any: a Tenure
        released_while.append(not pool_stopped.is_set())
        return await release(tenure)

    a.pool.run = recorded_pool  # type: ignore[method-assign,assignment]

    a.ownership.wallets_stored = slow_store  # type: ignore[method-assign]
    cluster_of(a).node.leases.release = recorded_release  # type: ignore[method-assign]

    async with trio.open_nursery() as nursery:
        await nursery.start(_run_parts, b)
        await nursery.start(a.run)
        await _adopt(a, world, "e1")
        status, _ = await call(a, "GET", "/v1/escrows/e1/balance")
        assert status == 200
        reading = True

        async def read_through_b() -> None:
            while reading:
                status, body = await call(b, "GET", "/v1/escrows/e1/balance?refresh=true")
                answers.append((status, "" if status == 200 else str(body)))
                await trio.sleep(0.02)

        nursery.start_soon(read_through_b)
        with trio.fail_after(HANG):
            while not answers:  # noqa: ASYNC110 - the stream offers no event
                await trio.sleep(0.02)
            a.request_stop()
            await a.stopped.wait()
            count = len(answers)
            while len(answers) < count + 3:  # noqa: ASYNC110
                await trio.sleep(0.02)
        reading = False
        failed = [x for x in answers if x[0] != 200]
        assert failed == [], failed
        assert released_while == [True], "the lease was not handed back before the end"
        assert b.registry.is_open("e1")
        tenure = cluster_of(b).node.ownership.tenure_of("e1")
        assert tenure is not None
        status, cluster = await call(b, "GET", "/v1/cluster")
        assert status == 200, cluster
        assert [h["host_id"] for h in cluster["hosts"]] == ["b"], "a stopped: it left the list"
        assert [(x["escrow_id"], x["host_id"]) for x in cluster["leases"]] == [("e1", "b")]
        nursery.cancel_scope.cancel()


async def test_a_killed_host_is_not_live_after_lease_ttl(tmp_path: Path, db_url: str) -> None:
    """`GET /v1/cluster` lists a host live while its last heartbeat is younger than
    lease_ttl: a host that stops beating (killed) is listed not live once lease_ttl has
    passed (database clock), while the host still beating stays live."""
    world = FakeWalletWorld()
    a = fake_host(tmp_path, world, db_url, "a")
    b = fake_host(tmp_path, world, db_url, "b")
    async with trio.open_nursery() as nursery:
        await nursery.start(_run_parts, b)
        a_scope, _ = await _killable(nursery, a)
        status, cluster = await call(b, "GET", "/v1/cluster")
        assert status == 200, cluster
        assert [(h["host_id"], h["live"]) for h in cluster["hosts"]] == [("a", True), ("b", True)]
        a_scope.cancel()  # a beats no more
        advance_db_clock(db_url, TTL + 0.1)  # a's last beat is older than lease_ttl now
        with trio.fail_after(HANG):
            while True:  # b beats again within lease_ttl / 3
                status, cluster = await call(b, "GET", "/v1/cluster")
                live = {h["host_id"]: h["live"] for h in cluster["hosts"]}
                if live["b"]:
                    break
                await trio.sleep(0.1)
        assert live == {"a": False, "b": True}, cluster
        nursery.cancel_scope.cancel()
