"""Durable state in `state_dir`.

- `store`: the `StateStore` protocol (what the daemon needs from its database, whichever it is)
  and the records both stores share; `sqlite_store`: one host's SQLite store (escrows, payouts,
  the event log) and `LocalState`, the protocol over it (a cluster's:
  `walletd.cluster.postgres_store`, which needs the cluster's leases for its fencing).
- `events`: the event log and its long polls.
- `ownership`: the `Ownership` protocol (which host may act on an escrow) and `LocalOwnership`,
  one host's (a cluster's: `walletd.cluster.lease_ownership`).
- `columns`: an escrow record's JSON columns, shared with the cluster's PostgreSQL store.
- `vault`: the key file, derived wallet passwords, sealed adopted passwords.
- `backups`: rolling copies of wallet files; `statelock`: one walletd per state directory.

May import ops; knows nothing of sessions, wallet processes or the API.
"""
