"""A fixed list of externally run wallet-rpc processes, the alternative to walletd's own children.

walletd owns every endpoint exclusively, so a process is free exactly when walletd released it;
with three wallets per session, the cap is at most endpoints/3.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs
import structlog
import trio

from walletd.errors import Capacity, NoWalletFile, RpcError
from walletd.wallets.children import PoolStatistics
from walletd.wallets.process import WalletProcess
from walletd.wallets.rpc import WalletRpc

__all__ = ["Endpoint", "EndpointPool"]

log = structlog.get_logger(__name__)


@attrs.frozen
class Endpoint:
    url: str
    user: str
    password: str = attrs.field(repr=False)


class EndpointPool:
    """A fixed list of externally run wallet-rpc processes, each handed to one owner at a time.

    walletd owns every endpoint exclusively, so a process is free exactly when walletd released
    it; nothing is ever closed on the way out (that could close an owner's wallet).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        call_timeout: float = 30.0,
        acquire_timeout: float = 30.0,
        close_timeout: float = 5.0,
        retry_interval: float = 30.0,
    ) -> None:
        if not endpoints:
            raise ValueError("EndpointPool needs at least one endpoint")
        self.capacity: int | None = len(endpoints)
        self._acquire_timeout = acquire_timeout
        self._close_timeout = close_timeout
        self._retry_interval = retry_interval
        self._procs = [
            WalletProcess(
                _endpoint_ident(e.url),
                WalletRpc(e.url, user=e.user, password=e.password, timeout=call_timeout),
                external=True,
            )
            for e in endpoints
        ]
        self._free_send, self._free_recv = trio.open_memory_channel[WalletProcess](len(endpoints))
        for proc in self._procs:
            self._free_send.send_nowait(proc)
        self._busy: set[WalletProcess] = set()
        self._out: list[WalletProcess] = []  # discarded and not yet known clean

    def set_daemon_address(self, address: str) -> None:
        """External endpoints keep the daemon their operator gave them (config refuses failover
        with endpoints: re-pointing them would take `set_daemon`, monero issue 10246)."""
        raise ValueError(f"cannot move external wallet-rpc endpoints to {address}")

    def statistics(self) -> PoolStatistics:
        """Endpoints are never restarted by walletd: a dead one is kept out until it answers."""
        return PoolStatistics(idle=self.free, busy=len(self._busy), restarts=0)

    @property
    def free(self) -> int:
        return len(self._procs) - len(self._busy) - len(self._out)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check each endpoint once, then retry the ones kept out; close the clients at the end."""
        try:
            async with trio.open_nursery() as nursery:
                for proc in self._procs:
                    nursery.start_soon(self._probe, proc)
            task_status.started()
            while True:
                await trio.sleep(self._retry_interval)
                for proc in list(self._out):
                    if await self._try_close(proc):
                        self._out.remove(proc)
                        self._free_send.send_nowait(proc)
                        log.info("wallet-rpc endpoint usable again", ident=proc.ident)
        finally:
            with trio.move_on_after(2.0) as cs:
                cs.shield = True
                for proc in self._procs:
                    await proc.rpc.aclose()

    async def _probe(self, proc: WalletProcess) -> None:
        try:
            await proc.rpc.call("get_version", timeout=5.0)
        except RpcError as exc:
            log.warning("wallet-rpc endpoint unreachable", ident=proc.ident, error=str(exc))
        else:
            log.info("wallet-rpc endpoint reachable", ident=proc.ident)

    async def acquire(self) -> WalletProcess:
        """A free endpoint, owned by the caller until release/discard; Capacity after a timeout."""
        with trio.move_on_after(self._acquire_timeout):
            proc = await self._free_recv.receive()
            proc.uses += 1
            self._busy.add(proc)
            return proc
        raise Capacity(
            f"no wallet-rpc endpoint became free within {self._acquire_timeout:g} s "
            f"({len(self._procs)} configured)"
        )

    async def release(self, proc: WalletProcess) -> None:
        if proc not in self._busy:
            raise ValueError(f"{proc!r} is not held by anyone")
        self._busy.discard(proc)
        self._free_send.send_nowait(proc)
        await trio.lowlevel.checkpoint()

    async def discard(self, proc: WalletProcess, *, damaged: bool = False) -> None:
        """Put it back only if `close_wallet` works now; else keep it out and retry later.
        `damaged`: the wallet it holds is closed without being saved."""
        if proc not in self._busy:
            raise ValueError(f"{proc!r} is not held by anyone")
        self._busy.discard(proc)
        with trio.CancelScope(shield=True):
            clean = await self._try_close(proc, save=not damaged)
        if clean:
            self._free_send.send_nowait(proc)
        else:
            self._out.append(proc)
            log.warning("wallet-rpc endpoint kept out until it answers", ident=proc.ident)

    async def _try_close(self, proc: WalletProcess, *, save: bool = True) -> bool:
        try:
            await proc.rpc.call(
                "close_wallet", {"autosave_current": save}, timeout=self._close_timeout
            )
        except NoWalletFile:
            return True  # nothing open: clean
        except RpcError as exc:
            log.debug("close_wallet on endpoint failed", ident=proc.ident, error=str(exc))
            return False
        return True


def _endpoint_ident(url: str) -> str:
    parts = urlsplit(url)
    return f"wallet-rpc:{parts.hostname}:{parts.port}"
