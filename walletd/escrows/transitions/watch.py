"""A submitted payout, watched: its confirmations, the escrow's end, a resubmit when lost."""

from __future__ import annotations

import attrs

from walletd.escrows.model import EscrowRecord, EscrowState, Payout, PayoutPhase
from walletd.escrows.transitions.steps import (
    PAYING,
    Event,
    Submit,
    WaitForDaemon,
    behind_ready_height,
    submit_recorded,
)

__all__ = ["Finish", "confirmations_seen", "finished", "lost_payout"]


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
    return submit_recorded(payout)


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
    return Finish(end, (end, {"txid": payout.txid, "confirmations": confirmations}))
