"""The escrow's rules as pure transitions: given the record and what was seen, what comes next.

Each function takes an escrow's record (`walletd.escrows.model`) as its driver read it, and what
the driver saw (the wallets' funding after a refresh, the co-signer's verdict on a proposal, the
answer to a submit, the daemon's view of the payout transaction), and answers the record's next
contents (a state, a funding, a payout phase, the events that say so) and the wallet step the
driver must take next (`StoreWallets`, `Sign`, `Submit`, `WaitForDaemon`). Nothing here does
I/O: no trio, no store, no wallet, no clock (the time comes in as `now`). The drivers do the
calls and the writes, each write compare-and-set on the payout it read (`ExpectedPayout`): the
monitor (`walletd.monitor`: funding, confirmations, a lost payout) and the payouts
(`walletd.escrows.payouts`: a release or refund, step by step).

The rules, written once:

- Funding: awaiting_funding -> funded once the balance covers the amount; funded -> ready once
  the amount is unlocked with the required confirmations (both at once when a deposit arrives
  unlocked). A reorg that takes the deposit from a funded escrow is told once; states only move
  forward, so it stays funded but cannot become ready on funds that are gone.
- A payout is requested only of a ready escrow, or over a refused one (nothing was signed). Once
  recorded, its kind and address are fixed: a second payout can never start over the same funds.
- A payout is signed only from `intent`, submitted only as the blob recorded when it was signed,
  and neither unless the escrow is ready; a refused one is never driven again.
- A submitted payout finishes the escrow (completed, refunded) at the required confirmations; one
  the daemon lost is resubmitted from its recorded blob, never to a daemon below the height at
  which the escrow was seen ready.

Imports: the escrow model, and the shared leaves `walletd.ids` (roles), `walletd.errors` (the
refusals a payout request gets) and `walletd.jsontypes` (event data); nothing else (pyproject's
import-linter contract "The escrow transitions ...").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

import attrs

from walletd.errors import Conflict, NotReady, Unavailable
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    Funding,
    Payout,
    PayoutKind,
    PayoutPhase,
)
from walletd.ids import Role
from walletd.jsontypes import JsonObject

__all__ = [
    "PAYING",
    "SIGNERS",
    "WATCHED",
    "Answer",
    "Drive",
    "Event",
    "Finish",
    "FundingMove",
    "FundingSeen",
    "PayoutMove",
    "RecordIntent",
    "Sign",
    "Signers",
    "StoreWallets",
    "Submit",
    "SubmitResult",
    "WaitForDaemon",
    "behind_ready_height",
    "check_payout_outcome",
    "confirmations_seen",
    "exchange_ahead",
    "finished",
    "funding_seen",
    "lost_payout",
    "next_payout_step",
    "refused",
    "request_payout",
    "signed",
    "submitted",
]

_S = EscrowState
WATCHED = (_S.AWAITING_FUNDING, _S.FUNDED)  # the states whose funding the monitor checks
PAYING = (_S.RELEASING, _S.REFUNDING)  # a submitted payout: each has one move, its end
_REASON = 300  # characters of a refusal's reason kept on the payout and in its event

Event = tuple[str, JsonObject]  # (type, data) of an event recorded with a change


class Signers(NamedTuple):
    proposer: Role  # the receiving side: proposes the sweep
    cosigner: Role  # checks the proposal, signs last, submits, and holds the tx key


# Who signs what: the arbiter co-signs both; the receiving side proposes. The one table.
SIGNERS: Mapping[PayoutKind, Signers] = {
    PayoutKind.RELEASE: Signers("vendor", "arbiter"),
    PayoutKind.REFUND: Signers("buyer", "arbiter"),
}


# ---- wallet steps: what a driver must do next ----------------------------------------------------


@attrs.frozen
class StoreWallets:
    """Store the escrow's wallets now: they just saw its funding change, and a crash (or the
    next owner of a cluster's escrow) must not start from files that never saw it."""


@attrs.frozen
class Sign:
    """Propose the sweep of the whole balance to `address` and have the co-signer check and
    sign it (refused if the proposal is not this payout)."""

    proposer: Role
    cosigner: Role
    address: str


@attrs.frozen
class Submit:
    """Relay the recorded signed blob: the same txids every time, never a second transaction."""

    signer: Role
    txids: tuple[str, ...]
    signed_txset: str = attrs.field(repr=False)


@attrs.frozen
class WaitForDaemon:
    """Do nothing yet: the daemon in use is below the escrow's ready height (a switch to a
    daemon that lags), and may not have the deposit on its chain."""

    height: int
    ready_height: int


# ---- funding -------------------------------------------------------------------------------------


@attrs.frozen
class FundingSeen:
    """What the escrow's wallets reported after a refresh."""

    balance: int
    unlocked_balance: int
    confirmations: int
    wallet_height: int  # the wallet's chain height after its refresh


@attrs.frozen
class FundingMove:
    """The escrow's next state and funding, the events that say so, and the step after."""

    state: EscrowState
    funding: Funding
    events: tuple[Event, ...]
    reorged_from: int | None  # the balance a reorg took the deposit from, if it just did
    step: StoreWallets | None


def funding_seen(
    rec: EscrowRecord, seen: FundingSeen, *, height: int, now: str
) -> FundingMove | None:
    """The move of a watched escrow whose wallets saw `seen` (`height`: the daemon's, at the
    check); None once it is no longer watched (a payout started meanwhile): nothing to write."""
    if rec.state not in WATCHED:
        return None
    state = rec.state
    funding = Funding(
        balance=seen.balance,
        unlocked_balance=seen.unlocked_balance,
        confirmations=seen.confirmations,
        checked_at=now,
    )
    data: JsonObject = {
        "balance": seen.balance,
        "unlocked_balance": seen.unlocked_balance,
        "confirmations": seen.confirmations,
    }
    events: list[Event] = []
    reorged_from = None
    if state is _S.AWAITING_FUNDING and seen.balance >= rec.amount:
        state = _S.FUNDED
        events.append(("funded", data))
    elif state is _S.FUNDED and seen.balance < rec.amount <= rec.funding.balance:
        # A reorg took (part of) the deposit away before it was ready: told once, when the
        # balance drops, and again `ready` if the funds are mined back.
        reorged_from = rec.funding.balance
        events.append(("funding_reorged", {**data, "previous_balance": reorged_from}))
    if (
        state is _S.FUNDED
        and seen.unlocked_balance >= rec.amount
        and seen.confirmations >= rec.required_confirmations
    ):
        state = _S.READY
        events.append(("ready", data))
        # The wallet's own height after its refresh is the chain that showed the funds ready;
        # the daemon height of the check may be older (blocks mined since), and a ready height
        # set too low would let a payout go to a daemon that has not seen the deposit.
        funding = attrs.evolve(funding, ready_height=max(height, seen.wallet_height))
    step = StoreWallets() if events else None
    return FundingMove(state, funding, tuple(events), reorged_from, step)


def exchange_ahead(rec: EscrowRecord) -> bool:
    """Whether the escrow's multisig info may be exchanged ahead of its payout: ready, and no
    payout recorded (a payout in preparation exchanges its own)."""
    return rec.state is _S.READY and rec.payout is None


# ---- a payout, requested -------------------------------------------------------------------------


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


# ---- a payout, driven ----------------------------------------------------------------------------


def next_payout_step(rec: EscrowRecord) -> Sign | Submit | None:
    """The wallet step that takes the recorded payout further: sign an intent, submit a signed
    blob. None for no payout, a refused one (never signed again), a submitted one (the monitor
    counts its confirmations), and any escrow that is not ready (its funds are not there)."""
    payout = rec.payout
    if payout is None or rec.state is not _S.READY:
        return None
    proposer, cosigner = SIGNERS[payout.kind]
    if payout.phase is PayoutPhase.INTENT:
        return Sign(proposer, cosigner, payout.address)
    if payout.phase is PayoutPhase.SIGNED:
        return _submit(payout)
    return None


def _submit(payout: Payout) -> Submit:
    # Both recorded when it was signed (the payout's phase is signed or submitted).
    assert payout.txids is not None
    assert payout.signed_txset is not None
    return Submit(SIGNERS[payout.kind].cosigner, payout.txids, payout.signed_txset)


def behind_ready_height(rec: EscrowRecord, height: int | None) -> int | None:
    """The escrow's ready height if a daemon at `height` is below it (a payout is never built
    on or submitted to it); None when it may go ahead (or the height is not known)."""
    ready_at = rec.funding.ready_height
    if ready_at is None or height is None or height >= ready_at:
        return None
    return ready_at


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


# ---- a submitted payout, watched -----------------------------------------------------------------


def lost_payout(rec: EscrowRecord, height: int | None) -> Submit | WaitForDaemon | None:
    """The daemon does not know the submitted payout (pool flushed, restart): resubmit the
    recorded blob, unless the daemon at `height` is below the escrow's ready height."""
    payout = rec.payout
    if payout is None or payout.phase is not PayoutPhase.SUBMITTED:
        return None
    behind = behind_ready_height(rec, height)
    if behind is not None:
        assert height is not None
        return WaitForDaemon(height, behind)
    return _submit(payout)


def confirmations_seen(rec: EscrowRecord, confirmations: int) -> Payout | None:
    """The submitted payout with `confirmations`, if that changed (else None: nothing to
    write)."""
    payout = rec.payout
    if payout is None or payout.phase is not PayoutPhase.SUBMITTED:
        return None
    if confirmations == payout.confirmations:
        return None
    return attrs.evolve(payout, confirmations=confirmations)


@attrs.frozen
class Finish:
    """The escrow's end (completed, refunded) and its event."""

    state: EscrowState
    event: Event


def finished(rec: EscrowRecord, confirmations: int) -> Finish | None:
    """A paying escrow whose payout has `confirmations` ends once they reach the required
    number; None before, and for an escrow not paying (already ended)."""
    payout = rec.payout
    if rec.state not in PAYING or payout is None or payout.txid is None:
        return None
    if confirmations < rec.required_confirmations:
        return None
    (end,) = rec.state.moves
    return Finish(end, (end.value, {"txid": payout.txid, "confirmations": confirmations}))
