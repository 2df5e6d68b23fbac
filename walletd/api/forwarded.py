"""The API's side of the forwarding seam: Request/Response to and from the cluster's rows.

`walletd.cluster.forwarding` sits below the API and cannot know its Request and Response, so it
carries `ForwardedCall` and `ForwardedReply`; these functions convert both ways. The path's
segments travel as they were split (before percent-decoding), never re-split from the decoded
path, so a forwarded `/v1/escrows/e1%2Fbalance` routes on the owner exactly as it did here.
Request headers do not travel: no route reads them.
"""

from __future__ import annotations

from walletd.api.server import PeerCred, Request, Response
from walletd.cluster.forwarding import ForwardedCall, ForwardedReply

__all__ = ["call_from_request", "reply_from_response", "request_from_call", "response_from_reply"]


def call_from_request(request: Request, escrow_id: str | None = None) -> ForwardedCall:
    """What the origin forwards."""
    return ForwardedCall(
        method=request.method,
        path=request.path,
        segments=request.segments,
        query=dict(request.query),
        body=request.body,
        escrow_id=escrow_id,
    )


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


def response_from_reply(reply: ForwardedReply) -> Response:
    """What the origin answers its client with."""
    return Response(
        status=reply.status,
        body=reply.body,
        content_type=reply.content_type,
        headers=reply.headers,
    )
