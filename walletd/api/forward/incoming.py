"""A request another host forwarded here: run through this host's API, its answer sent back.

`walletd.cluster.forwarding` sits below the API and cannot know its Request and Response, so it
carries `ForwardedCall` and `ForwardedReply`; the owner turns the call into a Request, runs it
through the same routes as a request of its own client, and turns the answer into the reply.
The request is marked (`FORWARDED_BY`) so that it is never forwarded again: a forwarded request
that finds its escrow moved on is answered 503 here (its origin's client retries), rather than
chasing the escrow from host to host.
"""

from __future__ import annotations

import attrs

from walletd.api.messages import TCP_PEER, Handler, PeerCred, Request, Response
from walletd.cluster.forwarding import ForwardedCall, ForwardedReply

__all__ = [
    "FORWARDED_BY",
    "came_forwarded",
    "reply_from_response",
    "request_from_call",
    "serve_forwarded",
]

FORWARDED_BY = "x-walletd-forwarded-by"  # header marking a request another host forwarded here


def came_forwarded(request: Request) -> bool:
    """Whether another host forwarded `request` here (then it is answered here, whatever)."""
    return FORWARDED_BY in request.headers


async def serve_forwarded(api: Handler, call: ForwardedCall) -> ForwardedReply:
    """`call`'s reply from `api`, run like a request of this host's own client. The origin has
    checked its client's credentials already; the peer here is `TCP_PEER` (none)."""
    request = attrs.evolve(request_from_call(call, TCP_PEER), headers={FORWARDED_BY: "1"})
    return reply_from_response(await api(request))


def request_from_call(call: ForwardedCall, peer: PeerCred) -> Request:
    """The request the owner's handler runs. `peer`: who the owner says sent it (the origin
    has already checked the real client's credentials)."""
    return Request(
        method=call.method,
        path=call.path,
        query=dict(call.query),
        headers={},
        body=call.body,
        peer=peer,
        segments=call.segments,
    )


def reply_from_response(response: Response) -> ForwardedReply:
    """What the owner writes back."""
    return ForwardedReply(
        status=response.status,
        body=response.body,
        content_type=response.content_type,
        headers=response.headers,
    )
