"""The daemon's own machinery, beside its wiring (`walletd.app`).

- `services`: the service group: each long-running part in one list, the start order and the
  stages of a graceful stop.
- `reload`: SIGHUP: the config keys applied live, and those that need a restart.
- `startup`: before any service runs: the private directories, the children a dead walletd left,
  the `/metrics` listening sockets.
- `announcements`: what wallet-rpc restarts, wallet repairs, sessions and a monerod switch turn
  into (events, metrics, restarted children).

Imports nothing of the API nor of the deployment (which lists its services here); may import the
monitor and every layer below it.
"""
