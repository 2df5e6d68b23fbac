"""The lease holder self-fences on its own clock: it gives up before the database lease can expire.

Runs on trio's mock clock with a stand-in for the database (no PostgreSQL needed). The holder's
clock (the boot clock in walletd) is injected: trio's mock clock, plus a jump where a test
suspends the machine (the boot clock runs on during a suspend, trio's monotonic clock does not)."""

from __future__ import annotations

import pytest
import trio

from walletd.cluster.db import Database
from walletd.cluster.holder import LeaseHolder
from walletd.cluster.leases import Leases, Tenure
from walletd.errors import ClusterUnavailable

TTL = 15.0
TENURE = Tenure("e1", "A", 1)


class ScriptedLeases(Leases):
    """Renewals answer from `mode`: "ok", "refuse", "hang" (never answers) or "down"."""

    def __init__(self) -> None:
        super().__init__(Database("postgresql://unused@127.0.0.1:1/x"), TTL)
        self.mode = "ok"
        self.renew_starts: list[float] = []

    async def renew(self, tenure: Tenure) -> bool:
        self.renew_starts.append(trio.current_time())
        await trio.lowlevel.checkpoint()  # a real renew always waits for the database
        if self.mode == "hang":
            await trio.sleep_forever()
        if self.mode == "down":
            raise ClusterUnavailable("down")
        return self.mode == "ok"


async def _hold(leases: ScriptedLeases, switch_at: float, mode: str) -> tuple[float, float]:
    """Hold from t0, switch the database's behaviour at t0 + switch_at; return (t0, time lost)."""
    t0 = trio.current_time()
    lost_at: list[float] = []

    async def on_lost() -> None:
        lost_at.append(trio.current_time())

    holder = LeaseHolder(leases, TENURE, on_lost, acquired_at=t0, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder.run)
        await trio.sleep(switch_at)
        leases.mode = mode
    assert holder.lost
    return t0, lost_at[0]


async def test_renews_every_third_of_ttl(autojump_clock: trio.abc.Clock) -> None:
    """While the database answers, the holder renews every ttl/3 and keeps the lease."""
    leases = ScriptedLeases()
    t0, lost = await _hold(leases, 100.0, "refuse")
    gaps = [b - a for a, b in zip([t0, *leases.renew_starts], leases.renew_starts, strict=False)]
    assert all(abs(g - TTL / 3) < 1e-6 for g in gaps[:-1])
    assert lost == pytest.approx(leases.renew_starts[-1])  # refused: lost at once


async def test_hung_database_self_fences_before_expiry(autojump_clock: trio.abc.Clock) -> None:
    """When renewals hang (database or network stalled), the holder declares the lease lost at
    its last successful renew's start + ttl - margin: before the database lease can expire."""
    leases = ScriptedLeases()
    _, lost = await _hold(leases, 21.0, "hang")
    last_ok = max(t for t in leases.renew_starts if t < 21.0)
    earliest_expiry = last_ok + TTL  # the database stamped the expiry after the request began
    assert lost == pytest.approx(last_ok + TTL - TTL / 5)
    assert lost < earliest_expiry


async def test_database_down_retries_then_self_fences(autojump_clock: trio.abc.Clock) -> None:
    """A database that fails renewals is retried until the deadline, then the lease is given up
    (never later than the deadline)."""
    leases = ScriptedLeases()
    _, lost = await _hold(leases, 21.0, "down")
    ok_starts = [t for t in leases.renew_starts if t < 21.0]
    assert len(leases.renew_starts) > len(ok_starts) + 1  # it retried
    assert lost == pytest.approx(ok_starts[-1] + TTL - TTL / 5)
