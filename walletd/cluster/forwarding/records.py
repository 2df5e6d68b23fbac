"""What travels between two hosts through the `forwarded_requests` table, in both directions.

`ForwardedCall` (a request, as the owner's handler needs it) and `ForwardedReply` (its answer) are
the wire records: this layer cannot import the API (`walletd.api` sits above it), so the API
converts its Request and Response to and from them. Also here: the LISTEN/NOTIFY channel names of
each side. (The errors an origin raises when a forwarded request gets no answer are in
`walletd.errors`.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping

import attrs

__all__ = [
    "ForwardHandler",
    "ForwardedCall",
    "ForwardedReply",
    "ForwardingStatistics",
    "OwnerCheck",
    "forward_channel",
    "forwarding_channels",
    "reply_channel",
]


def _channel(prefix: str, host_id: str) -> str:
    # Host ids are free text (a hostname by default) and channel names are identifiers of at
    # most 63 bytes: a digest keeps every channel name valid and distinct.
    return prefix + hashlib.sha256(host_id.encode()).hexdigest()[:32]


def forward_channel(host_id: str) -> str:
    """The channel that wakes `host_id`'s ForwardServer (payload: the row id)."""
    return _channel("walletd_fwd_", host_id)


def reply_channel(host_id: str) -> str:
    """The channel that wakes `host_id`'s Forwarder when a reply is written (payload: row id)."""
    return _channel("walletd_rep_", host_id)


def forwarding_channels(host_id: str) -> tuple[str, str]:
    """The channels a host's Listener must LISTEN on for forwarding, both ways."""
    return forward_channel(host_id), reply_channel(host_id)


@attrs.frozen
class ForwardingStatistics:
    """What a host's `Forwarder.statistics()` and `ForwardServer.statistics()` report (since
    start): requests another host answered for this one, or this one for another; and, on the
    sending side, those withdrawn unclaimed (never run) or claimed and left unanswered (outcome
    unknown)."""

    answered: int
    not_answered: int = 0
    unknown: int = 0


@attrs.frozen
class ForwardedCall:
    """A request as the owner's handler needs it. `segments` are the path's segments decoded one
    by one (what routes use: re-splitting the decoded `path` could re-route `e1%2Fbalance`)."""

    method: str
    path: str
    segments: tuple[str, ...]
    query: Mapping[str, str]
    body: bytes = attrs.field(repr=False)  # may hold wallet passwords
    escrow_id: str | None = None


@attrs.frozen
class ForwardedReply:
    status: int
    body: bytes = attrs.field(repr=False)
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


ForwardHandler = Callable[[ForwardedCall], Awaitable[ForwardedReply]]
OwnerCheck = Callable[[], Awaitable[bool]]  # True once the owner can no longer answer
