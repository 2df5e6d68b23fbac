"""Sessions and the registry on fake wallet-rpc processes, with trio's autojump clock.

House rules: no real sockets here (the fake is plugged in-process), so the clock can jump over
opens (1.5 s each), TTLs and sweeps; every scenario is what an operator would check from outside:
the API's answers, the events, and what the wallet-rpc processes were asked to do.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests.fakes import (
    MultisigSet,
    call,
    fake_app,
    make_fake_multisig,
    raw_call,
    sqlite,
    start,
)
from walletd.app import App
from walletd.errors import ClusterUnavailable, Fenced, LeaseLost, SessionFailed, Unavailable
from walletd.ids import ROLES, Role
from walletd.sessions.handles import SessionSpec, WalletSpec
from walletd.sessions.limits import SessionStatistics
from walletd.sessions.mailbox import SessionHandle
from walletd.sessions.messages import GetBalance, Store
from walletd.sessions.registry import Limits
from walletd.sessions.session import EscrowSession, OnStored
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool
from walletd.wallets.rpc import DAMAGE_SIGNS


async def _setup(
    nursery: trio.Nursery, tmp_path: Path, n: int, **sessions: Any
) -> tuple[App, FakeWalletWorld, FakePool, list[MultisigSet]]:
    world = FakeWalletWorld()
    sets = [await make_fake_multisig(world, f"w{i}") for i in range(n)]
    pool = FakePool(world)
    app = fake_app(tmp_path, world, pool, **sessions)
    await start(nursery, app)
    for i, s in enumerate(sets):
        status, body = await call(app, "POST", "/v1/escrows", s.adopt_body(f"e{i}"))
        assert status == 201, body
    return app, world, pool, sets


def _closed(app: App) -> list[tuple[str, str]]:
    return [
        (e.escrow_id or "", e.data["reason"])
        for e in sqlite(app).events_after(0)
        if e.type == "session_closed"
    ]


async def test_concurrent_opens_share_one(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Five concurrent get-or-create calls for one escrow open its three wallets once."""
    async with trio.open_nursery() as nursery:
        app, world, _, _ = await _setup(nursery, tmp_path, 1)
        await app.registry.close("e0")
        opens_before = world.call_count("open_wallet")
        results: list[tuple[int, Any]] = []

        async def one() -> None:
            results.append(await call(app, "POST", "/v1/escrows/e0/session"))

        async with trio.open_nursery() as inner:
            for _ in range(5):
                inner.start_soon(one)
        assert world.call_count("open_wallet") - opens_before == 3
        assert sorted(r[1]["created"] for r in results) == [False, False, False, False, True]
        assert app.registry.statistics().active_sessions == 1
        nursery.cancel_scope.cancel()


async def test_lru_eviction_stores_and_closes(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """At the cap, the least recently used idle session is stored, closed and reported evicted."""
    async with trio.open_nursery() as nursery:
        app, world, _, sets = await _setup(nursery, tmp_path, 3, max_active=2)
        # Adopting e2 evicted e0 already (cap 2); bring the sessions to a known order.
        assert [s.escrow_id for s in app.registry.sessions()] == ["e2", "e1"]
        await trio.sleep(1)
        assert (await call(app, "GET", "/v1/escrows/e1/balance"))[0] == 200  # e1 most recent
        stores_before = {f: world.stores[f] for f in sets[2].files.values()}
        status, body = await call(app, "POST", "/v1/escrows/e0/session")
        assert (status, body["created"]) == (200, True)
        assert [s.escrow_id for s in app.registry.sessions()] == ["e0", "e1"]
        assert _closed(app)[-1] == ("e2", "evicted")
        for f in sets[2].files.values():
            assert world.stores[f] > stores_before[f], "evicted wallet was not stored"
            assert f not in world.locks, "evicted wallet still open"
        stats = (await call(app, "GET", "/v1/stats"))[1]
        assert (stats["evicted"], stats["active_sessions"]) == (2, 2)
        assert (stats["max_sessions"], stats["utilization"]) == (2, 1.0)
        nursery.cancel_scope.cancel()


async def test_evicted_slot_reused_only_after_close(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The new session opens its wallets only after the evicted one closed all of its own."""
    async with trio.open_nursery() as nursery:
        app, world, _, _ = await _setup(nursery, tmp_path, 2, max_active=1)
        world.calls.clear()
        await call(app, "POST", "/v1/escrows/e0/session")
        methods = [m for _, m in world.calls if m in ("close_wallet", "open_wallet")]
        assert methods == ["close_wallet"] * 3 + ["open_wallet"] * 3
        nursery.cancel_scope.cancel()


async def test_busy_session_is_never_evicted(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """With the only slot busy, a new escrow gets 503 capacity and the busy call completes."""
    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(nursery, tmp_path, 2, max_active=1, capacity_wait=5)
        await call(app, "POST", "/v1/escrows/e1/session")
        pool.fake_of(sets[1].files["buyer"]).call_delay = 20.0  # a slow call in hand
        slow: list[int] = []

        async def busy() -> None:
            slow.append((await call(app, "GET", "/v1/escrows/e1/balance"))[0])

        nursery.start_soon(busy)
        await trio.sleep(1)
        assert app.registry.sessions()[0].busy
        status, body = await call(app, "POST", "/v1/escrows/e0/session")
        assert (status, body["error"]["code"]) == (503, "capacity")
        await trio.sleep(60)
        assert slow == [200]
        assert [s.escrow_id for s in app.registry.sessions()] == ["e1"]
        nursery.cancel_scope.cancel()


async def test_idle_ttl_sweep(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """An idle session closes at the first sweep after its TTL; a used one stays open."""
    async with trio.open_nursery() as nursery:
        app, *_ = await _setup(nursery, tmp_path, 2, idle_ttl=100, sweep_interval=10, max_active=5)
        await trio.sleep(60)
        await call(app, "GET", "/v1/escrows/e1/balance")
        await trio.sleep(55)  # e0 idle 115 s > TTL; e1 idle 55 s
        assert [s.escrow_id for s in app.registry.sessions()] == ["e1"]
        assert ("e0", "expired") in _closed(app)
        await trio.sleep(60)
        assert app.registry.sessions() == []
        assert (await call(app, "GET", "/v1/stats"))[1]["expired"] == 2
        nursery.cancel_scope.cancel()


async def test_monitor_use_does_not_keep_a_session(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Monitor calls do not refresh LRU order: a monitor-only session is evicted first."""
    from walletd.sessions.messages import GetBalance
    from walletd.sessions.registry import Caller

    async with trio.open_nursery() as nursery:
        app, *_ = await _setup(nursery, tmp_path, 3, max_active=2)
        await app.registry.close("e1")
        await app.registry.close("e2")
        await call(app, "GET", "/v1/escrows/e0/balance")
        await app.registry.call("e1", GetBalance(), caller=Caller.MONITOR)  # monitor only
        await trio.sleep(5)
        await app.registry.call("e1", GetBalance(), caller=Caller.MONITOR)
        await call(app, "POST", "/v1/escrows/e2/session")
        assert _closed(app)[-1] == ("e1", "evicted")
        nursery.cancel_scope.cancel()


async def test_killed_wallet_rpc_is_restored(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """kill -9 of one wallet-rpc: the next call still succeeds and the restart is reported."""
    async with trio.open_nursery() as nursery:
        app, world, pool, sets = await _setup(nursery, tmp_path, 1)
        pool.fake_of(sets[0].files["vendor"]).kill()
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert status == 200, body
        restarted = [e for e in sqlite(app).events_after(0) if e.type == "wallet_rpc_restarted"]
        assert [(e.escrow_id, e.data["role"]) for e in restarted] == [("e0", "vendor")]
        assert (await call(app, "GET", "/v1/stats"))[1]["wallet_rpc_restarts"] == 1
        assert sets[0].files["vendor"] in world.locks  # reopened in a fresh process
        nursery.cancel_scope.cancel()


async def test_restarts_are_counted_once_their_session_has_closed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The registry's statistics count every wallet-rpc its sessions replaced since start: those
    of a session that has closed since (evicted, here) still count, and none twice."""
    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(nursery, tmp_path, 2, max_active=1)
        await call(app, "POST", "/v1/escrows/e0/session")
        pool.fake_of(sets[0].files["vendor"]).kill()
        pool.fake_of(sets[0].files["arbiter"]).kill()
        assert (await call(app, "GET", "/v1/escrows/e0/balance"))[0] == 200
        assert app.registry.statistics().wallet_rpc_restarts == 2
        await call(app, "POST", "/v1/escrows/e1/session")  # evicts e0's session
        assert not app.registry.is_open("e0")
        pool.fake_of(sets[1].files["buyer"]).kill()
        assert (await call(app, "GET", "/v1/escrows/e1/balance"))[0] == 200
        assert app.registry.statistics().wallet_rpc_restarts == 3
        assert (await call(app, "GET", "/v1/stats"))[1]["wallet_rpc_restarts"] == 3
        nursery.cancel_scope.cancel()


async def test_a_session_reports_its_own_statistics(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A session's statistics say how often it restored its wallets and how many processes
    that took: one restore of two lost processes is one restore, two restarts."""
    world = FakeWalletWorld()
    s = await make_fake_multisig(world, "stat")
    pool = FakePool(world)
    wallets = {role: WalletSpec(s.files[role], s.password) for role in ROLES}
    session = EscrowSession(SessionSpec("e-stat", wallets, s.address), pool, store_interval=1e9)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        handle = await nursery.start(session.run)
        assert session.statistics() == SessionStatistics(0, 0, 0)
        pool.fake_of(s.files["buyer"]).kill()
        pool.fake_of(s.files["vendor"]).kill()
        await handle.request(GetBalance())
        assert session.statistics() == SessionStatistics(
            restores=1, wallet_rpc_restarts=2, warm_payouts=0
        )
        nursery.cancel_scope.cancel()


async def test_dead_spares_are_passed_over(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """kill -9 of every process, spares included: the restore takes another process for each
    spare that turns out dead, and the next call still succeeds."""
    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(nursery, tmp_path, 1)
        await pool.kill_spares_unnoticed(2)
        pool.fake_of(sets[0].files["vendor"]).kill()
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert status == 200, body
        assert pool.fake_of(sets[0].files["vendor"]).dead is False
        assert (await call(app, "GET", "/v1/stats"))[1]["wallet_rpc_restarts"] == 1
        assert (
            pool.statistics().restarts == 3
        )  # the vendor's process and both dead spares were discarded
        nursery.cancel_scope.cancel()


async def test_restart_rate_is_bounded(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Past the restart intensity the session fails as a unit, is reported, and can reopen."""
    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(
            nursery, tmp_path, 1, restart_intensity=2, restart_period=60
        )
        for _ in range(2):
            pool.fake_of(sets[0].files["buyer"]).kill()
            assert (await call(app, "GET", "/v1/escrows/e0/balance"))[0] == 200
        pool.fake_of(sets[0].files["buyer"]).kill()
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert (status, body["error"]["code"]) == (503, "unavailable")
        await trio.sleep(1)
        assert _closed(app)[-1] == ("e0", "failed")
        # Reported, not dropped: the next call opens a fresh session.
        assert (await call(app, "GET", "/v1/escrows/e0/balance"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_hung_wallet_rpc_is_replaced(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """A wallet-rpc that stops answering times out, is replaced, and the call succeeds."""
    async with trio.open_nursery() as nursery:
        world = FakeWalletWorld()
        s = await make_fake_multisig(world, "h")
        pool = FakePool(world, call_timeout=5)
        app = fake_app(tmp_path, world, pool)
        await start(nursery, app)
        assert (await call(app, "POST", "/v1/escrows", s.adopt_body("e0")))[0] == 201
        hung = pool.fake_of(s.files["buyer"])
        hung.hang()
        status, _ = await call(app, "GET", "/v1/escrows/e0/transfers/" + "ab" * 32)
        assert status == 404  # answered (the wallets do not know it), not a hang
        assert hung.dead
        nursery.cancel_scope.cancel()


async def test_lower_cap_evicts_down(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Lowering the cap at run time evicts idle sessions down to it, least recent first."""
    async with trio.open_nursery() as nursery:
        app, *_ = await _setup(nursery, tmp_path, 3, max_active=3)
        app.registry.set_limits(Limits(max_active=1))
        await trio.sleep(5)
        assert [s.escrow_id for s in app.registry.sessions()] == ["e2"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("cap", [1, 3])
async def test_shutdown_stores_and_closes_everything(
    tmp_path: Path, autojump_clock: trio.abc.Clock, cap: int
) -> None:
    """Registry shutdown stores and closes every wallet and reports reason shutdown."""
    async with trio.open_nursery() as nursery:
        app, world, _, _ = await _setup(nursery, tmp_path, 3, max_active=cap)
        await app.registry.shutdown(timeout=30)
        assert world.locks == {}
        assert [r for _, r in _closed(app)][-cap:] == ["shutdown"] * cap
        nursery.cancel_scope.cancel()


async def test_shutdown_during_an_opening_closes_it_cleanly(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """SIGTERM while a session is still opening: once open it is told to leave at once, stores
    and closes its wallets, and is reported closed for shutdown (not failed, not cancelled)."""
    async with trio.open_nursery() as nursery:
        app, world, _, sets = await _setup(nursery, tmp_path, 1)
        assert await app.registry.close("e0")
        answers: list[int] = []

        async def balance() -> None:
            answers.append((await call(app, "GET", "/v1/escrows/e0/balance"))[0])

        nursery.start_soon(balance)
        await trio.sleep(0.5)  # the opening (1.5 s per wallet) is under way
        assert app.registry.sessions() == []
        stores = {f: world.stores[f] for f in sets[0].files.values()}
        started = trio.current_time()
        await app.registry.shutdown(timeout=30)
        assert trio.current_time() - started < 30  # it did not sit out the timeout
        assert _closed(app)[-1] == ("e0", "shutdown")
        assert world.locks == {}
        for f in sets[0].files.values():
            assert world.stores[f] > stores[f], f
        await trio.sleep(1)
        assert answers == [503]  # told plainly that walletd is shutting down
        nursery.cancel_scope.cancel()


async def test_open_wallets_are_stored_periodically(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """An open session stores its wallets every store_interval, even when nobody calls it."""
    async with trio.open_nursery() as nursery:
        _, world, _, sets = await _setup(nursery, tmp_path, 1, store_interval=60)
        before = {f: world.stores[f] for f in sets[0].files.values()}
        await trio.sleep(130)
        for f in sets[0].files.values():
            assert world.stores[f] - before[f] >= 2, f
        nursery.cancel_scope.cancel()


async def test_lost_wallet_minus_13_is_reopened(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A process that lost its wallet (-13 "No wallet file") gets it reopened; the call works."""
    async with trio.open_nursery() as nursery:
        app, world, pool, sets = await _setup(nursery, tmp_path, 1)
        fake = pool.fake_of(sets[0].files["buyer"])
        fake.wallet = None  # as if wallet-rpc had closed it behind our back
        world.locks.pop(sets[0].files["buyer"])
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert status == 200, body
        assert sets[0].files["buyer"] in world.locks
        nursery.cancel_scope.cancel()


async def test_wrong_wallet_is_never_used(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """If a process holds another wallet than expected, a money-moving call is refused and the
    session fails as a unit rather than use it."""
    from tests.fakes import PASSWORD
    from walletd.sessions.messages import MultisigStatus
    from walletd.sessions.registry import Caller
    from walletd.testing.fake_transport import FakeTransport
    from walletd.wallets.rpc import WalletRpc

    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(nursery, tmp_path, 2, max_active=1)
        # e1 is open (e0 was evicted); make e1's vendor process hold e0's vendor wallet.
        fake = pool.fake_of(sets[1].files["vendor"])
        intruder = WalletRpc(fake.url, user="u", password="p", transport=FakeTransport(fake))
        await intruder.call(
            "open_wallet", {"filename": sets[0].files["vendor"], "password": PASSWORD}
        )
        with pytest.raises(Exception, match="address mismatch"):
            await app.registry.call("e1", MultisigStatus(), caller=Caller.API)
        await trio.sleep(1)
        assert _closed(app)[-1] == ("e1", "failed")
        nursery.cancel_scope.cancel()


async def test_lost_daemon_link_is_relinked(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """A wallet-rpc that lost its monerod link (-38) is pointed at the daemon again and the
    refresh succeeds."""
    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(nursery, tmp_path, 1)
        fake = pool.fake_of(sets[0].files["buyer"])
        fake.lose_daemon()
        status, body = await call(app, "GET", "/v1/escrows/e0/balance?refresh=true")
        assert status == 200, body
        assert fake.daemon_linked
        nursery.cancel_scope.cancel()


async def test_warm_balance_is_one_wallet_call(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A warm balance read costs one wallet-rpc call; its height follows the wallet's own
    refreshes (auto-refresh is off), so refresh=true shows new blocks and plain reads do not."""
    async with trio.open_nursery() as nursery:
        app, world, _, _ = await _setup(nursery, tmp_path, 1)
        first = (await call(app, "GET", "/v1/escrows/e0/balance"))[1]
        world.calls.clear()
        world.mine(5)
        again = (await call(app, "GET", "/v1/escrows/e0/balance"))[1]
        assert [m for _, m in world.calls] == ["get_balance"]
        assert again["height"] == first["height"]
        fresh = (await call(app, "GET", "/v1/escrows/e0/balance?refresh=true"))[1]
        assert fresh["height"] == first["height"] + 5
        nursery.cancel_scope.cancel()


async def test_transfer_unknown_to_an_unsynced_wallet_is_looked_up_after_a_scan(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A transaction mined after the session opened is found by a transfer lookup (the wallet
    scans once before saying it does not know it); a txid nobody paid stays a 404 without
    another scan."""
    async with trio.open_nursery() as nursery:
        app, world, _, sets = await _setup(nursery, tmp_path, 1)
        txid = world.credit(sets[0].address, 7, unlocked=True)
        status, body = await call(app, "GET", f"/v1/escrows/e0/transfers/{txid}")
        assert status == 200, body
        assert (body["direction"], body["amount"]) == ("in", 7)
        world.calls.clear()
        unknown = "ab" * 32
        status, body = await call(app, "GET", f"/v1/escrows/e0/transfers/{unknown}")
        assert (status, body["error"]["code"]) == (404, "not_found")
        assert [m for _, m in world.calls] == ["get_transfer_by_txid"]
        nursery.cancel_scope.cancel()


async def test_a_fresh_session_is_not_evicted_before_its_caller_uses_it(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Cap 1, two escrows asked for at once: the session opened for the first caller serves it
    before it can be evicted for the second (it was once evicted the moment it opened, which
    made an escrow creation run create_wallet twice)."""
    async with trio.open_nursery() as nursery:
        app, _, _, _ = await _setup(nursery, tmp_path, 2, max_active=1)
        await app.registry.close("e1")
        opened_before = app.registry.statistics().opened
        answers: dict[str, int] = {}

        async def balance(escrow_id: str) -> None:
            answers[escrow_id] = (await call(app, "GET", f"/v1/escrows/{escrow_id}/balance"))[0]

        async with trio.open_nursery() as calls:
            calls.start_soon(balance, "e1")
            await trio.sleep(0.1)  # e1's opening is under way, e0 leaves for it
            calls.start_soon(balance, "e0")
        assert answers == {"e0": 200, "e1": 200}
        assert app.registry.statistics().opened - opened_before == 2  # one opening each, no reopen
        nursery.cancel_scope.cancel()


async def test_a_call_in_hand_is_answered_when_its_session_is_cancelled(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A session cancelled while it serves a call (here: shutdown's grace runs out behind a
    slow wallet-rpc call) still answers that call with an error; the caller never hangs."""
    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(nursery, tmp_path, 1)
        pool.fake_of(sets[0].files["buyer"]).call_delay = 600.0  # the call in hand outlives it
        answers: list[int] = []
        answered = trio.Event()

        async def slow() -> None:
            answers.append((await call(app, "GET", "/v1/escrows/e0/balance?refresh=true"))[0])
            answered.set()

        nursery.start_soon(slow)
        await trio.sleep(1)
        assert app.registry.sessions()[0].busy
        await app.registry.shutdown(timeout=5)  # Leave queues behind the call; then cancel
        with trio.fail_after(120):
            await answered.wait()
        assert answers[0] in (503, 504), answers
        nursery.cancel_scope.cancel()


async def test_a_close_that_overruns_stops_the_processes_before_the_slot_is_freed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A wallet-rpc that hangs in close_wallet is stopped before the session reports closed:
    no process still holds the escrow's wallets, and the escrow reopens with no repair."""
    async with trio.open_nursery() as nursery:
        app, world, pool, sets = await _setup(nursery, tmp_path, 1)
        hung = pool.fake_of(sets[0].files["buyer"])
        hung.call_delay = 10_000.0
        await app.registry.close("e0")
        assert not set(sets[0].files.values()) & set(world.locks), "a closed wallet is still held"
        assert hung.dead
        hung.call_delay = 0.0
        assert (await call(app, "GET", "/v1/escrows/e0/balance"))[0] == 200
        assert [e.type for e in sqlite(app).events_after(0) if e.type == "wallet_repaired"] == []
        nursery.cancel_scope.cancel()


async def test_a_wallet_that_fails_to_open_is_not_replaced_by_an_unchecked_backup(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """An escrow wallet held open by another process fails to open (-1): the session reports
    the failure, and the live keys file is not overwritten by the escrow's only backup (taken
    before multisig setup: a plain wallet), nor moved to replaced-*."""
    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(nursery, tmp_path, 1)
        wallet_dir = app.config.monero.wallet_dir
        buyer = sets[0].files["buyer"]
        live = wallet_dir / f"{buyer}.keys"
        live.write_bytes(b"the multisig keys")
        backup = app.backups.take("e0", [buyer], "before multisig setup")
        (backup / f"{buyer}.keys").write_bytes(b"a plain wallet's keys")
        await app.registry.close("e0")
        other = await pool.acquire()  # another process opens the wallet and keeps it
        await other.rpc.call("open_wallet", {"filename": buyer, "password": sets[0].password})
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert live.read_bytes() == b"the multisig keys"
        assert not list((app.backups.backup_dir / "e0").glob("replaced-*"))
        assert [e for e in sqlite(app).events_after(0) if e.type == "wallet_repaired"] == []
        assert status == 502, body  # the open's -1 stands, with why nothing was repaired
        assert "no backup opens as the escrow's multisig wallet" in body["error"]["message"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("sign", DAMAGE_SIGNS)
async def test_a_wallet_reporting_damage_is_reopened_unsaved(
    tmp_path: Path, autojump_clock: trio.abc.Clock, sign: str
) -> None:
    """A wallet-rpc error that means a damaged wallet (basicswap's list) mid-session: its process
    is killed without a store (the damage never reaches the disk), the wallet is reopened from
    its files, the call still answers, and the repair is an event and a metric."""
    async with trio.open_nursery() as nursery:
        app, world, pool, sets = await _setup(nursery, tmp_path, 1)
        buyer = sets[0].files["buyer"]
        fake = pool.fake_of(buyer)
        stores_before = world.stores[buyer]
        fake.fail_next("get_balance", -1, f"Failed to get balance: {sign}")
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert status == 200, body
        assert fake.dead
        assert pool.discarded_damaged == 1
        assert world.stores[buyer] == stores_before  # nothing of the damaged wallet was saved
        assert buyer in world.locks  # open again, in a fresh process
        repaired = [e for e in sqlite(app).events_after(0) if e.type == "wallet_repaired"]
        assert [(e.data["role"], e.data["source"]) for e in repaired] == [("buyer", "reopened")]
        metrics = (await raw_call(app, "GET", "/metrics")).body.decode()
        assert 'walletd_wallet_repairs_total{source="reopened"} 1.0' in metrics
        nursery.cancel_scope.cancel()


async def test_an_ordinary_wallet_error_is_not_taken_for_damage(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Any other wallet-rpc error is the caller's answer: no process dropped, no repair."""
    async with trio.open_nursery() as nursery:
        app, _, pool, sets = await _setup(nursery, tmp_path, 1)
        fake = pool.fake_of(sets[0].files["buyer"])
        fake.fail_next("get_balance", -1, "Failed to get balance: something else")
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert status == 502, body
        assert not fake.dead
        assert pool.discarded_damaged == 0
        assert not [e for e in sqlite(app).events_after(0) if e.type == "wallet_repaired"]
        nursery.cancel_scope.cancel()


@attrs.define
class Hooked:
    session: EscrowSession
    handle: SessionHandle
    world: FakeWalletWorld
    wallets: MultisigSet
    ended: list[Exception | None]  # how the session's task ended, once it has


async def _hooked_session(nursery: trio.Nursery, on_stored: OnStored, **options: Any) -> Hooked:
    """A session of one ready multisig escrow on fake wallet-rpc, with `on_stored` set; its
    task's end (an error or None) is recorded, as the registry would."""
    world = FakeWalletWorld()
    s = await make_fake_multisig(world, "w")
    pool = FakePool(world)
    await nursery.start(pool.run)
    spec = SessionSpec("e0", {r: WalletSpec(s.files[r], s.password) for r in ROLES}, s.address)
    session = EscrowSession(spec, pool, on_stored=on_stored, store_interval=60, **options)
    ended: list[Exception | None] = []

    async def supervised(*, task_status: trio.TaskStatus[SessionHandle]) -> None:
        try:
            await session.run(task_status=task_status)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to check
            ended.append(exc)
            return
        ended.append(None)

    handle: SessionHandle = await nursery.start(supervised)
    return Hooked(session, handle, world, s, ended)


async def test_each_stored_wallet_is_handed_to_on_stored(autojump_clock: trio.abc.Clock) -> None:
    """After wallet-rpc stored a wallet, on_stored gets (escrow id, role, file) for each of the
    three, on an explicit store and on the periodic one; not before the store succeeded."""
    seen: list[tuple[str, str, str, int]] = []
    stores: Counter[str] = Counter()

    async def on_stored(escrow_id: str, role: Role, file: str) -> None:
        await trio.lowlevel.checkpoint()
        seen.append((escrow_id, role, file, stores[file]))

    async with trio.open_nursery() as nursery:
        h = await _hooked_session(nursery, on_stored)
        stores = h.world.stores  # the fake's count of each wallet's stores
        before = {f: stores[f] for f in h.wallets.files.values()}
        await h.handle.request(Store())
        assert [(e, r, f) for e, r, f, _ in seen] == [("e0", r, h.wallets.files[r]) for r in ROLES]
        assert all(n == before[f] + 1 for _, _, f, n in seen)  # each after its store
        seen.clear()
        await trio.sleep(61)
        assert sorted(r for _, r, _, _ in seen) == sorted(ROLES)
        assert not h.session.unsaved
        nursery.cancel_scope.cancel()


async def test_a_failed_save_fails_the_store_but_not_the_session(
    autojump_clock: trio.abc.Clock,
) -> None:
    """When the keeper of the files is unavailable (database down), a store request fails with
    Unavailable (its change is not reported done while only this host has it), the session stays
    up and serves, a periodic store only logs it, and the next store saves again."""
    down = True
    calls: list[str] = []

    async def on_stored(escrow_id: str, role: Role, file: str) -> None:
        await trio.lowlevel.checkpoint()
        calls.append(role)
        if down and role == "vendor":
            raise ClusterUnavailable("cluster database failed (OperationalError)")

    async with trio.open_nursery() as nursery:
        h = await _hooked_session(nursery, on_stored)
        with pytest.raises(Unavailable, match=r"not saved off the host \(vendor\)"):
            await h.handle.request(Store())
        assert calls == list(ROLES)  # the others were still handed over
        assert h.session.unsaved
        calls.clear()
        await trio.sleep(61)  # a periodic store meets the same failure: logged, session lives
        assert calls == list(ROLES)
        assert h.ended == []
        assert (await h.handle.request(GetBalance(refresh=False))).balance >= 0
        down = False
        await h.handle.request(Store())
        assert not h.session.unsaved
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("periodic", [False, True])
async def test_a_fenced_save_stops_the_session(
    autojump_clock: trio.abc.Clock, periodic: bool
) -> None:
    """A save refused because this host's lease is stale stops the session at once, whether a
    call's store or the periodic one met it: the call gets SessionFailed, the session ends with
    LeaseLost, no later wallet is handed over, and the wallets are closed."""
    calls: list[str] = []

    async def on_stored(escrow_id: str, role: Role, file: str) -> None:
        await trio.lowlevel.checkpoint()
        calls.append(role)
        raise Fenced("escrow e0: lease lost (epoch 1 stale)")

    async with trio.open_nursery() as nursery:
        h = await _hooked_session(nursery, on_stored)
        if periodic:
            await trio.sleep(61)
        else:
            with pytest.raises(SessionFailed, match="lease lost"):
                await h.handle.request(Store())
        await trio.sleep(1)
        assert len(h.ended) == 1
        assert isinstance(h.ended[0], LeaseLost)
        assert calls == ["buyer"]
        assert all(f not in h.world.locks for f in h.wallets.files.values()), "wallets left open"
        nursery.cancel_scope.cancel()


async def test_a_fenced_session_kills_its_processes_unsaved_and_never_reopens(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Once fenced (its lease lost), a session's three processes are killed at once with
    nothing stored, and its next call fails as a session failure without opening any wallet
    again: another host may have the escrow's wallets open by then."""

    async def on_stored(escrow_id: str, role: Role, file: str) -> None:
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        h = await _hooked_session(nursery, on_stored)
        stores = {f: h.world.stores[f] for f in h.wallets.files.values()}
        opens = h.world.call_count("open_wallet")
        await h.session.fence()
        assert all(f not in h.world.locks for f in h.wallets.files.values())
        assert {f: h.world.stores[f] for f in h.wallets.files.values()} == stores
        with pytest.raises(SessionFailed, match="lost the escrow's lease"):
            await h.handle.request(GetBalance(refresh=False))
        await trio.sleep(1)
        assert h.world.call_count("open_wallet") == opens
        assert len(h.ended) == 1
        assert isinstance(h.ended[0], SessionFailed)
        nursery.cancel_scope.cancel()


async def test_an_open_that_raced_another_process_is_given_up_unsaved(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Two opens of one wallet that race can both succeed in wallet-rpc (it re-takes the
    keys-file lock after loading without checking): when an outside process also holds the
    lock after walletd's open, the call fails naming that process, walletd's copy is closed
    without storing, nothing is repaired; once the outside process is gone the escrow opens."""
    world = FakeWalletWorld()
    s = await make_fake_multisig(world, "r")
    pool = FakePool(world)
    outside: dict[str, set[int]] = {}
    app = fake_app(tmp_path, world, pool, foreign_locks=outside)
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        assert (await call(app, "POST", "/v1/escrows", s.adopt_body("e0")))[0] == 201
        await app.registry.close("e0")
        vendor = s.files["vendor"]
        saved = world.wallets[vendor].saved.copy()
        probe = app.lock_probe
        assert probe is not None

        async def probe_after_a_sync(file: str) -> frozenset[int] | None:
            if file == vendor:  # the open wallet moves on: a store would now change its files
                world.wallets[vendor].cache.height += 7
            return await probe(file)

        app.lock_probe = probe_after_a_sync
        outside[vendor] = {4242}
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert status == 502, body
        assert "vendor wallet" in body["error"]["message"]
        assert "held open by another process (pid 4242)" in body["error"]["message"]
        assert world.wallets[vendor].saved == saved
        assert vendor not in world.locks, "walletd's process still has the wallet open"
        assert [e for e in sqlite(app).events_after(0) if e.type == "wallet_repaired"] == []
        del outside[vendor]
        assert (await call(app, "GET", "/v1/escrows/e0/balance"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_an_open_left_without_its_keys_lock_is_given_up(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """If walletd's wallet-rpc opened a wallet but does not hold its keys-file lock (another
    process took it during the open, so later opens elsewhere would not be refused), the call
    fails and walletd's process holds no wallet of the escrow afterwards."""
    world = FakeWalletWorld()
    s = await make_fake_multisig(world, "n")
    pool = FakePool(world)
    app = fake_app(tmp_path, world, pool)
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        assert (await call(app, "POST", "/v1/escrows", s.adopt_body("e0")))[0] == 201
        await app.registry.close("e0")
        buyer = s.files["buyer"]
        real = app.lock_probe
        assert real is not None

        async def lost(file: str) -> frozenset[int] | None:
            return frozenset() if file == buyer else await real(file)

        app.lock_probe = lost
        status, body = await call(app, "GET", "/v1/escrows/e0/balance")
        assert status == 502, body
        assert "opened without its keys-file lock" in body["error"]["message"]
        assert not set(s.files.values()) & set(world.locks)
        nursery.cancel_scope.cancel()
