"""The messages a session actor understands: frozen attrs classes, matched in `EscrowSession`.

Each message names its reply type (`GetBalance(Message[Balance])`), so `Registry.call` and
`SessionHandle.request` answer that type. A request travels as `(message, reply_channel)`; the
reply is an `outcome.Outcome`. `idempotent` says whether a session may repeat the message after
restoring a dead wallet-rpc: reads may, a payout step never does (its caller decides, with the
payout record in hand).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Generic, TypeVar

import attrs

from walletd.escrows.model import PayoutProof
from walletd.ids import Role
from walletd.jsontypes import JsonMapping, JsonObject
from walletd.wallets.multisig import PayoutTx

__all__ = [
    "Balance",
    "Funding",
    "GetBalance",
    "GetFunding",
    "GetPayoutProof",
    "GetTransfer",
    "Leave",
    "Message",
    "MultisigInfo",
    "MultisigStatus",
    "PreExchange",
    "PreparePayout",
    "Refresh",
    "SetupMultisig",
    "Store",
    "SubmitPayout",
    "SyncAll",
    "Transfer",
    "ValidateAddress",
]

R = TypeVar("R", covariant=True)


# ---- replies -------------------------------------------------------------------------------------


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

    def to_json(self) -> JsonObject:
        return attrs.asdict(self)


@attrs.frozen
class MultisigInfo:
    """One wallet's is_multisig answer."""

    multisig: bool
    ready: bool
    threshold: int
    total: int

    @classmethod
    def from_rpc(cls, answer: JsonMapping) -> MultisigInfo:
        return cls(
            multisig=bool(answer.get("multisig")),
            ready=bool(answer.get("ready")),
            threshold=int(answer.get("threshold") or 0),
            total=int(answer.get("total") or 0),
        )


# ---- messages ------------------------------------------------------------------------------------


@attrs.frozen
class Message(Generic[R]):
    """A request to a session whose reply is an `R`."""

    idempotent: ClassVar[bool] = True
    # Messages that move money check, before anything else, that each process holds the wallet
    # the session expects (its address), even though the session checked it when it opened.
    checks_identity: ClassVar[bool] = False
    # Messages after which the session stores every wallet (multisig import state, a spend).
    changes_wallets: ClassVar[bool] = False


@attrs.frozen
class GetBalance(Message[Balance]):
    refresh: bool = False


@attrs.frozen
class GetFunding(Message[Funding]):
    """Balance, unlocked balance and the confirmations of the incoming transfers that cover
    `amount` (monitor). Without an amount every incoming transfer must count."""

    refresh: bool = False
    amount: int | None = None


@attrs.frozen
class Refresh(Message[None]):
    """Refresh the wallets from the daemon (the monitor sends this when the chain grew)."""


@attrs.frozen
class GetTransfer(Message[Transfer | None]):
    txid: str


@attrs.frozen
class Store(Message[None]):
    """Write every wallet of the session to disk now."""


@attrs.frozen
class ValidateAddress(Message[bool]):
    """Whether the arbiter's wallet takes `address` as a standard address of its own network
    (validate_address, any_net_type and allow_openalias off): the payout destination check."""

    idempotent: ClassVar[bool] = False
    checks_identity: ClassVar[bool] = True
    address: str


@attrs.frozen
class MultisigStatus(Message[Mapping[Role, MultisigInfo]]):
    """is_multisig on each role's wallet (adoption checks the three are one 2-of-3)."""

    idempotent: ClassVar[bool] = False
    checks_identity: ClassVar[bool] = True


@attrs.frozen
class SetupMultisig(Message[str]):
    """Make the three freshly created wallets one 2-of-3 multisig; answers its address."""

    idempotent: ClassVar[bool] = False


@attrs.frozen
class PreparePayout(Message[PayoutTx]):
    """Refresh the two signers, exchange their multisig info unless the session's pre-exchange
    still covers them (`warm_payout`), sweep to `address`, co-sign: answers a signed PayoutTx.

    The co-signer checks the proposal before it signs (`multisig.check_proposal`): a proposal
    that is not this payout raises `PayoutRefused` and nothing is signed.
    Nothing leaves the wallets until `SubmitPayout`, so repeating this after a restore is safe."""

    changes_wallets: ClassVar[bool] = True
    checks_identity: ClassVar[bool] = True
    proposer: Role
    cosigner: Role
    address: str
    priority: int = 0  # wallet-rpc's fee priority for the sweep
    max_fee_per_byte: int = 0  # the fee bound per byte of estimated weight (tolerance included)


@attrs.frozen
class GetPayoutProof(Message[PayoutProof]):
    """The key of submitted transaction `txid` and a `get_tx_proof` that it paid `address`,
    from the first of `roles` whose wallet knows the key (a signer of the payout)."""

    checks_identity: ClassVar[bool] = True
    roles: tuple[Role, ...]
    txid: str
    address: str


@attrs.frozen
class SubmitPayout(Message[tuple[str, ...]]):
    """Relay a signed payout that the caller has already recorded. Repeating it relays the same
    blob, which yields the same txids and never a second transaction."""

    changes_wallets: ClassVar[bool] = True
    checks_identity: ClassVar[bool] = True
    role: Role
    txids: tuple[str, ...]
    signed_txset: str = attrs.field(repr=False)


@attrs.frozen
class SyncAll(Message[None]):
    """Refresh all three wallets and exchange multisig info among them (after a spend, so the
    party that did not sign shows the right balance)."""

    changes_wallets: ClassVar[bool] = True


@attrs.frozen
class PreExchange(Message[bool]):
    """Refresh all three wallets and exchange multisig info among them ahead of a payout, so a
    later `PreparePayout` (release or refund: either pair of signers) can skip the exchange.

    Low priority and best effort: the monitor sends it for a ready escrow without a payout and
    tries again next cycle if it fails. The session never does it once a payout has begun in it,
    nor when its last exchange still stands. Answers whether an exchange was made."""

    idempotent: ClassVar[bool] = False
    changes_wallets: ClassVar[bool] = True


@attrs.frozen
class Leave(Message[None]):
    """Finish the call in hand, store and close the wallets, and stop."""

    reason: str
