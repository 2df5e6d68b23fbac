"""The escrow model: the records walletd keeps about an escrow, shared by every layer.

A leaf: it imports nothing of walletd's layers, so the durable state (`walletd.state`) can store
it and the escrow service, lifecycle, monitor and API can all speak it.

An escrow's state only moves forward, along `EscrowState`'s moves (api.md, "States"). Those moves
are written down once, here; the store refuses any other change of state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime

import attrs

from walletd.ids import Role

__all__ = [
    "EscrowRecord",
    "EscrowState",
    "Funding",
    "IllegalMove",
    "Payout",
    "PayoutKind",
    "PayoutPhase",
    "WalletRef",
    "utcnow",
]


def utcnow() -> str:
    """Now as an RFC 3339 UTC string with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IllegalMove(ValueError):
    """A state change the escrow's states do not allow: a bug, never a client's mistake."""


class EscrowState(enum.StrEnum):
    """An escrow's state; the value is what the database and the API carry."""

    CREATING = "creating"  # only while POST /v1/escrows creates its wallets; hidden from the API
    AWAITING_FUNDING = "awaiting_funding"
    FUNDED = "funded"
    READY = "ready"
    RELEASING = "releasing"
    REFUNDING = "refunding"
    COMPLETED = "completed"
    REFUNDED = "refunded"

    @property
    def moves(self) -> frozenset[EscrowState]:
        """The states this one may move to."""
        return _MOVES[self]

    def can_move_to(self, other: EscrowState) -> bool:
        """Whether a change from this state to `other` is allowed (staying put always is)."""
        return other is self or other in _MOVES[self]

    def check_move(self, other: EscrowState) -> None:
        if not self.can_move_to(other):
            raise IllegalMove(f"an escrow cannot move from {self} to {other}")


_S = EscrowState
# Every forward move, in one place. A funding check may see a deposit arrive and unlock at once,
# so awaiting_funding may go straight to ready. A paying state has exactly one move: its end.
_MOVES: dict[EscrowState, frozenset[EscrowState]] = {
    _S.CREATING: frozenset({_S.AWAITING_FUNDING}),
    _S.AWAITING_FUNDING: frozenset({_S.FUNDED, _S.READY}),
    _S.FUNDED: frozenset({_S.READY}),
    _S.READY: frozenset({_S.RELEASING, _S.REFUNDING}),
    _S.RELEASING: frozenset({_S.COMPLETED}),
    _S.REFUNDING: frozenset({_S.REFUNDED}),
    _S.COMPLETED: frozenset(),
    _S.REFUNDED: frozenset(),
}


class PayoutKind(enum.StrEnum):
    RELEASE = "release"
    REFUND = "refund"

    @property
    def paying_state(self) -> EscrowState:
        """The state of an escrow whose payout of this kind is submitted."""
        return EscrowState.RELEASING if self is PayoutKind.RELEASE else EscrowState.REFUNDING


class PayoutPhase(enum.StrEnum):
    """How far a payout has got (see `walletd.escrows.lifecycle`)."""

    INTENT = "intent"  # kind and address recorded; nothing signed
    SIGNED = "signed"  # the signed blob and its txids recorded; only this blob is ever submitted
    SUBMITTED = "submitted"  # the daemon accepted it


@attrs.frozen
class Funding:
    """What the escrow's wallets last saw of the deposit (api.md's `funding`)."""

    balance: int = 0
    unlocked_balance: int = 0
    confirmations: int = 0
    checked_at: str | None = None  # None until the monitor first looked
    # The daemon's height when the monitor saw it ready: a payout waits for a daemon this high
    # (after a switch to a daemon behind it, the deposit may not be on its chain yet).
    ready_height: int | None = None


@attrs.frozen
class Payout:
    """The escrow's one payout, recorded before every step that could send money."""

    kind: PayoutKind
    address: str
    phase: PayoutPhase
    created_at: str
    txid: str | None = None  # the first of `txids`, once submitted
    confirmations: int = 0
    submitted_at: str | None = None
    # Known once signed:
    txids: tuple[str, ...] | None = None
    signed_txset: str | None = attrs.field(default=None, repr=False)  # big, and no log needs it
    amount: int | None = None
    fee: int | None = None
    last_error: str | None = None  # why the last attempt stopped, until one succeeds


@attrs.frozen
class WalletRef:
    """Where one role's wallet lives and how to get its password (never the password itself)."""

    file: str
    sealed_password: str | None = attrs.field(default=None, repr=False)  # adopted wallets only


@attrs.frozen
class EscrowRecord:
    escrow_id: str
    state: EscrowState
    amount: int
    required_confirmations: int
    multisig_address: str | None
    origin: str  # "created" or "adopted"
    wallets: Mapping[Role, WalletRef]
    request_digest: str
    funding: Funding
    payout: Payout | None
    created_at: str
    updated_at: str

    @classmethod
    def new(
        cls,
        *,
        escrow_id: str,
        state: EscrowState,
        amount: int,
        required_confirmations: int,
        multisig_address: str | None,
        origin: str,
        wallets: Mapping[Role, WalletRef],
        request_digest: str,
    ) -> EscrowRecord:
        """A record for an escrow being registered (created or adopted): nothing seen yet."""
        now = utcnow()
        return cls(
            escrow_id=escrow_id,
            state=state,
            amount=amount,
            required_confirmations=required_confirmations,
            multisig_address=multisig_address,
            origin=origin,
            wallets=wallets,
            request_digest=request_digest,
            funding=Funding(),
            payout=None,
            created_at=now,
            updated_at=now,
        )
