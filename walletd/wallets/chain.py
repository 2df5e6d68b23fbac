"""What walletd asks monerod: the `Chain` protocol.

`wallets.rpc.DaemonRpc` is the real one; tests and the dev sandbox stand in with a fake chain.
The monitor (heights, payout confirmations), the payout steps (is a refused blob already known?)
and `/v1/health` take a `Chain`, never a concrete client.
"""

from __future__ import annotations

from typing import Protocol

from walletd.wallets.rpc import TxStatus

__all__ = ["Chain"]


class Chain(Protocol):
    async def height(self) -> int:
        """The daemon's chain height."""
        ...

    async def tx_status(self, txid: str) -> TxStatus | None:
        """Where the daemon has `txid`: in the pool, in a block, or nowhere (None)."""
        ...

    async def fee_per_byte(self, priority: int) -> int:
        """The fee per byte of weight the wallets pay at `priority` (0: the default, 1-4)."""
        ...

    async def aclose(self) -> None:
        """Close the connection (the owner of the chain client calls it at shutdown)."""
        ...
