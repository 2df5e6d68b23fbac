"""A request for an escrow another host holds: forwarded to it while it lives, else served here.

The origin forwards through the cluster database (`walletd.cluster.forwarding`) only to a live
holder: one whose heartbeat is fresh (younger than lease_ttl) and who still holds the escrow's
lease. A live owner claims a forwarded request within milliseconds; one that does not claim it
within `CLAIM_WAIT`, or by the end of its lease, is taken for dead (the request withdrawn, never
run). While the holder is dead (its heartbeat stale: killed, paused, cut off) or stopping (it
withdrew from the host list), nothing is forwarded: the request waits for the lease to expire or
be handed back, looking every `LEASE_POLL`, and is then served here, where the session opens.

So an escrow whose owner died is served again within lease_ttl plus one open, and one whose owner
stopped gracefully as soon as that owner has stored and closed it, with no wait on a claim that
cannot come. An owner that claimed the request and then lost the escrow (killed just after the
claim) will never answer: the origin sees its lease gone and, for a read, runs it again where the
escrow is now; anything else is answered 504 (its outcome unknown) at once, not at the deadline.
A holder that renews its lease while its heartbeat is stale is alive after all (a slow
heartbeat), and gets the request. The request fails with 503 only if the lease outlives the
request's own bound.

The origin's conversions live here too: its Request becomes the `ForwardedCall` the cluster
carries, and the owner's `ForwardedReply` the Response its client gets.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Protocol

import trio

from walletd.api.forward.base import Here
from walletd.api.messages import Request, Response
from walletd.cluster.forwarding import ForwardedCall, ForwardedReply, OwnerCheck
from walletd.cluster.hosts import LeaseOwner
from walletd.errors import OwnerDidNotAnswer, OwnerGone

__all__ = ["CLAIM_WAIT", "LEASE_POLL", "OwnerTransport", "call_from_request", "to_owner"]

CLAIM_WAIT = 2.0  # seconds a live owner takes at most to claim a forwarded request
LEASE_POLL = 0.25  # seconds between looks at a dead or stopping owner's lease
SAFE_METHODS = frozenset({"GET", "HEAD"})  # a request of these may be run twice


class OwnerTransport(Protocol):
    """What the outgoing side needs of the cluster (`walletd.cluster.node.ClusterNode`)."""

    @property
    def host_id(self) -> str: ...

    @property
    def lease_ttl(self) -> float: ...

    async def lease_owner(self, escrow_id: str) -> LeaseOwner | None:
        """Who holds the escrow's live lease now, and whether that host is live."""
        ...

    async def forward(
        self,
        to_host: str,
        call: ForwardedCall,
        *,
        timeout: float,
        claim_timeout: float,
        owner_gone: OwnerCheck | None = None,
    ) -> ForwardedReply:
        """`to_host`'s reply to `call` (see `walletd.cluster.forwarding.Forwarder.forward`)."""
        ...


def call_from_request(request: Request, escrow_id: str | None) -> ForwardedCall:
    """What the origin forwards: the request as the owner's routes need it. The path's
    segments travel as they were split (before percent-decoding), never re-split from the
    decoded path, so a forwarded `/v1/escrows/e1%2Fbalance` routes on the owner exactly as it
    did here. Request headers do not travel: no route reads them."""
    return ForwardedCall(
        method=request.method,
        path=request.path,
        segments=request.segments,
        query=dict(request.query),
        body=request.body,
        escrow_id=escrow_id,
    )


def response_from_reply(reply: ForwardedReply) -> Response:
    """What the origin answers its client with: the owner's answer as it gave it."""
    return Response(
        status=reply.status,
        body=reply.body,
        content_type=reply.content_type,
        headers=reply.headers,
    )


async def _lease_lost(cluster: OwnerTransport, escrow_id: str, host_id: str) -> bool:
    """Whether `host_id` no longer holds the escrow (expired, released, or taken)."""
    owner = await cluster.lease_owner(escrow_id)
    return owner is None or owner.host_id != host_id


async def to_owner(
    cluster: OwnerTransport,
    here: Here,
    host_id: str,
    request: Request,
    escrow_id: str | None,
    *,
    timeout: float,
) -> Response:
    """Answer `request` on the live holder of `escrow_id` (which `host_id` was seen holding),
    or here through `here` once no other host holds it; within `timeout` seconds. Without an
    escrow (a creation another host has under way) there is no lease to follow: `host_id`
    answers it, or it is not run."""
    deadline = trio.current_time() + timeout
    call = call_from_request(request, escrow_id)
    if escrow_id is None:
        reply = await cluster.forward(host_id, call, timeout=timeout, claim_timeout=CLAIM_WAIT)
        return response_from_reply(reply)
    poll = min(LEASE_POLL, cluster.lease_ttl / 10)
    seen_ending: dict[str, datetime] = {}  # a holder not live: its lease's end when last seen
    while True:
        owner = await cluster.lease_owner(escrow_id)
        if owner is None or owner.host_id == cluster.host_id:
            # Free (or this host's): served here, and never forwarded again.
            return await here()
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            raise OwnerDidNotAnswer(
                f"escrow {escrow_id}: owner host {owner.host_id} did not answer and its lease"
                " did not end in time; the request was not run"
            )
        if not owner.live:
            before = seen_ending.get(owner.host_id)
            seen_ending[owner.host_id] = owner.expires_at
            if before is None or before == owner.expires_at:  # not renewed since: dead
                await trio.sleep(min(poll, max(owner.lease_left, 0.0) + 0.01, remaining))
                continue
        host = owner.host_id
        try:
            reply = await cluster.forward(
                host,
                call,
                timeout=remaining,
                # Past its lease's end a live owner would long have claimed it.
                claim_timeout=min(CLAIM_WAIT, owner.lease_left + poll, remaining),
                owner_gone=functools.partial(_lease_lost, cluster, escrow_id, host),
            )
            return response_from_reply(reply)
        except OwnerDidNotAnswer:
            if trio.current_time() >= deadline - poll:
                raise
        except OwnerGone:
            # It claimed the request and lost the escrow before answering (killed right after
            # the claim). A read runs again where the escrow is now; anything else may have
            # run there, and its caller learns so now (504) rather than at the deadline.
            if request.method not in SAFE_METHODS:
                raise
