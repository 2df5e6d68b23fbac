"""walletd: owns the wallets of 2-of-3 multisig Monero escrows, serves them over a Unix socket.

The house, from the top floor down (each package imports only the ones below it; the
import-linter contracts in pyproject.toml hold it to that):

- `cli`: the `walletd` and `walletctl` commands, the dev sandbox, the cluster tools.
- `app`: the composition root: builds every part once and wires them; nothing else.
- `deployment`: one host or a cluster, behind one `Deployment` chosen once from the config.
- `api`: the socket API: the h11 server, the routes, forwarding to an escrow's owner, status.
- `daemon`: the service group (start order, stop stages), reload, start-up, announcements.
- `monitor`: watches the chain for funding and confirmations, over the sessions' channels.
- `escrows`: the escrow domain: the model, the rules as pure transitions, creation, payouts,
  retries, recovery.
- `sessions`: one supervised session per escrow owning its wallet-rpc handles, and the registry
  that caps them (LRU eviction, idle TTL, money first).
- `wallets`: monero-wallet-rpc and monerod: processes, clients, the multisig recipes, repair.
- `cluster`: several hosts on one PostgreSQL: leases, fencing, wallet files, forwarding rows.
- `state`: durable state on one host: the store protocol and its SQLite store, the event log,
  the vault, backups.
- `ops`: logs, metrics, systemd notifications, failpoints, start-up checks.
- Shared leaves, importing no layer: `errors` (the error tree), `ids`, `config`, `jsontypes`.
- `testing`: the test doubles and the regtest harness (for tests, the bench and `walletd dev`).
"""

__version__ = "0.1.0"
