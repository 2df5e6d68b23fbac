"""A funding check: the escrow's next state and funding, given what its wallets saw."""

from __future__ import annotations

import attrs

from walletd.escrows.model import EscrowRecord, EscrowState, Funding
from walletd.escrows.transitions.steps import WATCHED, Event, StoreWallets
from walletd.jsontypes import JsonObject

__all__ = ["FundingMove", "FundingSeen", "exchange_ahead", "funding_seen"]

_S = EscrowState


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
