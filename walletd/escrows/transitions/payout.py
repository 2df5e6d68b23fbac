"""A payout: what a release or refund call leads to, and its next phase as it is driven."""

from __future__ import annotations

import enum

import attrs

from walletd.errors import Conflict, NotReady, Unavailable
from walletd.escrows.model import EscrowRecord, EscrowState, Payout, PayoutKind, PayoutPhase
from walletd.escrows.transitions.steps import SIGNERS, Event, Sign, Submit, submit_recorded
from walletd.jsontypes import JsonObject

__all__ = [
    "Answer",
    "Drive",
    "PayoutMove",
    "RecordIntent",
    "SubmitResult",
    "check_payout_outcome",
    "next_payout_step",
    "refused",
    "request_payout",
    "signed",
    "submitted",
]

_REASON = 300  # characters of a refusal's reason kept on the payout and in its event


@attrs.frozen
class RecordIntent:
    """Check the address with a wallet, then record `payout` (over the payout read, none or a
    refused one: compare-and-set), then drive it."""

    payout: Payout


@attrs.frozen
class Drive:
    """The payout asked for is recorded and not submitted yet: drive it (or wait for it)."""


@attrs.frozen
class Answer:
    """The payout asked for is submitted already: answer with the record as it is."""


def request_payout(
    rec: EscrowRecord, kind: PayoutKind, address: str, *, now: str
) -> RecordIntent | Drive | Answer:
    """What a release or refund call to `address` leads to. Repeating the recorded payout's
    call resumes it; `Conflict` for any other kind or address once one is recorded (refused
    ones aside: nothing was signed), `NotReady` for an escrow that is not ready."""
    payout = rec.payout
    if payout is not None and payout.phase is not PayoutPhase.REFUSED:
        if payout.kind != kind:
            raise Conflict(
                f"escrow {rec.escrow_id!r} already has a {payout.kind} payout; "
                f"a {kind} cannot follow it"
            )
        if payout.address != address:
            raise Conflict(
                f"escrow {rec.escrow_id!r} already has a {payout.kind} payout to another address"
            )
        return Answer() if payout.phase is PayoutPhase.SUBMITTED else Drive()
    if kind.paying_state not in rec.state.moves:
        raise NotReady(f"escrow {rec.escrow_id!r} is {rec.state}; a payout needs ready")
    return RecordIntent(
        Payout(kind=kind, address=address, phase=PayoutPhase.INTENT, created_at=now)
    )


def check_payout_outcome(rec: EscrowRecord) -> None:
    """After a drive: `Conflict` if the co-signer refused the proposal, `Unavailable` (the
    caller repeats the call to resume it) if it stopped before the daemon accepted it."""
    payout = rec.payout
    if payout is None:
        return
    if payout.phase is PayoutPhase.REFUSED:
        raise Conflict(f"payout refused before signing, nothing was signed: {payout.last_error}")
    if payout.phase is not PayoutPhase.SUBMITTED:
        raise Unavailable(
            f"payout not submitted yet ({payout.last_error}); repeat the call to resume it"
        )


def next_payout_step(rec: EscrowRecord) -> Sign | Submit | None:
    """The wallet step that takes the recorded payout further: sign an intent, submit a signed
    blob. None for no payout, a refused one (never signed again), a submitted one (the monitor
    counts its confirmations), and any escrow that is not ready (its funds are not there)."""
    payout = rec.payout
    if payout is None or rec.state is not EscrowState.READY:
        return None
    proposer, cosigner = SIGNERS[payout.kind]
    if payout.phase is PayoutPhase.INTENT:
        return Sign(proposer, cosigner, payout.address)
    if payout.phase is PayoutPhase.SIGNED:
        return submit_recorded(payout)
    return None


@attrs.frozen
class PayoutMove:
    """The payout's next record, the escrow's next state (None: unchanged), and the events."""

    payout: Payout
    state: EscrowState | None
    events: tuple[Event, ...]


def signed(
    payout: Payout,
    *,
    fee_priority: int,
    txids: tuple[str, ...],
    signed_txset: str,
    amount: int,
    fee: int,
) -> Payout:
    """The co-signer checked and signed the proposal: recorded before it can be sent, and from
    then on only this blob is ever submitted."""
    return attrs.evolve(
        payout,
        phase=PayoutPhase.SIGNED,
        fee_priority=fee_priority,
        txids=txids,
        signed_txset=signed_txset,
        amount=amount,
        fee=fee,
        last_error=None,
    )


def refused(payout: Payout, *, fee_priority: int, reason: str) -> PayoutMove:
    """The co-signer found the proposal was not this payout: nothing was signed, and the payout
    says so (final; a new release or refund call replaces it)."""
    reason = reason[:_REASON]
    return PayoutMove(
        attrs.evolve(
            payout, phase=PayoutPhase.REFUSED, fee_priority=fee_priority, last_error=reason
        ),
        None,
        (("payout_refused", {"kind": payout.kind.value, "reason": reason}),),
    )


class SubmitResult(enum.Enum):
    ACCEPTED = "accepted"  # the daemon took the blob
    KNOWN = "known"  # refused, but the daemon has the transaction (sent before a crash)
    REFUSED = "refused"  # refused, and unknown to the daemon: an error to report


def submitted(payout: Payout, result: SubmitResult, *, now: str) -> PayoutMove | None:
    """A signed payout after its submit: submitted (the escrow is paying) if the daemon has it,
    None if not (nothing to record; the driver reports the refusal)."""
    if result is SubmitResult.REFUSED:
        return None
    assert payout.txids is not None  # signed
    txid = payout.txids[0]
    done = attrs.evolve(
        payout, phase=PayoutPhase.SUBMITTED, txid=txid, submitted_at=now, last_error=None
    )
    data: JsonObject = {
        "kind": payout.kind.value,
        "txid": txid,
        "amount": payout.amount,
        "fee": payout.fee,
    }
    return PayoutMove(done, payout.kind.paying_state, (("payout_submitted", data),))
