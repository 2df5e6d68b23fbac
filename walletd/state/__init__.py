"""Durable state in `state_dir`.

- `store`: SQLite (escrows, payouts, the event log); `events`: the event log and its long polls.
- `columns`: an escrow record's JSON columns, shared with the cluster's PostgreSQL store.
- `vault`: the key file, derived wallet passwords, sealed adopted passwords.
- `backups`: rolling copies of wallet files; `statelock`: one walletd per state directory.

May import ops; knows nothing of sessions, wallet processes or the API.
"""
