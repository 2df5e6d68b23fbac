"""The escrow's reader: the buyer's wallet, which answers what the escrow holds and has seen.

Balance, funding and transfer reads go to one wallet (all three see the same multisig address).
Auto-refresh is off in every session (it would run on wallet-rpc's only RPC thread and stall our
calls), so the reader's height moves only when walletd refreshes it: one `get_height` after each
refresh serves every balance read until the next one. What the session does to its wallets
otherwise (a restore, any other message) may have moved it: the session then `forget`s it.
"""

from __future__ import annotations

from collections.abc import Callable

from walletd.errors import RpcCallError
from walletd.sessions.messages import Balance, Funding, Transfer
from walletd.wallets.rpc import WalletRpc

__all__ = ["TX_NOT_FOUND", "Reader"]

TX_NOT_FOUND = -8


class Reader:
    """Reads of the escrow through its reader wallet, with what it knows of its own scan."""

    def __init__(self, rpc: Callable[[], WalletRpc]) -> None:
        self._rpc = rpc  # the reader's client now (a restore gives it a new process)
        self.height: int | None = None  # the reader's height since its last refresh, if asked
        # The reader wallet synced with the chain since this process opened it: until then a
        # transaction it does not know may be one it has not scanned yet.
        self.synced = False

    def forget(self) -> None:
        """Something else may have refreshed the reader: ask its height again."""
        self.height = None

    async def refresh(self) -> None:
        """Scan the chain in the reader wallet; its cached height is stale from here on."""
        await self._rpc().call("refresh")
        self.height = None
        self.synced = True

    async def balance(self, refresh: bool) -> Balance:
        rpc = self._rpc()
        if refresh:
            await self.refresh()
        if self.height is None:
            self.height = int((await rpc.call("get_height")).get("height", 0))
        bal = await rpc.call("get_balance", {"account_index": 0})
        return Balance(
            balance=int(bal.get("balance", 0)),
            unlocked_balance=int(bal.get("unlocked_balance", 0)),
            blocks_to_unlock=int(bal.get("blocks_to_unlock", 0)),
            height=self.height,
        )

    async def funding(self, refresh: bool, amount: int | None = None) -> Funding:
        """The escrow's funding, its confirmations counted on the payments that cover `amount`.

        Not the minimum over every incoming transfer: anyone can send the address 1 piconero
        every few blocks, and the newest dust would then hold a fully funded escrow out of
        `ready` for ever. The oldest (most confirmed) transfers are taken first until they
        add up to the amount; the last one taken is the least confirmed of that set."""
        bal = await self.balance(refresh)
        incoming = await self._rpc().call("get_transfers", {"in": True})
        transfers = sorted(
            (
                (int(t.get("confirmations", 0)), int(t.get("amount", 0)))
                for t in incoming.get("in", [])
            ),
            reverse=True,
        )
        confirmations = transfers[-1][0] if transfers else 0
        if amount is not None:
            covered = 0
            for conf, value in transfers:
                covered += value
                if covered >= amount:
                    confirmations = conf
                    break
        return Funding(
            balance=bal.balance,
            unlocked_balance=bal.unlocked_balance,
            confirmations=confirmations,
            height=bal.height,
        )

    async def transfer(self, txid: str) -> Transfer | None:
        rpc = self._rpc()
        try:
            result = await rpc.call("get_transfer_by_txid", {"txid": txid})
        except RpcCallError as exc:
            if exc.code != TX_NOT_FOUND:
                raise
            if self.synced:
                return None
            # Not found in a wallet that has not scanned the chain since it was opened (a
            # cache stored before the transaction arrived): scan, then ask once more.
            await self.refresh()
            return await self.transfer(txid)
        t = result.get("transfer") or {}
        kind = str(t.get("type", "in"))
        return Transfer(
            txid=str(t.get("txid", txid)),
            direction="out" if kind in ("out", "pending", "failed") else "in",
            amount=int(t.get("amount", 0)),
            height=int(t.get("height", 0)),
            confirmations=int(t.get("confirmations", 0)),
            in_pool=kind in ("pool", "pending"),
        )
