"""The monitor's check of a submitted payout, driven by hand on the fakes."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.fakes import call, sqlite
from tests.harness import app_on_fakes, ready_escrow


async def test_a_check_from_a_stale_listing_does_not_end_an_ended_escrow_again(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A confirmation check made on a record listed while the escrow was releasing, after
    another check has completed it (a cluster host that listed it before the owner finished),
    records the new count and tells nothing: one `completed` event, and the monitor goes on."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await ready_escrow(app, world, "c1", by_hand=True)
        payee = world.add_wallet("payee", "x").address
        status, body = await call(app, "POST", "/v1/escrows/c1/release", {"address": payee})
        assert status == 202, body
        stale = sqlite(app).get_escrow("c1")
        assert stale is not None
        assert stale.state == "releasing"

        world.mine(10)
        app.monitor.height = world.height
        await app.monitor.cycle()
        _, done = await call(app, "GET", "/v1/escrows/c1")
        assert done["state"] == "completed"

        world.mine(1)
        await app.monitor.check_payout(stale, world.height)
        _, after = await call(app, "GET", "/v1/escrows/c1")
        assert after["state"] == "completed"
        assert after["payout"]["confirmations"] == 11
        _, feed = await call(app, "GET", "/v1/events?after=0")
        assert [e["type"] for e in feed["events"]].count("completed") == 1
        nursery.cancel_scope.cancel()
