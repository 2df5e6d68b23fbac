"""Forwarding a request to the cluster host that holds its escrow: the API's side of it.

The transport is the cluster database (`walletd.cluster.forwarding`: the request and its reply
are rows, LISTEN/NOTIFY wakes each side), so hosts need no network path to each other beyond
the database they already share. The owner serves a forwarded request like its own, marked with
`FORWARDED_BY` so that it is never forwarded again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from walletd.api.server import Request, Response

__all__ = ["FORWARDED_BY", "Forward", "Forwarder"]

FORWARDED_BY = "x-walletd-forwarded-by"  # header naming the host a request came through


class Forward(Protocol):
    async def __call__(self, host_id: str, request: Request) -> Response:
        """Serve `request` on host `host_id`; its answer, or a 503 if it cannot be had."""
        ...


class Forwarder(Protocol):
    """Where the API answers a request: here, or on the cluster host holding its escrow
    (`walletd.deployment`: one host's never forwards; a cluster's forwards to the live owner)."""

    async def serve(
        self,
        request: Request,
        here: Callable[[], Awaitable[Response]],
        *,
        escrow_id: str | None,
        needs_session: bool,
    ) -> Response:
        """`here()`, unless the request is for an escrow another live host holds and
        `needs_session` (it needs the escrow's session): then that host's answer."""
        ...
