"""A fake monerod for failover tests: the fake world's chain, seen through one daemon that can be
stopped, hung, stuck at a height or lagging behind (the faults `DaemonFailover` must notice)."""

from __future__ import annotations

import trio

from walletd.errors import RpcUnreachable
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.wallets.rpc import TxStatus

__all__ = ["FakeMonerod"]


class FakeMonerod:
    def __init__(self, world: FakeWalletWorld, address: str = "127.0.0.1:18081") -> None:
        self.world = world
        self.address = address
        self.down = False  # connection refused, as a stopped monerod
        self.hung = False  # accepts, never answers, as a stopped (SIGSTOP) or wedged monerod
        self.stuck_at: int | None = None  # answers, but its chain stopped growing here
        self.lag = 0  # blocks behind the world's chain (still syncing)
        self.forgotten: set[str] = set()  # txids it lost (pool flushed, restarted): unknown here
        self.calls = 0

    async def _answer(self, method: str) -> None:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if self.hung:
            await trio.sleep_forever()
        if self.down:
            raise RpcUnreachable(method, "ConnectError")

    async def height(self) -> int:
        await self._answer("get_info")
        if self.stuck_at is not None:
            return self.stuck_at
        return max(0, self.world.height - self.lag)

    async def tx_status(self, txid: str) -> TxStatus | None:
        await self._answer("get_transactions")
        tx = self.world.txs.get(txid)
        if tx is None or txid in self.forgotten:
            return None
        return TxStatus(in_pool=tx.height is None, block_height=tx.height)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
