"""Payouts on a warm session: multisig info exchanged ahead, and the fallbacks when it is stale.

The monitor is driven by hand (`cycle()`), so when the pre-exchange happens is never a race.
What a user checks: which wallet-rpc calls a release made before its transaction was submitted
(the fake logs every call), and that the payout swept the whole balance, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fakes import call, fake_pool
from tests.harness import AMOUNT, app_on_fakes, ready_escrow
from walletd.app import App
from walletd.sessions.messages import PreExchange
from walletd.sessions.registry import Caller
from walletd.testing.fake_chain import FEE, FakeWalletWorld
from walletd.testing.fake_spending import STALE

EXCHANGE = ("export_multisig_info", "import_multisig_info")


async def _cycle(app: App, world: FakeWalletWorld) -> None:
    app.monitor.height = world.height
    await app.monitor.cycle()


async def _exchanged(app: App, escrow_id: str) -> bool:
    _, esc = await call(app, "GET", f"/v1/escrows/{escrow_id}")
    return bool(esc["session"].get("multisig_exchanged"))


def _calls_before_submit(world: FakeWalletWorld, since: int) -> list[str]:
    """The wallet-rpc methods called from `since` up to the first submit_multisig."""
    methods = [m for _, m in world.calls[since:]]
    assert "submit_multisig" in methods, methods
    return methods[: methods.index("submit_multisig")]


def _received(world: FakeWalletWorld, address: str) -> list[int]:
    return [a for tx in world.txs.values() for to, a in tx.outputs if to == address]


class _Observed(list[tuple[int, str]]):
    """The fake's call log, setting `event` when `method` is called."""

    def __init__(self, calls: list[tuple[int, str]], method: str, event: trio.Event) -> None:
        super().__init__(calls)
        self._method = method
        self._event = event

    def append(self, call: tuple[int, str]) -> None:
        super().append(call)
        if call[1] == self._method:
            self._event.set()


async def _release(app: App, escrow_id: str, address: str) -> dict[str, Any]:
    status, body = await call(app, "POST", f"/v1/escrows/{escrow_id}/release", {"address": address})
    assert status == 202, body
    result: dict[str, Any] = body
    return result


async def test_release_on_a_pre_exchanged_session_makes_no_exchange(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Once an escrow is ready the monitor has its session exchange multisig info among the
    three wallets (GET shows `multisig_exchanged`); the release is then refresh, propose,
    co-sign, submit: no export/import in it, and the whole balance is paid once."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        esc = await ready_escrow(app, world, "w1", by_hand=True)
        assert not await _exchanged(app, "w1")
        await _cycle(app, world)
        assert await _exchanged(app, "w1")
        assert app.monitor.statistics().pre_exchanges == 1
        await _cycle(app, world)  # done once: not asked again
        assert app.monitor.statistics().pre_exchanges == 1

        vendor = world.add_wallet("vendor-payout", "x")
        since = len(world.calls)
        await _release(app, "w1", vendor.address)
        before_submit = _calls_before_submit(world, since)
        assert not set(EXCHANGE) & set(before_submit), before_submit
        assert {"sweep_all", "sign_multisig"} <= set(before_submit)
        assert _received(world, vendor.address) == [AMOUNT - FEE]
        assert world.epoch(esc["multisig_address"]) == 1
        nursery.cancel_scope.cancel()


async def test_funds_arriving_after_the_exchange_cause_a_fresh_exchange(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """More funds after the pre-exchange: their outputs are not covered by it (a sweep would
    leave them out), so the release exchanges afresh and pays both payments, in one tx."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        esc = await ready_escrow(app, world, "w2", by_hand=True)
        await _cycle(app, world)
        assert await _exchanged(app, "w2")
        world.credit(esc["multisig_address"], AMOUNT // 2, unlocked=True)

        vendor = world.add_wallet("vendor-payout", "x")
        since = len(world.calls)
        await _release(app, "w2", vendor.address)
        before_submit = _calls_before_submit(world, since)
        assert set(EXCHANGE) <= set(before_submit), before_submit
        assert _received(world, vendor.address) == [AMOUNT + AMOUNT // 2 - FEE]
        assert world.epoch(esc["multisig_address"]) == 1
        nursery.cancel_scope.cancel()


async def test_a_restored_wallet_rpc_means_a_fresh_exchange(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """kill -9 of a signer's wallet-rpc after the pre-exchange: the session restores it, and the
    release exchanges afresh (the reopened wallet may lack what it never stored) and pays once."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        esc = await ready_escrow(app, world, "w6", by_hand=True)
        await _cycle(app, world)
        assert await _exchanged(app, "w6")
        fake_pool(app).fake_of("escrow-w6-vendor").kill()

        vendor = world.add_wallet("vendor-payout", "x")
        since = len(world.calls)
        await _release(app, "w6", vendor.address)
        before_submit = _calls_before_submit(world, since)
        assert set(EXCHANGE) <= set(before_submit), before_submit
        assert _received(world, vendor.address) == [AMOUNT - FEE]
        assert world.epoch(esc["multisig_address"]) == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("role", "method", "code", "message"),
    [
        ("vendor", "sweep_all", -16, "No transaction created"),
        ("arbiter", "sign_multisig", -35, STALE),
    ],
)
async def test_a_warm_payout_refused_for_stale_info_exchanges_afresh(
    tmp_path: Path, autojump_clock: trio.abc.Clock, role: str, method: str, code: int, message: str
) -> None:
    """wallet-rpc refuses the warm proposal or signature for want of fresh multisig info: the
    release exchanges afresh, proposes again and pays the whole balance once (202, no error)."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        esc = await ready_escrow(app, world, "w5", by_hand=True)
        await _cycle(app, world)
        assert await _exchanged(app, "w5")
        fake_pool(app).fake_of(f"escrow-w5-{role}").fail_next(method, code, message)

        vendor = world.add_wallet("vendor-payout", "x")
        since = len(world.calls)
        await _release(app, "w5", vendor.address)
        methods = _calls_before_submit(world, since)
        refused = methods.index(method)
        assert set(EXCHANGE) <= set(methods[refused:]), methods
        assert methods[refused + 1 :].count("sweep_all") == 1, methods
        assert _received(world, vendor.address) == [AMOUNT - FEE]
        assert world.epoch(esc["multisig_address"]) == 1
        nursery.cancel_scope.cancel()


async def test_a_reopened_session_exchanges_afresh(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The exchange is known to the session that made it only: after the session is closed and
    reopened (no pre-exchange since), a refund exchanges afresh and pays the whole balance."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await ready_escrow(app, world, "w3", by_hand=True)
        await _cycle(app, world)
        assert await _exchanged(app, "w3")
        assert (await call(app, "DELETE", "/v1/escrows/w3/session"))[1]["closed"] is True
        assert (await call(app, "POST", "/v1/escrows/w3/session"))[1]["created"] is True
        assert not await _exchanged(app, "w3")

        buyer = world.add_wallet("buyer-refund", "x")
        since = len(world.calls)
        status, body = await call(app, "POST", "/v1/escrows/w3/refund", {"address": buyer.address})
        assert status == 202, body
        before_submit = _calls_before_submit(world, since)
        assert set(EXCHANGE) <= set(before_submit), before_submit
        assert _received(world, buyer.address) == [AMOUNT - FEE]
        nursery.cancel_scope.cancel()


async def test_a_payout_in_flight_is_not_disturbed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """While a release is being prepared the monitor asks for no pre-exchange, and a session
    that has begun a payout refuses one: no export/import between signing and submitting, and
    one payout of the whole balance."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        esc = await ready_escrow(app, world, "w4", by_hand=True)
        vendor = world.add_wallet("vendor-payout", "x")
        arbiter = fake_pool(app).fake_of("escrow-w4-arbiter")
        arbiter.call_delay = 5.0  # the payout's steps on the co-signer take a while
        proposed = trio.Event()
        world.calls = _Observed(world.calls, "sweep_all", proposed)
        done = trio.Event()

        async def release() -> None:
            await _release(app, "w4", vendor.address)
            done.set()

        since = len(world.calls)
        nursery.start_soon(release)
        # No timeouts around these waits: a failed release fails the test through the nursery.
        await proposed.wait()  # the payout is being prepared
        await _cycle(app, world)  # the payout is recorded: the monitor leaves the escrow alone
        assert app.monitor.statistics().pre_exchanges == 0
        # Asked directly (e.g. a monitor check sent just before the payout was recorded).
        asked = await app.registry.call("w4", PreExchange(), caller=Caller.MONITOR)
        assert asked is False
        await done.wait()
        methods = [m for _, m in world.calls[since:]]
        sign = methods.index("sign_multisig")
        submit = methods.index("submit_multisig")
        assert not set(EXCHANGE) & set(methods[sign:submit]), methods[sign:submit]
        assert _received(world, vendor.address) == [AMOUNT - FEE]
        assert world.epoch(esc["multisig_address"]) == 1
        nursery.cancel_scope.cancel()
