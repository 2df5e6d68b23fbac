"""Several monerod, tried in order (`monero.daemon_addresses`): which one walletd uses now.

`DaemonFailover` is the `Chain` the rest of walletd sees: every call goes to the daemon in use, so
the monitor's heights, the payout checks and `/v1/health` follow it. Its `run` loop asks every
configured daemon for its height (`get_info`, bounded by `timeout`) each `interval` and decides:

- the daemon in use has failed: `failures` answers in a row missing or late, or its height has not
  moved for `stall_after` while another daemon is ahead of it (stuck or cut off from the network);
- then the first daemon in order that answers and is not stalled becomes the one in use (a payout
  still waits until the daemon in use has reached the height where its escrow was seen ready);
- a daemon earlier in the order than the one in use that has answered `recover_checks` times in a
  row and has caught up with it is taken back (the order is the operator's preference).

A switch calls `on_switch(from, to)`: the app restarts the wallet-rpc children against the new
daemon. Never `set_daemon` to another daemon: monero issue 10246, it breaks multisig transaction
creation in that process.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

import attrs
import structlog
import trio

from walletd.errors import WalletdError
from walletd.wallets.chain import Chain
from walletd.wallets.rpc import TxStatus

__all__ = ["DaemonFailover", "DaemonView"]

log = structlog.get_logger(__name__)

CHECK_INTERVAL = 2.0
CHECK_TIMEOUT = 5.0
FAILURES_TO_SWITCH = 2
CHECKS_TO_RETURN = 3
STALL_AFTER = 600.0  # five mainnet blocks; a daemon merely slow to catch up is back well before

SwitchHook = Callable[[str, str], Awaitable[None]]


@attrs.define
class DaemonView:
    """What the health checks know of one daemon."""

    address: str
    chain: Chain
    height: int | None = None
    moved_at: float = -math.inf  # when its height last changed
    failures: int = 0  # checks in a row without an answer in time
    answers: int = 0  # checks in a row answered in time
    error: str | None = None

    def answering(self) -> bool:
        return self.failures == 0 and self.answers > 0


class DaemonFailover:
    """A `Chain` over several daemons: the one in use, chosen by health checks (module doc)."""

    def __init__(
        self,
        daemons: Sequence[tuple[str, Chain]],
        *,
        on_switch: SwitchHook | None = None,
        interval: float = CHECK_INTERVAL,
        timeout: float = CHECK_TIMEOUT,
        failures: int = FAILURES_TO_SWITCH,
        recover_checks: int = CHECKS_TO_RETURN,
        stall_after: float = STALL_AFTER,
    ) -> None:
        if not daemons:
            raise ValueError("at least one daemon")
        self.views = [DaemonView(address, chain) for address, chain in daemons]
        self.on_switch = on_switch
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self.recover_checks = recover_checks
        self.stall_after = stall_after
        self._in_use = self.views[0]
        self.switches = 0

    @property
    def current(self) -> str:
        """The address of the daemon in use."""
        return self._in_use.address

    # ---- Chain -----------------------------------------------------------------------------------

    async def height(self) -> int:
        return await self._in_use.chain.height()

    async def tx_status(self, txid: str) -> TxStatus | None:
        return await self._in_use.chain.tx_status(txid)

    async def aclose(self) -> None:
        for view in self.views:
            await view.chain.aclose()

    # ---- health checks ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if len(self.views) == 1:
            return  # nothing to fail over to
        while True:
            await self.check()
            await trio.sleep(self.interval)

    async def check(self) -> None:
        """Ask every daemon once (together), then switch if the daemon in use failed or a
        preferred one is back."""
        async with trio.open_nursery() as nursery:
            for view in self.views:
                nursery.start_soon(self._probe, view)
        target = self._choose()
        if target is not self._in_use:
            await self._switch(target)

    async def _probe(self, view: DaemonView) -> None:
        now = trio.current_time()
        try:
            with trio.fail_after(self.timeout):
                height = await view.chain.height()
        except (WalletdError, trio.TooSlowError, KeyError, ValueError) as exc:
            view.failures += 1
            view.answers = 0
            view.error = str(exc) or type(exc).__name__
            return
        view.failures = 0
        view.answers += 1
        view.error = None
        if height != view.height:
            view.height = height
            view.moved_at = now

    def _top(self) -> int | None:
        heights = [v.height for v in self.views if v.answering() and v.height is not None]
        return max(heights, default=None)

    def _stalled(self, view: DaemonView) -> bool:
        """Its height stands still while another daemon is ahead: stuck or cut off."""
        top = self._top()
        if view.height is None or top is None or top <= view.height:
            return False
        return trio.current_time() - view.moved_at >= self.stall_after

    def _usable(self, view: DaemonView) -> bool:
        return view.answering() and not self._stalled(view)

    def _choose(self) -> DaemonView:
        in_use = self._in_use
        failed = in_use.failures >= self.failures or self._stalled(in_use)
        for view in self.views:
            if view is in_use:
                if not failed:
                    return in_use  # nothing earlier in the order is ready to take over
                continue
            if not self._usable(view):
                continue
            if failed:
                return view  # the first in order that answers (the payout checks guard heights)
            # A preferred daemon healthy again for a while and caught up: move back to it.
            caught_up = view.height is not None and view.height >= (in_use.height or 0)
            if view.answers >= self.recover_checks and caught_up:
                return view
        return in_use  # failed, but nothing else answers: keep trying it

    async def _switch(self, target: DaemonView) -> None:
        old = self._in_use
        log.warning(
            "switching monerod",
            from_=old.address,
            to=target.address,
            reason=old.error or ("stalled" if self._stalled(old) else "preferred daemon back"),
            height=target.height,
        )
        self._in_use = target
        self.switches += 1
        if self.on_switch is not None:
            await self.on_switch(old.address, target.address)
