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

from walletd.errors import IllegalMove, PayoutChanged
from walletd.ids import Role

__all__ = [
    "EscrowRecord",
    "EscrowState",
    "ExpectedPayout",
    "Funding",
    "Payout",
    "PayoutKind",
    "PayoutPhase",
    "PayoutProof",
    "WalletRef",
    "utcnow",
]


def utcnow() -> str:
    """Now as an RFC 3339 UTC string with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    """How far a payout has got (see `walletd.escrows.payouts`)."""

    INTENT = "intent"  # kind and address recorded; nothing signed
    SIGNED = "signed"  # the signed blob and its txids recorded; only this blob is ever submitted
    SUBMITTED = "submitted"  # the daemon accepted it
    # The co-signer found the proposal was not this payout: nothing was signed, and no resume
    # or recovery ever drives it again; a new release/refund call replaces it (payouts).
    REFUSED = "refused"


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
    fee_priority: int | None = None  # wallet-rpc's priority for the sweep, once proposed
    # Each time a host starts driving it (payouts): how often, when it last began, the host
    # that did (a cluster: the one whose liveness decides whether another may adopt it), and
    # the earliest time an automatic retry may start (exponential back-off).
    attempts: int = 0
    tried_at: str | None = None
    driver: str | None = None
    next_try_at: str | None = None


@attrs.frozen
class ExpectedPayout:
    """Where a payout change expects the recorded payout to be: its phase and txids, or no
    payout at all (phase None). The stores compare it in the writing transaction, so a change
    made from a stale read (a driver that read `intent` before another signed) is refused."""

    phase: PayoutPhase | None
    txids: tuple[str, ...] | None = None

    @classmethod
    def of(cls, payout: Payout | None) -> ExpectedPayout:
        return cls(None) if payout is None else cls(payout.phase, payout.txids)

    def check(self, escrow_id: str, recorded: Payout | None) -> None:
        """`PayoutChanged` unless `recorded` is where this expects it."""
        found = ExpectedPayout.of(recorded)
        if found != self:
            raise PayoutChanged(
                f"escrow {escrow_id!r}: the payout changed meanwhile (expected {self.describe()},"
                f" recorded {found.describe()}); nothing was written"
            )

    def describe(self) -> str:
        if self.phase is None:
            return "no payout"
        return f"{self.phase}" + (f" {', '.join(self.txids)}" if self.txids else "")


@attrs.frozen
class PayoutProof:
    """What proves a submitted payout without any wallet (api.md, payout/proof): the payout
    transaction's key and a `get_tx_proof` for its destination, checkable by `check_tx_proof`."""

    txid: str
    address: str
    tx_key: str = attrs.field(repr=False)  # a transaction secret: never in a log
    proof: str = attrs.field(repr=False)


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
