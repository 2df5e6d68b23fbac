"""Forwarding: a request answered on the host that holds its escrow, in one place.

Every route asks a `Forwarding` where its request is answered; the daemon builds one of two:
`AnswerHere` (always here) or `ClusterForwarding` (on the live host holding the escrow, through
the cluster database's forwarding, `walletd.cluster.forwarding`, which carries the request and
its reply as rows).

- `base`: what the routes call (`Forwarding.answer`), and `AnswerHere`, which never forwards.
- `cluster`: `ClusterForwarding`, both sides of a cluster host's forwarding in one object.
- `outgoing`: the origin's side: a request followed to the escrow's live holder, or served
  here once no other host holds it; Request to `ForwardedCall`, `ForwardedReply` to Response.
- `incoming`: the owner's side: a forwarded call run through this host's API, marked so that it
  is never forwarded again; `ForwardedCall` to Request, Response to `ForwardedReply`.
"""

from walletd.api.forward.base import AnswerHere, Forwarding, Here
from walletd.api.forward.cluster import ClusterForwarding, ClusterTransport

__all__ = ["AnswerHere", "ClusterForwarding", "ClusterTransport", "Forwarding", "Here"]
