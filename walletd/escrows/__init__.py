"""The escrow domain: what an escrow is and what may happen to it.

- `service`: escrow records, the wallet specs their sessions open, adoption, reads.
- `creation`: a new escrow's three wallets made one 2-of-3 multisig, or nothing left behind.
- `lifecycle`: payouts (release, refund) exactly once, and start-up recovery; hands creation on.
- `retries`: which payouts are retried, when and where (a cluster: only a dead host's).

May import sessions, wallets (multisig recipes), state and ops; never the API.
"""
