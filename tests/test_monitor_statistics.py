"""The monitor's `statistics()`: what it has done so far, as a frozen snapshot."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

from tests.fakes import FakeDaemon, call, fake_app, start
from walletd.monitor import MonitorStatistics
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool

AMOUNT = 10**12


async def test_statistics_count_what_the_monitor_asked_and_are_a_snapshot(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A cycle that finds a deposit counts the cycle, one funding check and one wallet store;
    the next cycle, at the same height, counts itself and the multisig exchange ahead of the
    payout, and no funding check (no new block). A statistics object already taken does not
    change, and cannot be changed."""
    world = FakeWalletWorld()
    app = fake_app(tmp_path, world, FakePool(world), chain=FakeDaemon(world))
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        _, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "s1", "amount": AMOUNT})
        none = MonitorStatistics(
            cycles=0,
            cold_opens=0,
            funding_checks=0,
            wallet_stores=0,
            pre_exchanges=0,
            resubmits=0,
        )
        assert app.monitor.statistics() == none

        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        app.monitor.height = world.height
        await app.monitor.cycle()
        first = app.monitor.statistics()
        assert first == attrs.evolve(none, cycles=1, funding_checks=1, wallet_stores=1)

        await app.monitor.cycle()
        assert app.monitor.statistics() == attrs.evolve(first, cycles=2, pre_exchanges=1)
        assert first.cycles == 1
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            first.cycles = 5  # type: ignore[misc]
        nursery.cancel_scope.cancel()
