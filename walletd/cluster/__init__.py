"""Several walletd hosts on one PostgreSQL (issue 14): the foundation, not yet used by the daemon.

- `db`: trio-async access to PostgreSQL (psycopg 3's sync API in worker threads, a small pool).
- `migrations`: versioned SQL (`sql/NNNN_*.sql`) applied at start-up, recorded in `schema_version`.
- `leases`: per-escrow leases with a fencing epoch; `fenced_write` refuses a stale writer.
- `pg_store`: the store (escrows, payout proofs, the event feed) on PostgreSQL, every escrow write
  fenced, each event a NOTIFY; the same methods as the SQLite store.
- `hosts`: each host's heartbeat (sessions, capacity) and which hosts are live.
- `holder`: keeps one lease renewed and declares it lost, on the local monotonic clock, before it
  can expire in the database (self-fencing).
- `notifications`: a LISTEN/NOTIFY `Listener` on its own connection: wake-ups into trio, and a
  `missed` wake-up for every subscriber after each (re)connection.
- `forwarding`: a request for an escrow owned by another live host is forwarded to it as a row
  (`Forwarder` on the origin, `ForwardServer` on the owner), claimed exactly once.
"""
