"""Two walletd hosts in one process on one PostgreSQL, with fake wallet-rpc: the cluster's wiring.

Each host is a whole `App` with its own state and wallet directories and `[cluster]` host id; the
fake wallets are shared (the fake world), their files written into both hosts' wallet
directories on every store. The regtest tests (tests/regtest/test_cluster_regtest.py) run the
same behaviours with real processes, real wallet-rpc and separate disks.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import attrs
import pytest
import trio

from tests.fakes import call, fake_config, make_fake_multisig, start
from tests.pgtest import advance_db_clock, cluster_of, start_cluster
from walletd.app import App, prepare_dirs
from walletd.config import ClusterConfig
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool

pytestmark = pytest.mark.pg

TTL = 3.0


def _host(root: Path, world: FakeWalletWorld, url: str, host_id: str) -> App:
    """Host `host_id`, with the cluster's vault key (every host has the same key file)."""
    config = attrs.evolve(
        fake_config(root / host_id),
        cluster=ClusterConfig(database_url=url, host_id=host_id, lease_ttl=TTL),
    )
    prepare_dirs(config)
    key = root / "walletd.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(32))
        key.chmod(0o600)
    shutil.copy2(key, config.daemon.state_dir / "walletd.key")
    world.file_dirs.append(config.monero.wallet_dir)
    for name in world.wallets:
        world.write_files(name)
    return App(config, pool=FakePool(world, open_delay=0.1, create_delay=0.1))


async def _run(nursery: trio.Nursery, app: App) -> None:
    await start_cluster(nursery, app)
    await start(nursery, app)


async def _two_hosts(
    nursery: trio.Nursery, tmp_path: Path, url: str
) -> tuple[App, App, FakeWalletWorld]:
    world = FakeWalletWorld()
    a = _host(tmp_path, world, url, "a")
    b = _host(tmp_path, world, url, "b")
    for app in (a, b):
        await _run(nursery, app)
    return a, b, world


async def test_an_escrow_adopted_on_one_host_is_served_by_the_other(
    tmp_path: Path, db_url: str
) -> None:
    """An escrow registered on host a is read through host b: b forwards the balance read to a,
    whose session stays open there (b opens none), both answer the same, and b's event feed and
    /v1/cluster show what a did."""
    async with trio.open_nursery() as nursery:
        a, b, world = await _two_hosts(nursery, tmp_path, db_url)
        s = await make_fake_multisig(world, "m1")
        for name in s.files.values():
            world.write_files(name)
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
        a, b, _ = await _two_hosts(nursery, tmp_path, db_url)
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
        a, b, world = await _two_hosts(nursery, tmp_path, db_url)
        s = await make_fake_multisig(world, "m2")
        for name in s.files.values():
            world.write_files(name)
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
