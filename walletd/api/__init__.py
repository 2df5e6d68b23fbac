"""The socket API: the edge where HTTP lives.

- `messages`: `Request` and `Response`, what every handler takes and gives, and the peer's
  credentials (SO_PEERCRED).
- `server`: the listeners (the Unix socket, the metrics TCP address): accept, allow-lists,
  the connection cap, a graceful drain.
- `connection`: one client connection on h11: every per-request limit and timeout, the access log.
- `request_parsing`: a request head turned into a `Request`: the target split and decoded.
- `socket_file`: the socket file: exact mode, stale ones replaced, only our own unlinked.
- `routes`: the routes of api.md, strict validation of every request, the JSON answers.
- `forward`: where a request is answered: here, or (a cluster) on the host holding its escrow.
- `status`: what /v1/stats, /v1/health and /metrics report.
- `errors`: the one table from domain errors to HTTP statuses and API codes.

May import every layer below it (escrows, monitor, sessions, cluster, state, ops). Nothing below
imports it: HTTP statuses and error codes are decided here, from the domain errors of
`walletd.errors`.
"""
