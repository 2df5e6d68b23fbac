"""Keeps one escrow lease renewed, and gives it up on the local clock before the database can.

Renews start every ttl/3. Each successful renew, begun at local time `t`, extended the lease to at
least `t + ttl` by the database clock (the database stamps it after `t`), so the lease is surely
ours until `t + ttl`. The holder declares it lost at `t + ttl - margin`, with no renew having
succeeded since, and calls `on_lost` (stop the escrow's wallet-rpc children). That happens before
any other host can acquire it, whatever the database or the network do meanwhile: a renew that
hangs is abandoned at the deadline. Assumes the local clock runs no slower than the database's by
more than `margin` per ttl.

The local clock is CLOCK_BOOTTIME, not trio's (CLOCK_MONOTONIC): the monotonic clock stops while
the machine or VM is suspended, the database's does not, so after a resume a monotonic deadline
would still look ahead while the lease was given away meanwhile. The holder still sleeps with
trio, in slices of at most `SLICE` (trio's sleep resumes with the monotonic time it had left), and
decides from the boot clock each time it wakes: a suspend is noticed within a slice by the
holder, and at once by `valid()`, which every holding asks before a money-moving wallet call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
import trio

from walletd.cluster.leases import Leases, Tenure
from walletd.errors import ClusterUnavailable

__all__ = ["SLICE", "LeaseHolder", "boottime"]

log = structlog.get_logger(__name__)

RETRY_DELAY = 0.5  # seconds between renew attempts after the database failed one
SLICE = 0.5  # longest trio sleep between looks at the boot clock (a suspend is seen within it)
_RESOLUTION = 1e-6  # seconds: a deadline this close counts as reached


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME: monotonic, and running on while the system is suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class LeaseHolder:
    """Holds `tenure` for as long as renewals succeed in time; `run` returns when it is lost."""

    def __init__(
        self,
        leases: Leases,
        tenure: Tenure,
        on_lost: Callable[[], Awaitable[None]],
        *,
        acquired_at: float,
        clock: Callable[[], float],
        margin: float | None = None,
    ) -> None:
        """`acquired_at`: `clock()` taken just before the acquire request. `clock`: `boottime`;
        tests inject one (trio's clock, plus a jump as a suspend would make). No default: an
        `acquired_at` read on another clock than the holder's made it never renew (a test read
        it on trio's clock; the holder measured on the boot clock)."""
        self.leases = leases
        self.clock = clock
        self.tenure = tenure
        self.on_lost = on_lost
        ttl = leases.ttl
        self.margin = ttl / 5 if margin is None else margin
        if not 0 < self.margin < ttl * 2 / 3:
            raise ValueError("margin must leave time for renewals (0 < margin < 2/3 ttl)")
        self._renewed_from = acquired_at  # start of the last request that set the expiry
        self.lost = False

    @property
    def deadline(self) -> float:
        """Time on `clock` after which this host must act as if the lease were gone."""
        return self._renewed_from + self.leases.ttl - self.margin

    def valid(self) -> bool:
        """Whether the lease is still surely ours now, by the boot clock: False once lost, and
        at once after a suspend that outlasted the deadline, before `run` wakes to see it."""
        return not self.lost and self.clock() < self.deadline

    async def _sleep_until(self, when: float) -> None:
        """Sleep until `clock()` reaches `when` (within a microsecond: a smaller remainder is
        float rounding, and a sleep that short may not move trio's clock at all, so looping on
        it would spin), waking at least every SLICE to look."""
        while (left := when - self.clock()) > _RESOLUTION:  # noqa: ASYNC110 - a clock, not an event
            await trio.sleep(min(left, SLICE))

    async def run(self) -> None:
        """Renew every ttl/3 until the lease is lost (refused, or not renewed before the
        deadline); then call `on_lost` and return. Cancel it to stop holding (then release)."""
        ttl = self.leases.ttl
        while True:
            await self._sleep_until(min(self._renewed_from + ttl / 3, self.deadline))
            if self.clock() >= self.deadline or not await self._renew_before_deadline():
                break
        self.lost = True
        log.warning(
            "lease lost: self-fencing",
            escrow_id=self.tenure.escrow_id,
            epoch=self.tenure.epoch,
        )
        await self.on_lost()

    async def _renew_before_deadline(self) -> bool:
        """Renew, retrying a failing database, until it answers or the deadline passes (by the
        boot clock: a watcher cancels the renew then)."""
        renewed = False
        async with trio.open_nursery() as nursery:

            async def renew() -> None:
                nonlocal renewed
                renewed = await self._renew()
                nursery.cancel_scope.cancel()

            nursery.start_soon(renew)
            await self._sleep_until(self.deadline)
            nursery.cancel_scope.cancel()
        return renewed

    async def _renew(self) -> bool:
        while True:
            started = self.clock()
            try:
                ok = await self.leases.renew(self.tenure)
            except ClusterUnavailable:
                await trio.sleep(RETRY_DELAY)  # keep trying until the deadline
                continue
            if ok:
                self._renewed_from = started
            return ok  # False: refused (expired or taken): lost at once
