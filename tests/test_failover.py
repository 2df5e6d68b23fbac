"""Failover between several monerod (`monero.daemon_addresses`), on fake daemons and wallet-rpc.

What the health checks decide (a dead, hung or stalled daemon is left for the next in order, the
first is taken back once healthy and caught up), and what a switch does to walletd: sessions get
new wallet-rpc processes started against the new daemon (never `set_daemon`), `daemon_switched` is
in the events, `/v1/health` names the daemon in use, and a payout waits for a daemon that has
reached the height where its escrow was seen ready.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from tests.fakes import call, fake_config, start
from tests.harness import AMOUNT, ready_escrow, run_monitor
from walletd.app import App, prepare_dirs
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_monerod import FakeMonerod
from walletd.testing.fake_pool import FakePool
from walletd.wallets.failover import DaemonFailover

A, B = "127.0.0.1:18081", "127.0.0.1:28081"


def _failover(world: FakeWalletWorld) -> tuple[DaemonFailover, list[tuple[str, str]]]:
    switches: list[tuple[str, str]] = []

    async def on_switch(old: str, new: str) -> None:
        await trio.lowlevel.checkpoint()
        switches.append((old, new))

    daemons = DaemonFailover(
        [(A, FakeMonerod(world, A)), (B, FakeMonerod(world, B))],
        on_switch=on_switch,
        interval=1.0,
        timeout=2.0,
        failures=2,
        recover_checks=3,
        stall_after=60.0,
    )
    return daemons, switches


def _fake(daemons: DaemonFailover, address: str) -> FakeMonerod:
    (view,) = [v for v in daemons.views if v.address == address]
    assert isinstance(view.chain, FakeMonerod)
    return view.chain


async def _checks(daemons: DaemonFailover, n: int) -> None:
    for _ in range(n):
        await daemons.check()
        await trio.sleep(daemons.interval)


async def test_a_dead_daemon_is_left_for_the_next_and_taken_back_when_healthy(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A stopped first daemon: walletd moves to the second (and asks it for heights); once the
    first answers again for a few checks, walletd moves back to it."""
    world = FakeWalletWorld()
    daemons, switches = _failover(world)
    await _checks(daemons, 3)
    assert (daemons.current, switches) == (A, [])

    _fake(daemons, A).down = True
    await _checks(daemons, 2)
    assert (daemons.current, switches) == (B, [(A, B)])
    asked = _fake(daemons, B).calls
    world.mine(1)
    assert await daemons.height() == world.height
    assert _fake(daemons, B).calls == asked + 1

    _fake(daemons, A).down = False
    await _checks(daemons, 2)
    assert daemons.current == B  # one good answer is not yet healthy
    await _checks(daemons, 2)
    assert (daemons.current, switches) == (A, [(A, B), (B, A)])


async def test_a_hung_daemon_counts_as_failed(autojump_clock: trio.abc.Clock) -> None:
    """A daemon that accepts and never answers (stopped with SIGSTOP, wedged) is left too."""
    world = FakeWalletWorld()
    daemons, switches = _failover(world)
    await _checks(daemons, 1)
    _fake(daemons, A).hung = True
    await _checks(daemons, 2)
    assert (daemons.current, switches) == (B, [(A, B)])


async def test_a_daemon_stuck_behind_another_is_left(autojump_clock: trio.abc.Clock) -> None:
    """A daemon that answers but whose height stands still while the other's grows is stuck:
    left once it has not moved for stall_after; a daemon a block behind for a moment is not."""
    world = FakeWalletWorld()
    daemons, switches = _failover(world)
    await _checks(daemons, 1)
    _fake(daemons, A).stuck_at = world.height
    world.mine(1)
    await _checks(daemons, 30)
    assert (daemons.current, switches) == (A, [])
    await _checks(daemons, 40)
    assert (daemons.current, switches) == (B, [(A, B)])


async def test_no_switch_when_no_other_daemon_answers(autojump_clock: trio.abc.Clock) -> None:
    """Every daemon down: walletd keeps the one in use (and keeps checking) instead of moving
    its wallets to a daemon that does not answer either."""
    world = FakeWalletWorld()
    daemons, switches = _failover(world)
    await _checks(daemons, 1)
    _fake(daemons, A).down = True
    _fake(daemons, B).down = True
    await _checks(daemons, 10)
    assert (daemons.current, switches) == (A, [])
    _fake(daemons, B).down = False
    await _checks(daemons, 2)
    assert (daemons.current, switches) == (B, [(A, B)])


async def test_no_move_back_to_a_daemon_still_behind(autojump_clock: trio.abc.Clock) -> None:
    """The first daemon answers again but has not caught up with the one in use: walletd stays
    until it has (its chain would look like blocks went missing)."""
    world = FakeWalletWorld()
    daemons, switches = _failover(world)
    await _checks(daemons, 1)
    _fake(daemons, A).down = True
    await _checks(daemons, 2)
    assert daemons.current == B
    _fake(daemons, A).down = False
    _fake(daemons, A).lag = 3
    await _checks(daemons, 10)
    assert daemons.current == B
    _fake(daemons, A).lag = 0
    await _checks(daemons, 3)
    assert (daemons.current, switches) == (A, [(A, B), (B, A)])


# ---- what a switch does to walletd ---------------------------------------------------------------


async def _failover_app(
    nursery: trio.Nursery, tmp_path: Path, world: FakeWalletWorld, open_delay: float = 1.5
) -> tuple[App, dict[str, FakeMonerod]]:
    config = fake_config(tmp_path)
    config = attrs.evolve(config, monero=attrs.evolve(config.monero, daemon_addresses=(A, B)))
    prepare_dirs(config)
    fakes = {A: FakeMonerod(world, A), B: FakeMonerod(world, B)}
    pool = FakePool(world, open_delay=open_delay)
    app = App(config, pool=pool, connect=fakes.__getitem__)
    assert app.daemons is not None
    app.daemons.interval = 1.0
    pool.set_daemon_address(A)  # what the app's real pool gets from its settings
    await start(nursery, app)
    await nursery.start(app.daemons.run)
    return app, fakes


async def _event(app: App, type_: str) -> dict[str, object]:
    with trio.fail_after(120):
        while True:
            _, body = await call(app, "GET", "/v1/events?after=0")
            found = [e for e in body["events"] if e["type"] == type_]
            if found:
                event: dict[str, object] = found[-1]
                return event
            await trio.sleep(0.5)


async def test_switch_restarts_sessions_against_the_new_daemon_without_set_daemon(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The daemon in use stops: `daemon_switched` names both daemons, /v1/health names the new
    one, the open session's wallets are reopened in processes started against it, balance calls
    answer, and no process was ever told `set_daemon`."""
    world = FakeWalletWorld()
    async with trio.open_nursery() as nursery:
        app, fakes = await _failover_app(nursery, tmp_path, world)
        status, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "f1", "amount": AMOUNT})
        assert status == 201, esc
        status, health = await call(app, "GET", "/v1/health")
        assert (status, health["daemon"]) == (200, A)
        pool = app.pool
        assert isinstance(pool, FakePool)
        before = {p.pid for p in pool.in_use.values()}
        assert {p.daemon_address for p in pool.in_use.values()} == {A}

        fakes[A].down = True
        event = await _event(app, "daemon_switched")
        assert (event["from"], event["to"]) == (A, B)
        status, health = await call(app, "GET", "/v1/health")
        assert (status, health["daemon"]) == (200, B)

        status, balance = await call(app, "GET", "/v1/escrows/f1/balance")
        assert status == 200, balance
        assert before.isdisjoint(pool.in_use)  # new processes, not the old ones re-pointed
        assert {p.daemon_address for p in pool.in_use.values()} == {B}
        assert world.call_count("set_daemon") == 0

        fakes[A].down = False
        event = await _event_after(app, "daemon_switched", event)
        assert (event["from"], event["to"]) == (B, A)
        status, balance = await call(app, "GET", "/v1/escrows/f1/balance")
        assert status == 200, balance
        assert {p.daemon_address for p in pool.in_use.values()} == {A}
        assert world.call_count("set_daemon") == 0
        nursery.cancel_scope.cancel()


async def _event_after(app: App, type_: str, seen: dict[str, object]) -> dict[str, object]:
    with trio.fail_after(120):
        while True:
            _, body = await call(app, "GET", f"/v1/events?after={seen['seq']}")
            found = [e for e in body["events"] if e["type"] == type_]
            if found:
                event: dict[str, object] = found[0]
                return event
            await trio.sleep(0.5)


async def test_a_session_opening_during_a_switch_is_reopened_on_the_new_daemon(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A session still opening its wallets (in processes started against the old daemon) when
    the switch comes is closed as soon as it is open: the call waiting for it is answered by a
    session whose processes use the new daemon."""
    world = FakeWalletWorld()
    async with trio.open_nursery() as nursery:
        app, fakes = await _failover_app(nursery, tmp_path, world, open_delay=20.0)
        status, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "f3", "amount": AMOUNT})
        assert status == 201, esc
        await app.registry.close("f3")
        answers: list[int] = []
        answered = trio.Event()

        async def balance() -> None:
            answers.append((await call(app, "GET", "/v1/escrows/f3/balance"))[0])
            answered.set()

        nursery.start_soon(balance)
        await trio.sleep(1)
        fakes[A].down = True
        await _event(app, "daemon_switched")
        assert not app.registry.is_open("f3")  # still opening when the switch came
        with trio.fail_after(120):
            await answered.wait()
        assert answers == [200]
        pool = app.pool
        assert isinstance(pool, FakePool)
        assert {p.daemon_address for p in pool.in_use.values()} == {B}
        nursery.cancel_scope.cancel()


async def test_payout_waits_for_a_daemon_at_the_ready_height(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The escrow was seen ready at height H; the daemon in use is now behind H (a switch to a
    lagging daemon): a release answers 503 and nothing is signed or sent. Once the daemon has
    caught up, the release pays once."""
    world = FakeWalletWorld()
    async with trio.open_nursery() as nursery:
        app, fakes = await _failover_app(nursery, tmp_path, world)
        await run_monitor(nursery, app)
        await ready_escrow(app, world, "f2", confirmations=10)

        fakes[B].lag = 5
        fakes[A].down = True
        await _event(app, "daemon_switched")
        release = {"address": world.add_wallet("vendor-payout", "x").address}
        status, body = await call(app, "POST", "/v1/escrows/f2/release", release)
        assert status == 503, body
        assert "behind" in body["error"]["message"]
        assert world.call_count("transfer") == 0
        assert world.call_count("submit_multisig") == 0

        fakes[B].lag = 0
        status, body = await call(app, "POST", "/v1/escrows/f2/release", release)
        assert status == 202, body
        assert world.call_count("submit_multisig") == 1
        nursery.cancel_scope.cancel()


async def test_a_payout_interrupted_by_a_switch_is_sent_once_from_its_signed_blob(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The signed payout could not be submitted (the daemon went away) and the daemon switches:
    the repeated release submits the recorded blob through the new daemon's processes, and the
    vendor is paid by exactly one transaction, the one signed before the switch."""
    world = FakeWalletWorld()
    async with trio.open_nursery() as nursery:
        app, fakes = await _failover_app(nursery, tmp_path, world)
        await run_monitor(nursery, app)
        await ready_escrow(app, world, "f4", confirmations=10)
        pool = app.pool
        assert isinstance(pool, FakePool)
        for proc in pool.in_use.values():
            proc.fake.fail_next("submit_multisig", -1, "Failed to submit multisig tx")

        vendor = world.add_wallet("vendor-payout", "x").address
        status, body = await call(app, "POST", "/v1/escrows/f4/release", {"address": vendor})
        assert status == 503, body
        _, rec = await call(app, "GET", "/v1/escrows/f4")
        assert rec["payout"]["txid"] is None  # signed and recorded, not sent

        fakes[A].down = True
        await _event(app, "daemon_switched")
        status, body = await call(app, "POST", "/v1/escrows/f4/release", {"address": vendor})
        assert status == 202, body
        assert {p.daemon_address for p in pool.in_use.values()} == {B}
        world.mine(1)
        paying = [
            txid
            for txid, tx in world.txs.items()
            if tx.height is not None and any(to == vendor for to, _ in tx.outputs)
        ]
        assert paying == [body["payout"]["txid"]]
        _, events = await call(app, "GET", "/v1/events?after=0")
        assert [e["type"] for e in events["events"]].count("payout_submitted") == 1
        nursery.cancel_scope.cancel()


async def test_a_lost_payout_is_not_resubmitted_to_a_daemon_behind(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A submitted payout the daemon lost (pool flushed) is resubmitted by the monitor from its
    blob, but not while the daemon in use is below the escrow's ready height; once it is there,
    the same transaction is sent again."""
    world = FakeWalletWorld()
    async with trio.open_nursery() as nursery:
        app, fakes = await _failover_app(nursery, tmp_path, world)
        await run_monitor(nursery, app)
        await ready_escrow(app, world, "f5", confirmations=10)
        vendor = world.add_wallet("vendor-payout", "x").address
        status, body = await call(app, "POST", "/v1/escrows/f5/release", {"address": vendor})
        assert status == 202, body
        txid = body["payout"]["txid"]
        submits = world.call_count("submit_multisig")

        fakes[A].lag = 5
        fakes[A].forgotten.add(txid)  # its pool was flushed
        cycles = app.monitor.statistics().cycles
        with trio.fail_after(300):
            while True:  # a few monitor cycles that saw the payout missing
                if app.monitor.statistics().cycles >= cycles + 5:
                    break
                await trio.sleep(1)
        assert app.monitor.statistics().resubmits == 0
        assert world.call_count("submit_multisig") == submits

        fakes[A].lag = 0
        with trio.fail_after(300):
            while True:
                if world.call_count("submit_multisig") > submits:
                    break
                await trio.sleep(1)
        assert app.monitor.statistics().resubmits >= 1
        nursery.cancel_scope.cancel()
