"""The cold worker and escrows another cluster host held (issue 19, 9): opened by need at takeover.

When a host dies, its escrows become unheld at once, all together. The requests that need them
open them; the survivors' cold workers must not open them too at that moment (on 2 cores, three
escrows are nine wallet-rpc opens at once). An escrow seen held elsewhere counts as checked then
(its owner watched it), so it is next due a cold_interval later. One host, the ownership's view
of "held elsewhere" stubbed: what the monitor does with it is what is tested.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.fakes import call
from tests.harness import app_on_fakes
from walletd.state.ownership import LocalOwnership

COLD_INTERVAL = 60.0


class _Elsewhere(LocalOwnership):
    """One host's ownership, but `owned_elsewhere` names the escrows another live host holds."""

    def __init__(self) -> None:
        super().__init__()
        self.held: set[str] = set()

    async def owned_elsewhere(self) -> set[str]:
        await trio.lowlevel.checkpoint()
        return set(self.held)


async def test_an_escrow_taken_over_from_a_dead_host_is_not_cold_opened_at_once(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """An escrow awaiting funding, held by another host, is never opened here by the cold
    worker; when that host dies (the escrow unheld), the cold worker leaves it for a
    cold_interval (a request that needs it opens it meanwhile), then checks it as usual."""
    async with trio.open_nursery() as nursery:
        app, _, _ = await app_on_fakes(nursery, tmp_path)
        status, body = await call(app, "POST", "/v1/escrows", {"escrow_id": "t1", "amount": 10**12})
        assert status == 201, body
        assert (await call(app, "DELETE", "/v1/escrows/t1/session"))[0] == 200
        elsewhere = _Elsewhere()
        elsewhere.held.add("t1")
        app.monitor._ownership = elsewhere
        app.monitor.enabled = True
        app.monitor.height_check = 1
        app.monitor.cold_interval = COLD_INTERVAL
        await nursery.start(app.monitor.run)
        await trio.sleep(2 * COLD_INTERVAL)
        assert not app.registry.is_open("t1"), "opened here while another host held it"

        elsewhere.held.clear()  # its owner died: its lease is gone
        lost_at = trio.current_time()
        await trio.sleep(COLD_INTERVAL / 2)
        assert not app.registry.is_open("t1"), "cold-opened at the takeover"
        with trio.fail_after(3 * COLD_INTERVAL):
            # The monitor offers no event for a cold open (hence ASYNC110 allowed):
            while app.monitor.statistics().cold_opens == 0:  # noqa: ASYNC110
                await trio.sleep(1)
        assert trio.current_time() - lost_at >= COLD_INTERVAL / 2
        nursery.cancel_scope.cancel()
