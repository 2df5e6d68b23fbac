"""The command line: `walletd` (the daemon), `walletctl` (a client of the socket), and
`walletd dev` (a private regtest sandbox). The top of the tree: may import anything.

- `daemon`: `walletd`: runs the daemon, and dispatches `walletd dev` and `walletd cluster`.
- `dev`: `walletd dev`: a private regtest monerod, a funded faucet wallet, walletd against them.
- `cluster`: `walletd cluster export|import DIR`: the cluster's wallet files, for an offline backup.
- `cluster_key`: `walletd cluster key export|import FILE`: the vault key, for a new host.
- `walletctl`: `walletctl`: its commands, its parser and `main`.
- `walletctl_client`: walletctl's HTTP client on the socket, walletd's errors worded for people.
- `walletctl_output`: walletctl's tables, XMR amounts and durations.
"""
