"""A cluster host: PostgreSQL, escrow leases, wallet files in the database, and requests
answered on the host that holds their escrow (issue 14).

`Cluster` is the `Deployment` over a `ClusterNode` (`walletd.cluster.node`): its store and lease
ownership; a session runs only under its escrow's lease (`LeasedSession`), each wallet it stores
saved to the database (`on_stored`), a repair trying the database's versions first
(`kept_versions`). Its background parts run as one service, stopped last (after the sessions:
each released its lease as it closed); at the start of a stop the host leaves the host list and
claims no more forwarded requests, and once the sessions are stored and closed it hands back
every lease at once, so the others serve those escrows without waiting for them to expire.

Its `forwarding` is the API's `ClusterForwarding` (`walletd.api.forward`): a request needing the
session of an escrow another live host holds is answered there, and requests other hosts
forward here are served through this host's API.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from walletd.api.forward import ClusterForwarding
from walletd.cluster.hosts import HostInfo
from walletd.cluster.lease_ownership import ClusterOwnership
from walletd.cluster.leases import Lease
from walletd.cluster.metrics import register as register_cluster_metrics
from walletd.cluster.node import ClusterNode
from walletd.cluster.postgres_store import PgStore
from walletd.cluster.wallet_files import WalletFiles
from walletd.config import ClusterConfig
from walletd.daemon.services import Service, Stage
from walletd.deployment.deployment import Wiring
from walletd.ids import Role
from walletd.sessions.leased import LeasedSession
from walletd.sessions.registry import RunnableSession
from walletd.sessions.session import EscrowSession, OnStored

__all__ = ["Cluster"]


class Cluster:
    def __init__(
        self, cfg: ClusterConfig, wallet_dir: Path, wiring: Wiring, *, forward_timeout: float
    ) -> None:
        self.node = ClusterNode(cfg, wallet_dir)
        self._wiring = wiring
        self._forwarding = ClusterForwarding(
            self.node, open_here=wiring.is_open, timeout=forward_timeout
        )

    @property
    def host_id(self) -> str:
        return self.node.host_id

    @property
    def store(self) -> PgStore:
        return self.node.store

    @property
    def ownership(self) -> ClusterOwnership:
        return self.node.ownership

    @property
    def forwarding(self) -> ClusterForwarding:
        return self._forwarding

    @property
    def kept_versions(self) -> WalletFiles:
        return self.node.wallet_files

    @property
    def on_stored(self) -> OnStored:
        return self._wallet_stored

    async def _wallet_stored(self, escrow_id: str, role: Role, file: str) -> None:
        await self.node.ownership.wallets_stored(escrow_id, {role: file})

    def session(self, session: EscrowSession) -> RunnableSession:
        """Only while this host holds the escrow's lease, its files from the database."""
        return LeasedSession(session, self.node.ownership)

    async def start(self, vault_fingerprint: str) -> None:
        await self.node.start(vault_fingerprint)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The cluster's background parts (after `start`), wired to this daemon."""
        await self.node.run(
            serve=self._forwarding.incoming(self._wiring.serve),
            sessions=self._wiring.sessions_now,
            on_events=self._wiring.events_written,
            task_status=task_status,
        )

    def services(self) -> Sequence[Service]:
        return (
            Service(
                "cluster",
                self.run,
                stop=Stage.LAST,
                steps=((Stage.INTAKE, self._stop_serving), (Stage.LEASES, self._release)),
            ),
        )

    async def _stop_serving(self, left: float) -> None:
        # Forwarded calls too: none claimed from now on (the other hosts serve them once our
        # leases are back), those claimed get the grace.
        await self.node.stop_serving()

    async def _release(self, left: float) -> None:
        # Stored and closed: hand the leases back now, so the others serve at once.
        await self.node.ownership.release_unused()

    async def hosts_and_leases(self) -> tuple[list[HostInfo], list[Lease]]:
        return await self.node.cluster_view()

    def register_metrics(self, registry: CollectorRegistry) -> None:
        register_cluster_metrics(registry, self.node.statistics)
