"""One host: SQLite in the state directory, this host owns every escrow, nothing is forwarded."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from walletd.api.forward import AnswerHere
from walletd.cluster.hosts import HostInfo
from walletd.cluster.leases import Lease
from walletd.daemon.services import Service
from walletd.deployment.deployment import Wiring
from walletd.sessions.registry import RunnableSession
from walletd.sessions.session import EscrowSession, OnStored
from walletd.state.ownership import LocalOwnership
from walletd.state.sqlite_store import LocalState, Store
from walletd.wallets.repair import KeptVersions

__all__ = ["SingleHost"]


class SingleHost:
    def __init__(self, state_db: Path, wiring: Wiring) -> None:
        self._wiring = wiring
        self._host_id = socket.gethostname()
        self._store = LocalState(Store(state_db))
        self._ownership = LocalOwnership()
        self._forwarding = AnswerHere()  # every request is answered here

    @property
    def host_id(self) -> str:
        return self._host_id

    @property
    def store(self) -> LocalState:
        return self._store

    @property
    def ownership(self) -> LocalOwnership:
        return self._ownership

    @property
    def forwarding(self) -> AnswerHere:
        return self._forwarding

    @property
    def kept_versions(self) -> KeptVersions | None:
        return None  # the wallet files are this host's alone: its backups are the only copies

    @property
    def on_stored(self) -> OnStored | None:
        return None  # a stored wallet stays in `monero.wallet_dir`

    def session(self, session: EscrowSession) -> RunnableSession:
        return session

    async def start(self, vault_fingerprint: str) -> None:
        return None

    def services(self) -> Sequence[Service]:
        return ()

    async def hosts_and_leases(self) -> tuple[list[HostInfo], list[Lease]]:
        """This host alone, live now, and no leases."""
        active, cap = self._wiring.sessions_now()
        here = HostInfo(self._host_id, datetime.now(UTC), active, cap, live=True)
        return [here], []

    def register_metrics(self, registry: CollectorRegistry) -> None:
        return None  # one host: /metrics has no cluster figures
