"""Payouts under cap pressure: money-moving calls wait for a session slot first in line.

House rules as in test_sessions.py: the registry runs for real on fake wallet-rpc processes with
trio's autojump clock (opens cost their fake 1.5 s, slow calls their `call_delay`, no real time).
Every slot is held by reads made slow on purpose; what is checked is what an operator sees: which
session opened and in what order, who got 503 `capacity`, and the queue in /v1/stats and
/metrics. No bound here is a timing claim: the clock only moves when every task waits.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import trio

from tests.fakes import (
    FakeDaemon,
    MultisigSet,
    call,
    fake_app,
    make_fake_multisig,
    raw_call,
    start,
)
from tests.harness import run_monitor
from walletd.app import App
from walletd.errors import Capacity
from walletd.ids import ROLES
from walletd.sessions.messages import GetBalance
from walletd.sessions.registry import Caller, Limits, Registry
from walletd.sessions.session import EscrowSession, SessionSpec, WalletSpec
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool

CAP = 2
AMOUNT = 10**12


class World:
    """A running registry with a cap of two over escrows e0..e{n-1}, and what it reported."""

    def __init__(self, sets: dict[str, MultisigSet], pool: FakePool, limits: Limits) -> None:
        self.sets = sets
        self.pool = pool
        self.events: list[tuple[str, str, str | None]] = []
        self.registry = Registry(self._lookup, self._new_session, limits, on_event=self._event)

    async def _lookup(self, escrow_id: str) -> SessionSpec:
        await trio.lowlevel.checkpoint()
        s = self.sets[escrow_id]
        wallets = {role: WalletSpec(s.files[role], s.password) for role in ROLES}
        return SessionSpec(escrow_id, wallets, s.address)

    def _new_session(self, spec: SessionSpec) -> EscrowSession:
        return EscrowSession(spec, self.pool, restart_period=60.0, store_interval=1e9)

    def _event(self, type_: str, escrow_id: str, **data: Any) -> None:
        self.events.append((type_, escrow_id, data.get("reason")))

    def opened(self) -> list[str]:
        return [e for t, e, _ in self.events if t == "session_opened"]

    def evicted(self) -> list[str]:
        return [e for t, e, r in self.events if t == "session_closed" and r == "evicted"]

    def slow(self, escrow_id: str, seconds: float) -> None:
        """Every balance read of the escrow takes `seconds` (its buyer wallet answers late)."""
        self.pool.fake_of(self.sets[escrow_id].files["buyer"]).call_delay = seconds

    async def read(self, escrow_id: str) -> None:
        await self.registry.call(escrow_id, GetBalance(), caller=Caller.API)

    async def pay(self, escrow_id: str) -> None:
        """A payout step (the message does not matter to the registry, the caller does)."""
        await self.registry.call(escrow_id, GetBalance(), caller=Caller.PAYOUT)


async def _world(nursery: trio.Nursery, n: int, **limits: Any) -> World:
    fake = FakeWalletWorld()
    sets = {f"e{i}": await make_fake_multisig(fake, f"e{i}") for i in range(n)}
    w = World(sets, FakePool(fake, call_timeout=1e9), Limits(max_active=CAP, **limits))
    await nursery.start(w.pool.run)
    await nursery.start(w.registry.run)
    return w


async def _hold(nursery: trio.Nursery, w: World, holds: dict[str, float]) -> None:
    """Open each escrow's session and keep it busy with one read lasting its seconds."""
    for escrow_id in holds:
        await w.read(escrow_id)
    for escrow_id, seconds in holds.items():
        w.slow(escrow_id, seconds)
        nursery.start_soon(w.read, escrow_id)
    await trio.sleep(0.5)  # the reads are in hand (and keep sleeping); the next calls do not
    for escrow_id in holds:
        w.slow(escrow_id, 0.0)
    w.events.clear()


async def test_payout_waits_past_capacity_wait_for_the_first_slot_that_frees(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Every slot busy with reads longer than capacity_wait: a payout does not get 503 after
    30 s; it waits (up to payout_wait, the request timeout) and takes the first slot that
    frees, evicting that session, while the other read is still in hand."""
    async with trio.open_nursery() as nursery:
        w = await _world(nursery, 3)
        await _hold(nursery, w, {"e0": 60.0, "e1": 85.0})
        await w.pay("e2")
        assert w.opened() == ["e2"]
        assert w.evicted() == ["e0"]
        info = w.registry.session_info("e1")
        assert info is not None
        assert info.busy
        nursery.cancel_scope.cancel()


async def test_payout_gets_a_slot_before_reads_that_arrived_earlier(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Three reads queue for a slot, then a payout: the first freed slot is the payout's, and
    the reads follow in their arrival order."""
    async with trio.open_nursery() as nursery:
        w = await _world(nursery, 6, capacity_wait=300.0)
        await _hold(nursery, w, {"e0": 60.0, "e1": 100.0})
        async with trio.open_nursery() as callers:
            for escrow_id in ("e2", "e3", "e4"):
                callers.start_soon(w.read, escrow_id)
                await trio.sleep(1)
            callers.start_soon(w.pay, "e5")
        assert w.opened() == ["e5", "e2", "e3", "e4"]
        nursery.cancel_scope.cancel()


async def test_waiting_payouts_are_served_in_arrival_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Three payouts wait while every slot is busy: they open their sessions in the order they
    asked, none gets 503."""
    async with trio.open_nursery() as nursery:
        w = await _world(nursery, 5)
        await _hold(nursery, w, {"e0": 40.0, "e1": 80.0})
        async with trio.open_nursery() as callers:
            for escrow_id in ("e4", "e2", "e3"):
                callers.start_soon(w.pay, escrow_id)
                await trio.sleep(1)
        assert w.opened() == ["e4", "e2", "e3"]
        nursery.cancel_scope.cancel()


async def test_a_stream_of_reads_never_starves_a_queued_payout(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two clients read balances back to back, holding both slots nearly all the time: a
    payout queued for a third escrow still gets a slot (the reads' next call waits behind it)."""
    async with trio.open_nursery() as nursery:
        w = await _world(nursery, 3)
        for escrow_id in ("e0", "e1"):
            await w.read(escrow_id)
            w.slow(escrow_id, 1.0)
        stop = trio.Event()
        reads = {"ok": 0, "capacity": 0}

        async def reader(escrow_id: str) -> None:
            while not stop.is_set():
                try:
                    await w.read(escrow_id)
                    reads["ok"] += 1
                except Capacity:
                    reads["capacity"] += 1

        for escrow_id in ("e0", "e1"):
            nursery.start_soon(reader, escrow_id)
        await trio.sleep(5)
        await w.pay("e2")  # Capacity (after capacity_wait) before the queue
        assert "e2" in w.opened()
        stop.set()
        assert reads["ok"] > 0
        nursery.cancel_scope.cancel()


async def test_a_read_does_not_take_the_session_of_a_payout_between_its_steps(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A payout's session, idle between two steps (a database write), is held for money: a
    read waiting for a slot does not evict it, the payout's next step finds it open (no second
    opening), and the read gets the slot once the hold is over, within its own wait."""
    async with trio.open_nursery() as nursery:
        w = await _world(nursery, 3)
        await _hold(nursery, w, {"e0": 200.0})
        await w.pay("e1")  # the first step: opens e1, then idle
        read = trio.Event()

        async def reader() -> None:
            await w.read("e2")
            read.set()

        nursery.start_soon(reader)
        await trio.sleep(2)  # the payout records its step meanwhile
        await w.pay("e1")  # the next step
        await read.wait()
        assert w.opened() == ["e1", "e2"]
        assert w.evicted() == ["e1"]  # after its last step, for the read
        nursery.cancel_scope.cancel()


async def test_a_payout_whose_caller_went_away_leaves_its_place(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A waiting payout whose caller gives up is out of the queue at once (the stats say so),
    its place goes to the next payout, and no slot is kept for it."""
    async with trio.open_nursery() as nursery:
        w = await _world(nursery, 6)
        await _hold(nursery, w, {"e0": 40.0, "e1": 60.0})

        async def impatient() -> None:
            with trio.move_on_after(10):
                await w.pay("e2")

        nursery.start_soon(impatient)
        await trio.sleep(1)
        nursery.start_soon(w.pay, "e3")
        await trio.sleep(1)
        assert w.registry.statistics().waiting["payout"] == 2
        await trio.sleep(10)
        assert w.registry.statistics().waiting["payout"] == 1
        await trio.sleep(60)  # both reads ended: e3 took a slot, the other is free
        assert w.registry.statistics().waiting["payout"] == 0
        assert w.opened() == ["e3"]
        await w.read("e4")
        await w.read("e5")  # both slots usable: nothing was kept for the caller that left
        assert w.registry.statistics().active_sessions == CAP
        nursery.cancel_scope.cancel()


async def test_the_queue_shows_in_stats_and_metrics(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """While a payout and two reads wait for the one slot, /v1/stats says how many wait per
    caller kind and /metrics has `walletd_sessions_waiting{caller=...}`; both drop to zero."""
    async with trio.open_nursery() as nursery:
        fake = FakeWalletWorld()
        sets = [await make_fake_multisig(fake, f"w{i}") for i in range(4)]
        pool = FakePool(fake, call_timeout=1e9)
        app = fake_app(tmp_path, fake, pool, max_active=1, capacity_wait=100)
        await start(nursery, app)
        for i, s in enumerate(sets):
            assert (await call(app, "POST", "/v1/escrows", s.adopt_body(f"e{i}")))[0] == 201
        await call(app, "GET", "/v1/escrows/e0/balance")
        pool.fake_of(sets[0].files["buyer"]).call_delay = 50.0
        async with trio.open_nursery() as callers:
            callers.start_soon(call, app, "GET", "/v1/escrows/e0/balance")
            await trio.sleep(1)
            callers.start_soon(call, app, "GET", "/v1/escrows/e1/balance")
            callers.start_soon(call, app, "GET", "/v1/escrows/e2/balance")
            callers.start_soon(lambda: app.registry.call("e3", GetBalance(), caller=Caller.PAYOUT))
            await trio.sleep(1)
            status, stats = await call(app, "GET", "/v1/stats")
            assert status == 200
            assert stats["waiting"] == {"api": 2, "api_money": 0, "monitor": 0, "payout": 1}
            _, text = await _metrics(app)
            assert 'walletd_sessions_waiting{caller="payout"} 1.0' in text
            assert 'walletd_sessions_waiting{caller="api"} 2.0' in text
        status, stats = await call(app, "GET", "/v1/stats")
        assert stats["waiting"] == {"api": 0, "api_money": 0, "monitor": 0, "payout": 0}
        _, text = await _metrics(app)
        assert 'walletd_sessions_waiting{caller="payout"} 0.0' in text
        nursery.cancel_scope.cancel()


async def _metrics(app: App) -> tuple[int, str]:
    response = await raw_call(app, "GET", "/metrics")
    return response.status, response.body.decode()


async def test_a_release_is_answered_while_readers_hold_every_slot(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Two clients read two escrows' balances back to back (cap 2) while a third escrow is
    released: the release answers 202 with the payout submitted, not 503 capacity."""
    async with trio.open_nursery() as nursery:
        fake = FakeWalletWorld()
        pool = FakePool(fake, call_timeout=1e9)
        app = fake_app(tmp_path, fake, pool, chain=FakeDaemon(fake), max_active=CAP)
        await start(nursery, app)
        await run_monitor(nursery, app, cold_interval=5)
        for escrow_id in ("r0", "r1", "p0"):
            status, esc = await call(
                app, "POST", "/v1/escrows", {"escrow_id": escrow_id, "amount": AMOUNT}
            )
            assert status == 201, esc
            fake.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        with trio.fail_after(600):
            while True:
                if {e.state.value for e in await app.store.list_escrows()} == {"ready"}:
                    break
                await trio.sleep(1)
        stop = trio.Event()

        async def reader(escrow_id: str) -> None:
            while not stop.is_set():
                await call(app, "GET", f"/v1/escrows/{escrow_id}/balance")
                # Slow its reads on whichever process holds the wallet now (1 s each).
                with contextlib.suppress(KeyError):
                    pool.fake_of(f"escrow-{escrow_id}-buyer").call_delay = 1.0

        for escrow_id in ("r0", "r1"):
            nursery.start_soon(reader, escrow_id)
        await trio.sleep(10)
        vendor = fake.add_wallet("vendor-payout", "x")
        status, body = await call(
            app, "POST", "/v1/escrows/p0/release", {"address": vendor.address}
        )
        stop.set()
        assert status == 202, body
        assert body["payout"]["txid"]
        nursery.cancel_scope.cancel()
