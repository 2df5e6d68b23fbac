"""The lease holder self-fences on its own clock: it gives up before the database lease can expire.

Runs on trio's mock clock with a stand-in for the database (no PostgreSQL needed). The holder's
clock (the boot clock in walletd) is injected: trio's mock clock, plus a jump where a test
suspends the machine (the boot clock runs on during a suspend, trio's monotonic clock does not)."""

from __future__ import annotations

import pytest
import trio

from walletd.cluster.db import ClusterUnavailable, Database
from walletd.cluster.holder import SLICE, LeaseHolder
from walletd.cluster.leases import Leases, Tenure

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


async def test_a_suspend_past_the_deadline_loses_the_lease_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The deadline is measured on the boot clock, which runs on while the machine is suspended
    (trio's monotonic clock stops): right after a suspend longer than the lease, the holder
    already says the lease is not valid (what a money-moving call asks first), and it declares
    the lease lost within one slice of its sleep, without renewing: by then the database may
    have given it to another host."""
    suspended = 0.0

    def clock() -> float:
        return trio.current_time() + suspended

    leases = ScriptedLeases()
    lost = trio.Event()

    async def on_lost() -> None:
        lost.set()

    holder = LeaseHolder(leases, TENURE, on_lost, acquired_at=clock(), clock=clock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder.run)
        await trio.sleep(TTL * 2)
        assert holder.valid(), "renewed every ttl/3 meanwhile"
        renews = len(leases.renew_starts)
        suspended += TTL  # the machine slept for a whole ttl; trio's clock did not move
        assert not holder.valid()
        resumed = trio.current_time()
        await lost.wait()
        assert trio.current_time() - resumed <= SLICE
        assert holder.lost
        assert len(leases.renew_starts) == renews, "a lapsed lease is not renewed"
