"""What a handler sees and returns: `Request`, `Response`, and the peer's credentials.

The server (`walletd.api.server`) builds a `Request` from each complete HTTP request it reads and
writes the handler's `Response` back; the routes, the forwarding and the dev sandbox only ever
see these two. Neither shows a body or headers in its repr: they may hold wallet passwords.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import attrs

__all__ = ["TCP_PEER", "Handler", "PeerCred", "Request", "Response"]


@attrs.frozen
class PeerCred:
    """The connecting process as the kernel reports it (SO_PEERCRED, at connect time)."""

    pid: int
    uid: int
    gid: int


# What `Request.peer` holds for a TCP client (the metrics listener): TCP has no SO_PEERCRED.
TCP_PEER = PeerCred(pid=0, uid=-1, gid=-1)


@attrs.frozen
class Request:
    """One complete request. Body and headers stay out of repr: they may hold wallet passwords."""

    method: str
    path: str  # percent-decoded, without the query: for logs and messages, never for routing
    query: dict[str, str]
    headers: dict[str, str] = attrs.field(repr=False)  # lower-case names
    body: bytes = attrs.field(repr=False)
    peer: PeerCred
    # The path split at its literal `/` first, then each segment percent-decoded: an encoded
    # `%2F` stays inside its segment, so it can never add a segment and re-route the request
    # (`/v1/escrows/e1%2Fbalance` is one odd escrow id, not a balance read). Route on these.
    segments: tuple[str, ...] = attrs.field(
        default=attrs.Factory(lambda self: _split(self.path), takes_self=True)
    )


def _split(path: str) -> tuple[str, ...]:
    """The segments of a path given already decoded (in-process callers): split at `/`."""
    return tuple(path.split("/")[1:])


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    # Extra headers (lower-case names), e.g. `allow` on a 405; framing headers are the server's.
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls, status: int, obj: object, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        """Compact UTF-8 JSON; NaN and infinities are refused since they are not JSON."""
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return cls(status, text.encode(), headers=headers)


Handler = Callable[[Request], Awaitable[Response]]
