"""Several walletd hosts on one PostgreSQL (issue 14): the cluster side of the deployment.

Used through `walletd.deployment.cluster` when the config has `[cluster]`; one host never
imports it at run time beyond that.

- `node`: one host's cluster parts built from `[cluster]`: start (connect, migrate, check the
  vault key), run (heartbeat, renewals, forwarded requests, event wake-ups), `statistics()`.
- `db`: trio-async access to PostgreSQL (psycopg 3's sync API in worker threads, a small pool).
- `migrations`: versioned SQL (`sql/NNNN_*.sql`) applied at start-up, recorded in `schema_version`.
- `leases`: per-escrow leases with a fencing epoch; `fenced_write` refuses a stale writer;
  `statistics()` counts the refused writes.
- `lease_ownership`: `ClusterOwnership`, this host's holdings of those leases: the lease-based
  `walletd.state.ownership.Ownership` (the wallet files restored and saved around a session).
- `postgres_store`: the state store on PostgreSQL (escrows, payout proofs, the event feed),
  every escrow write fenced, each event a NOTIFY; the pair of `walletd.state.sqlite_store`.
- `wallet_files`: the wallet files kept in the database, a few versions each.
- `hosts`: each host's heartbeat (sessions, capacity) and which hosts are live.
- `holder`: keeps one lease renewed and declares it lost, on the boot clock, before it
  can expire in the database (self-fencing).
- `notifications`: a LISTEN/NOTIFY `Listener` on its own connection: wake-ups into trio, and a
  `missed` wake-up for every subscriber after each (re)connection.
- `forwarding`: a request for an escrow owned by another live host is forwarded to it as a row,
  claimed exactly once (`sending`: the origin's `Forwarder`; `serving`: the owner's
  `ForwardServer`; `records`: the rows and channels).
- `metrics`: the cluster's figures on this host's `/metrics`.
"""
