"""Requests forwarded through the database to the host whose session holds the escrow.

Any host answers any request (issue 14). When the escrow's session is open on another live host,
the request is not served by moving the session here and back: it is written as a row addressed
to the owner, and `pg_notify` on the owner's channel, in the same transaction, wakes it. The
owner's `ForwardServer` claims the row exactly once, runs it through the same handler as a local
request, writes the reply into the row and notifies the origin's reply channel. The origin's
`Forwarder` reads the reply, deletes the row and answers its client.

Why the database, not host-to-host connections: hosts already share it, it needs no addresses,
ports or TLS between hosts, and a row makes the outcome decidable. A request either was claimed
(its owner ran or is running it) or was not, and the origin that gives up deletes an unclaimed
row, so that request never runs. The origin tells its client which of the two it was:
`OwnerDidNotAnswer` (not run: safe to retry) or `ForwardOutcomeUnknown` (may have run).

Rows live only as long as needed, since request bodies may carry wallet passwords: the body is
erased when the row is claimed, the row is deleted when the reply is read or the origin gives up,
and `ForwardServer` periodically purges rows whose origin stopped waiting long ago (a crashed
host's). A row past its `expires_at` (the origin's deadline, by the database clock) is never
claimed, even when the origin could not delete it. Notifications can be lost: the origin polls its
row slowly, and the owner scans for unclaimed rows on start and every few seconds. Bodies and
replies are never logged.

This layer cannot import the API (`walletd.api` sits above it): `ForwardedCall` and
`ForwardedReply` are what travels, and the API (`walletd.api.forward`) converts its Request and
Response to and from them.

- `records`: the wire records (`ForwardedCall`, `ForwardedReply`) and each host's channel names
  (the errors an origin raises when no answer comes are in `walletd.errors`).
- `sending`: the origin's side, `Forwarder`: writes the row, awaits the reply, withdraws it unrun.
- `serving`: the owner's side, `ForwardServer`: claims rows once, runs them, writes the replies.
"""

from walletd.cluster.forwarding.records import (
    ForwardedCall,
    ForwardedReply,
    ForwardHandler,
    ForwardingStatistics,
    OwnerCheck,
    forward_channel,
    forwarding_channels,
    reply_channel,
)
from walletd.cluster.forwarding.sending import Forwarder
from walletd.cluster.forwarding.serving import ForwardServer

__all__ = [
    "ForwardHandler",
    "ForwardServer",
    "ForwardedCall",
    "ForwardedReply",
    "Forwarder",
    "ForwardingStatistics",
    "OwnerCheck",
    "forward_channel",
    "forwarding_channels",
    "reply_channel",
]
