"""Two walletd hosts in one process on one PostgreSQL, with fake wallet-rpc: the cluster's wiring.

Each host is a whole `App` with its own state and wallet directories and `[cluster]` host id; the
fake wallets are shared (the fake world), their files written into both hosts' wallet
directories on every store. The regtest tests (tests/regtest/test_cluster_regtest.py) run the
same behaviours with real processes, real wallet-rpc and separate disks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.fakes import call
from tests.harness import CLUSTER_TTL, shared_multisig, two_hosts
from tests.pgtest import advance_db_clock, cluster_of

pytestmark = pytest.mark.pg

TTL = CLUSTER_TTL


async def test_an_escrow_adopted_on_one_host_is_served_by_the_other(
    tmp_path: Path, db_url: str
) -> None:
    """An escrow registered on host a is read through host b: b forwards the balance read to a,
    whose session stays open there (b opens none), both answer the same, and b's event feed and
    /v1/cluster show what a did."""
    async with trio.open_nursery() as nursery:
        a, b, world = await two_hosts(nursery, tmp_path, db_url)
        s = await shared_multisig(world, "m1")
        status, body = await call(a, "POST", "/v1/escrows", s.adopt_body("e1"))
        assert status == 201, body
        world.credit(s.address, 5 * 10**11, unlocked=True)
        on_a = await call(a, "GET", "/v1/escrows/e1/balance?refresh=true")
        on_b = await call(b, "GET", "/v1/escrows/e1/balance?refresh=true")
        assert on_a[0] == on_b[0] == 200, (on_a, on_b)
        assert on_a[1]["balance"] == on_b[1]["balance"] == 5 * 10**11
        assert a.registry.is_open("e1")
        assert not b.registry.is_open("e1"), "the session moved to the host that was asked"
        status, cluster = await call(b, "GET", "/v1/cluster")
        assert status == 200, cluster
        assert [(x["escrow_id"], x["host_id"]) for x in cluster["leases"]] == [("e1", "a")]
        assert {h["host_id"] for h in cluster["hosts"]} == {"a", "b"}
        status, events = await call(b, "GET", "/v1/events?after=0")
        assert status == 200, events
        seqs = [e["seq"] for e in events["events"]]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        assert "escrow_created" in [e["type"] for e in events["events"]]
        nursery.cancel_scope.cancel()


async def test_a_long_poll_on_one_host_wakes_on_another_hosts_event(
    tmp_path: Path, db_url: str
) -> None:
    """GET /v1/events long-polling on host b returns the event host a writes while it waits."""
    async with trio.open_nursery() as nursery:
        a, b, _ = await two_hosts(nursery, tmp_path, db_url)
        newest = await b.events.last_seq()

        async def emit_on_a() -> None:
            await trio.sleep(0.5)  # b's poll is waiting by then
            await a.events.emit("daemon_switched", None, **{"from": "x", "to": "y"})

        nursery.start_soon(emit_on_a)
        with trio.fail_after(10):  # a hang, not a timing: the poll itself waits 30 s
            status, body = await call(b, "GET", f"/v1/events?after={newest}&timeout=30")
        assert status == 200
        assert [e["type"] for e in body["events"]] == ["daemon_switched"]
        nursery.cancel_scope.cancel()


async def test_a_host_that_loses_its_lease_stops_and_the_other_takes_over(
    tmp_path: Path, db_url: str
) -> None:
    """When host a's lease on an escrow expires (the database clock jumps past it, as if a had
    been paused), a kills the session's wallet-rpc processes, every write it tries about the
    escrow is refused, and host b serves the escrow from then on (a new epoch)."""
    async with trio.open_nursery() as nursery:
        a, b, world = await two_hosts(nursery, tmp_path, db_url)
        s = await shared_multisig(world, "m2")
        assert (await call(a, "POST", "/v1/escrows", s.adopt_body("e2")))[0] == 201
        epoch = cluster_of(a).node.ownership.tenure_of("e2")
        assert epoch is not None
        advance_db_clock(db_url, TTL * 2)
        with trio.fail_after(TTL * 3):
            while a.registry.is_open("e2"):  # noqa: ASYNC110 - the registry offers no wait for one
                await trio.sleep(0.05)
        assert cluster_of(a).node.ownership.tenure_of("e2") is None
        assert cluster_of(a).node.statistics().leases_lost == 1
        refused = cluster_of(a).node.statistics().fenced_writes
        with pytest.raises(Exception, match="lease"):
            await a.store.append_event("funded", "e2", {})
        assert cluster_of(a).node.statistics().fenced_writes == refused + 1
        status, body = await call(b, "GET", "/v1/escrows/e2/balance")
        assert status == 200, body
        assert b.registry.is_open("e2")
        tenure = cluster_of(b).node.ownership.tenure_of("e2")
        assert tenure is not None
        assert tenure.epoch > epoch.epoch
        nursery.cancel_scope.cancel()
