"""The deployment: what one host and a cluster do differently, behind one face.

A `Deployment` gives the daemon its store, who owns which escrow (`Ownership`), how a session
runs (on one host as it is; in a cluster only under the escrow's lease, its wallet files restored
from and saved to the database), where the API answers a request (`Forwarding`: here, or on the
escrow's live owner), its background services with their stop steps, and its figures (the hosts
and leases of `GET /v1/cluster`, its `/metrics`). `deployment_for` picks the implementation from
`[cluster]` (`walletd.deployment.choose`): the only place the daemon asks whether it runs in a
cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry

from walletd.api.forward import Forwarding
from walletd.api.messages import Request, Response
from walletd.cluster.hosts import HostInfo
from walletd.cluster.leases import Lease
from walletd.daemon.services import Service
from walletd.sessions.registry import RunnableSession
from walletd.sessions.session import EscrowSession, OnStored
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore
from walletd.wallets.repair import KeptVersions

__all__ = ["Deployment", "Wiring"]


class Wiring(Protocol):
    """What a deployment asks of the daemon, read when it is needed (the daemon is built after
    its deployment: everything else needs the store)."""

    async def serve(self, request: Request) -> Response:
        """Answer a request as this host's API does (a forwarded one, or one served here)."""
        ...

    def is_open(self, escrow_id: str) -> bool:
        """Whether this host has the escrow's session open."""
        ...

    def sessions_now(self) -> tuple[int, int]:
        """(open sessions, the cap) on this host."""
        ...

    def events_written(self) -> None:
        """Another host wrote events: wake this host's long polls."""
        ...


class Deployment(Protocol):
    @property
    def host_id(self) -> str:
        """This host's name: `[cluster] host_id`, else the machine's host name."""
        ...

    @property
    def store(self) -> StateStore: ...

    @property
    def ownership(self) -> Ownership: ...

    @property
    def forwarding(self) -> Forwarding:
        """Where the API answers a request (`walletd.api.forward`)."""
        ...

    @property
    def kept_versions(self) -> KeptVersions | None:
        """Where a repair finds newer wallet files than this host's backups (the database)."""
        ...

    @property
    def on_stored(self) -> OnStored | None:
        """Called with each wallet a session stored (a cluster keeps its files off the host)."""
        ...

    def session(self, session: EscrowSession) -> RunnableSession:
        """How `session` runs: as it is, or only while this host holds the escrow's lease."""
        ...

    async def start(self, vault_fingerprint: str) -> None:
        """Before any service starts: a cluster connects, migrates and checks the vault key
        (a database that cannot be reached, or another key, stops start-up, saying so)."""
        ...

    def services(self) -> Sequence[Service]:
        """Its background parts, with their stop steps (`walletd.daemon.services`)."""
        ...

    async def hosts_and_leases(self) -> tuple[list[HostInfo], list[Lease]]:
        """`GET /v1/cluster`: the hosts serving the escrows and the live leases."""
        ...

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Its figures on `/metrics`, read at each scrape."""
        ...
