"""What the routes ask: where is this request answered? And the single host's answer: here.

A route hands `Forwarding.answer` the request, the escrow its route matched (None for a route
without `{id}`), whether its handler needs the escrow's session (so, in a cluster, the host
holding the escrow), and `here`, which runs the handler on this host. On one host (`AnswerHere`)
every request is answered here. In a cluster (`ClusterForwarding`) a request whose escrow
another live host holds is answered there, through the cluster database. The routes never ask
which of the two they have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from walletd.api.messages import Request, Response

__all__ = ["AnswerHere", "Forwarding", "Here"]

Here = Callable[[], Awaitable[Response]]  # the route's handler, run on this host


class Forwarding(Protocol):
    async def answer(
        self, request: Request, escrow_id: str | None, here: Here, *, needs_owner: bool
    ) -> Response:
        """`request`'s answer: from `here()`, or from the host that holds `escrow_id` when
        `needs_owner` (its handler needs the escrow's session) and another live host holds it.
        `escrow_id` is the route's `{id}`, already checked."""
        ...


class AnswerHere:
    """One host: it holds every escrow, so every request is answered here."""

    async def answer(
        self, request: Request, escrow_id: str | None, here: Here, *, needs_owner: bool
    ) -> Response:
        return await here()
