"""The messages a session actor understands: frozen attrs classes, matched in `EscrowSession`.

A request travels as `(message, reply_channel)`; the reply is an `outcome.Outcome`. `idempotent`
says whether a session may repeat the message after restoring a dead wallet-rpc: reads may, a
payout step never does (its caller decides, with the payout record in hand).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from walletd.ids import Role

__all__ = [
    "Balance",
    "Funding",
    "GetBalance",
    "GetFunding",
    "GetTransfer",
    "Leave",
    "Message",
    "PreparePayout",
    "Refresh",
    "SetupMultisig",
    "Store",
    "SubmitPayout",
    "SyncAll",
    "Transfer",
    "WalletCall",
]


@attrs.frozen
class Message:
    idempotent: ClassVar[bool] = True
    # Messages that move money check, before anything else, that each process holds the wallet
    # the session expects (its address), even though the session checked it when it opened.
    checks_identity: ClassVar[bool] = False
    # Messages after which the session stores every wallet (multisig import state, a spend).
    changes_wallets: ClassVar[bool] = False


@attrs.frozen
class GetBalance(Message):
    refresh: bool = False


@attrs.frozen
class GetFunding(Message):
    """Balance, unlocked balance and the confirmations of the incoming transfers that cover
    `amount` (monitor). Without an amount every incoming transfer must count."""

    refresh: bool = False
    amount: int | None = None


@attrs.frozen
class Refresh(Message):
    """Refresh the wallets from the daemon (the monitor sends this when the chain grew)."""


@attrs.frozen
class GetTransfer(Message):
    txid: str


@attrs.frozen
class Store(Message):
    """Write every wallet of the session to disk now."""


@attrs.frozen
class WalletCall(Message):
    """A raw wallet-rpc call on one role's wallet: used by the escrow lifecycle for payout steps."""

    idempotent: ClassVar[bool] = False
    checks_identity: ClassVar[bool] = True
    role: Role
    method: str
    params: dict[str, Any] = attrs.field(factory=dict, repr=False)
    timeout: float | None = None


@attrs.frozen
class SetupMultisig(Message):
    """Make the three freshly created wallets one 2-of-3 multisig; answers its address."""

    idempotent: ClassVar[bool] = False


@attrs.frozen
class PreparePayout(Message):
    """Refresh and sync the two signers, sweep to `address`, co-sign: answers a signed PayoutTx.

    Nothing leaves the wallets until `SubmitPayout`, so repeating this after a restore is safe."""

    changes_wallets: ClassVar[bool] = True
    checks_identity: ClassVar[bool] = True
    proposer: Role
    cosigner: Role
    address: str


@attrs.frozen
class SubmitPayout(Message):
    """Relay a signed payout that the caller has already recorded. Repeating it relays the same
    blob, which yields the same txids and never a second transaction."""

    changes_wallets: ClassVar[bool] = True
    checks_identity: ClassVar[bool] = True
    role: Role
    txids: tuple[str, ...]
    signed_txset: str = attrs.field(repr=False)


@attrs.frozen
class SyncAll(Message):
    """Refresh all three wallets and exchange multisig info among them (after a spend, so the
    party that did not sign shows the right balance)."""

    changes_wallets: ClassVar[bool] = True


@attrs.frozen
class Leave(Message):
    """Finish the call in hand, store and close the wallets, and stop."""

    reason: str


@attrs.frozen
class Balance:
    balance: int
    unlocked_balance: int
    blocks_to_unlock: int
    height: int

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.frozen
class Funding:
    balance: int
    unlocked_balance: int
    # Of the least confirmed among the most confirmed incoming transfers that together cover
    # the amount asked for (all of them when they do not, or no amount was given); 0 when none.
    confirmations: int
    height: int


@attrs.frozen
class Transfer:
    txid: str
    direction: str  # "in" | "out"
    amount: int
    height: int
    confirmations: int
    in_pool: bool

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)
