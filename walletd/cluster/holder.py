"""Keeps one escrow lease renewed, and gives it up on the local clock before the database can.

Renews start every ttl/3. Each successful renew, begun at local monotonic time `t`, extended the
lease to at least `t + ttl` by the database clock (the database stamps it after `t`), so the lease
is surely ours until `t + ttl`. The holder declares it lost at `t + ttl - margin`, with no renew
having succeeded since, and calls `on_lost` (later: stop the escrow's wallet-rpc children). That
happens before any other host can acquire it, whatever the database or the network do meanwhile:
a renew that hangs is abandoned at the deadline. Assumes the local clock runs no slower than the
database's by more than `margin` per ttl.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

from walletd.cluster.db import ClusterUnavailable
from walletd.cluster.leases import Leases, Tenure

__all__ = ["LeaseHolder"]

log = structlog.get_logger(__name__)

RETRY_DELAY = 0.5  # seconds between renew attempts after the database failed one


class LeaseHolder:
    """Holds `tenure` for as long as renewals succeed in time; `run` returns when it is lost."""

    def __init__(
        self,
        leases: Leases,
        tenure: Tenure,
        on_lost: Callable[[], Awaitable[None]],
        *,
        acquired_at: float,
        margin: float | None = None,
    ) -> None:
        """`acquired_at`: local `trio.current_time()` taken just before the acquire request."""
        self.leases = leases
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
        """Local time after which this host must act as if the lease were gone."""
        return self._renewed_from + self.leases.ttl - self.margin

    async def run(self) -> None:
        """Renew every ttl/3 until the lease is lost (refused, or not renewed before the
        deadline); then call `on_lost` and return. Cancel it to stop holding (then release)."""
        ttl = self.leases.ttl
        while True:
            await trio.sleep_until(min(self._renewed_from + ttl / 3, self.deadline))
            if not await self._renew_before_deadline():
                break
        self.lost = True
        log.warning(
            "lease lost: self-fencing",
            escrow_id=self.tenure.escrow_id,
            epoch=self.tenure.epoch,
        )
        await self.on_lost()

    async def _renew_before_deadline(self) -> bool:
        with trio.move_on_at(self.deadline):
            while True:
                started = trio.current_time()
                try:
                    ok = await self.leases.renew(self.tenure)
                except ClusterUnavailable:
                    await trio.sleep(RETRY_DELAY)  # keep trying until the deadline
                    continue
                if ok:
                    self._renewed_from = started
                return ok  # False: refused (expired or taken): lost at once
        return False
