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

Modules:

- `steps`: the wallet steps a driver is told to take, who signs what, the daemon's ready height.
- `funding`: a funding check's next state and funding (awaiting_funding, funded, ready).
- `payout`: a payout call's answer, and a payout's next phase as it is signed and submitted.
- `watch`: a submitted payout's confirmations, its end, and its resubmission when lost.

Imports: the escrow model, and the shared leaves `walletd.ids` (roles), `walletd.errors` (the
refusals a payout request gets) and `walletd.jsontypes` (event data); nothing else (pyproject's
import-linter contract "The escrow transitions ...").
"""

from walletd.escrows.transitions.funding import (
    FundingMove,
    FundingSeen,
    exchange_ahead,
    funding_seen,
)
from walletd.escrows.transitions.payout import (
    Answer,
    Drive,
    PayoutMove,
    RecordIntent,
    SubmitResult,
    check_payout_outcome,
    next_payout_step,
    refused,
    request_payout,
    signed,
    submitted,
)
from walletd.escrows.transitions.steps import (
    PAYING,
    SIGNERS,
    WATCHED,
    Event,
    Sign,
    Signers,
    StoreWallets,
    Submit,
    WaitForDaemon,
    behind_ready_height,
)
from walletd.escrows.transitions.watch import Finish, confirmations_seen, finished, lost_payout

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
