"""How walletd is deployed: one host, or a cluster of hosts on one PostgreSQL (issue 20).

Everything that differs between the two lives behind one face, chosen once from the config
(`deployment_for`): the rest of the daemon holds a `Deployment` and never asks which it is.

- `deployment`: the `Deployment` protocol, and `Wiring`: what it asks of the daemon.
- `choose`: `deployment_for`, the one place the choice is made.
- `single_host`: `SingleHost`: SQLite, this host owns every escrow, nothing is forwarded.
- `cluster`: `Cluster`: PostgreSQL, leases, wallet files in the database, requests answered on
  the escrow's live owner (the API's `ClusterForwarding`), the cluster's background parts and
  figures.

Sits between the app (which wires it) and the API (whose forwarding it picks); may import every
layer below it.
"""
