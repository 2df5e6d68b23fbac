"""The escrow domain: what an escrow is and what may happen to it.

- `service`: escrow records, the wallet specs their sessions open, adoption, reads.
- `lifecycle`: creation, and payouts (release, refund) exactly once.

May import sessions, wallets (multisig recipes), state and ops; never the API.
"""
