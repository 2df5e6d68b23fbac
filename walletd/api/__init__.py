"""The socket API: the edge where HTTP lives.

- `server`: a small HTTP/1.1 server (h11) on the Unix socket: limits, timeouts, SO_PEERCRED.
- `socket_file`: the socket file: exact mode, stale ones replaced, only our own unlinked.
- `routes`: the routes of api.md, strict validation of every request, the JSON answers.
- `status`: what /v1/stats, /v1/health and /metrics report.
- `errors`: the one table from domain errors to HTTP statuses and API codes.
- `forwarded`: Request/Response to and from the cluster's forwarded calls (issue 14).

May import every layer below it (escrows, monitor, sessions, state, ops). Nothing below imports
it: HTTP statuses and error codes are decided here, from the domain errors of `walletd.errors`.
"""
