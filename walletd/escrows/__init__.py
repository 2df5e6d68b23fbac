"""The escrow domain: what an escrow is and what may happen to it.

- `model`: the records walletd keeps about an escrow, and the moves its states may make.
- `transitions`: the escrow's rules as pure functions: next state, payout phase and wallet step.
- `service`: escrow records, the wallet specs their sessions open, adoption, reads.
- `creation`: a new escrow's three wallets made one 2-of-3 multisig, or nothing left behind.
- `payouts`: a release or refund driven exactly once, and its proof.
- `retries`: which payouts are retried, when and where (a cluster: only a dead host's).
- `recovery`: at start-up, what a stopped walletd left half done: creations, payouts, sessions.
- `lifecycle`: the one surface the API and the app use: creation, payouts, recovery composed.

May import sessions, wallets (multisig recipes), state and ops; never the API.
"""
