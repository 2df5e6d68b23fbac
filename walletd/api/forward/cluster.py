"""A cluster host's forwarding, both ways: the one object the routes and the cluster talk to.

Outgoing (`answer`, asked by the routes for every request): a request whose handler needs the
escrow's session is answered on the host holding the escrow, so a session stays where it is
rather than moving back and forth. It is answered here when its session is open here (no
database read on that hot path), when no other live host holds the escrow, or when it came
forwarded from another host already (only once: see `incoming`). Otherwise, and when a handler
run here finds the escrow taken by another host since (`OwnedElsewhere`), `outgoing.to_owner`
follows the escrow's lease to its live holder.

Incoming (`incoming(api)`, the handler `ClusterNode.run(serve=...)` takes): a call another host
forwarded here is run through this host's API, marked so that it is never forwarded again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from walletd.api.forward import incoming
from walletd.api.forward.base import Here
from walletd.api.forward.outgoing import OwnerTransport, to_owner
from walletd.api.messages import Handler, Request, Response
from walletd.cluster.forwarding import ForwardedCall, ForwardedReply, ForwardHandler
from walletd.errors import OwnedElsewhere

__all__ = ["ClusterForwarding", "ClusterTransport"]


class _Owners(Protocol):
    async def owner_elsewhere(self, escrow_id: str) -> str | None:
        """The other live host holding the escrow, if any (a read: it may change right after)."""
        ...


class ClusterTransport(OwnerTransport, Protocol):
    """What `ClusterForwarding` needs of the cluster: `walletd.cluster.node.ClusterNode`."""

    @property
    def ownership(self) -> _Owners: ...


class ClusterForwarding:
    """Forwards a request to the live host holding its escrow, and serves those forwarded here.

    `cluster`: the transport (`ClusterNode`: the escrows' leases, and the cluster database's
    forwarding). `open_here(escrow_id)`: whether the escrow's session is open on this host
    (`Registry.is_open`). `timeout`: how long a forwarded request may take in all, waiting for
    a dead owner's lease included (`daemon.request_timeout`)."""

    def __init__(
        self, cluster: ClusterTransport, *, open_here: Callable[[str], bool], timeout: float
    ) -> None:
        self._cluster = cluster
        self._open_here = open_here
        self._timeout = timeout

    async def answer(
        self, request: Request, escrow_id: str | None, here: Here, *, needs_owner: bool
    ) -> Response:
        if incoming.came_forwarded(request):
            return await here()
        if needs_owner and escrow_id is not None and not self._open_here(escrow_id):
            owner = await self._cluster.ownership.owner_elsewhere(escrow_id)
            if owner is not None:
                return await self._to_owner(owner, request, escrow_id, here)
        try:
            return await here()
        except OwnedElsewhere as exc:  # taken by another host since (or a creation there)
            if not exc.host_id:
                raise
            return await self._to_owner(exc.host_id, request, escrow_id, here)

    async def _to_owner(
        self, host_id: str, request: Request, escrow_id: str | None, here: Here
    ) -> Response:
        return await to_owner(
            self._cluster, here, host_id, request, escrow_id, timeout=self._timeout
        )

    def incoming(self, api: Handler) -> ForwardHandler:
        """The handler for calls other hosts forward here: each run through `api` (the
        daemon's `Api`). Given at start-up, when the background parts start: the `Api` itself
        takes this object, so it cannot be given to the constructor."""

        async def serve(call: ForwardedCall) -> ForwardedReply:
            return await incoming.serve_forwarded(api, call)

        return serve
