"""The wallet steps a driver is told to take, who signs a payout, and the rules they share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import attrs

from walletd.escrows.model import EscrowRecord, EscrowState, Payout, PayoutKind
from walletd.ids import Role
from walletd.jsontypes import JsonObject

__all__ = [
    "PAYING",
    "SIGNERS",
    "WATCHED",
    "Event",
    "Sign",
    "Signers",
    "StoreWallets",
    "Submit",
    "WaitForDaemon",
    "behind_ready_height",
    "submit_recorded",
]

_S = EscrowState
WATCHED = (_S.AWAITING_FUNDING, _S.FUNDED)  # the states whose funding the monitor checks
PAYING = (_S.RELEASING, _S.REFUNDING)  # a submitted payout: each has one move, its end

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


def submit_recorded(payout: Payout) -> Submit:
    """Submit the payout's recorded blob, by its co-signer."""
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
