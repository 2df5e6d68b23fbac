"""One host of a cluster: everything it runs beside the daemon's own parts (issue 14).

Built from `[cluster]` at start-up: the database pool, the leases and this host's holdings of
them (`ClusterOwnership`), the PostgreSQL store (every escrow write fenced), the wallet files'
keeper, the host's heartbeat, one LISTEN connection (event wake-ups, forwarded requests and
their replies), the forwarder and the server of requests forwarded here. `start` connects and
migrates (a database that cannot be reached stops start-up, clearly); `run` keeps the
background parts going until cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from walletd.cluster.db import Connection, Database
from walletd.cluster.forwarding import (
    ForwardedCall,
    ForwardedReply,
    Forwarder,
    ForwardHandler,
    ForwardServer,
    OwnerCheck,
    forwarding_channels,
)
from walletd.cluster.hosts import HostInfo, Hosts, LeaseOwner
from walletd.cluster.lease_ownership import ClusterOwnership
from walletd.cluster.leases import Lease, Leases
from walletd.cluster.metrics import ClusterFigures
from walletd.cluster.migrations import migrate
from walletd.cluster.notifications import EVENTS_CHANNEL, Listener
from walletd.cluster.postgres_store import PgStore
from walletd.cluster.wallet_files import WalletFiles
from walletd.config import ClusterConfig
from walletd.errors import ClusterUnavailable, ConfigError

__all__ = ["ClusterNode"]

log = structlog.get_logger(__name__)

POOL_SIZE = 8  # database connections: store, wallet files, forwarding (renewals have their own)


class ClusterNode:
    def __init__(self, cfg: ClusterConfig, wallet_dir: Path) -> None:
        self.host_id = cfg.host_id
        self.lease_ttl = cfg.lease_ttl
        self.db = Database(cfg.database_url, max_size=POOL_SIZE, lease_ttl=cfg.lease_ttl)
        self.leases = Leases(self.db, cfg.lease_ttl)
        self.wallet_files = WalletFiles(self.db, self.leases)
        # Live as long as a lease: a host that died stops being live as its leases expire.
        self.hosts = Hosts(self.db, live_within=cfg.lease_ttl)
        self.ownership = ClusterOwnership(
            self.leases, cfg.host_id, self.wallet_files, wallet_dir, hosts=self.hosts
        )
        self.store = PgStore(self.db, self.leases, self.ownership.tenure_of, cfg.host_id)
        self.listener = Listener(
            cfg.database_url, [EVENTS_CHANNEL, *forwarding_channels(cfg.host_id)]
        )
        self.forwarder = Forwarder(self.db, self.listener, cfg.host_id)
        self._server: ForwardServer | None = None
        self._beating = trio.Lock()  # a heartbeat and the withdrawal never cross
        self._withdrawn = False

    async def start(self, vault_fingerprint: str) -> int:
        """Connect, bring the schema up to date, and check that this host's vault key is the
        cluster's (the first host to start sets it); returns the schema version.

        Every host must have the same `walletd.key`: the wallets' passwords derive from it (and
        the adopted ones are sealed with it), so a host with another key could open no escrow.
        The key itself never goes to the database, only its fingerprint: the database holds the
        wallet files, and must not hold what opens them."""
        await self.db.open()
        version = await migrate(self.db)

        def check(conn: Connection) -> str:
            conn.execute(
                "INSERT INTO cluster_settings VALUES ('vault_check', %s) ON CONFLICT DO NOTHING",
                (vault_fingerprint,),
            )
            row = conn.execute(
                "SELECT value FROM cluster_settings WHERE name = 'vault_check'"
            ).fetchone()
            assert row is not None
            return str(row[0])

        if await self.db.run(check) != vault_fingerprint:
            await self.db.close()
            raise ConfigError(
                "this host's vault key (state_dir/walletd.key) is not the cluster's: every host"
                " must have the same key file; copy it from a host of the cluster"
            )
        log.info("cluster database ready", host_id=self.host_id, schema_version=version)
        return version

    async def run(
        self,
        *,
        serve: ForwardHandler,
        sessions: Callable[[], tuple[int, int]],
        on_events: Callable[[], None],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The background parts. `serve` answers requests forwarded here; `sessions()` is
        (open, cap) for the heartbeat; `on_events` wakes this host's long polls."""
        self._server = ForwardServer(self.db, self.listener, self.host_id, serve)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.db.watch)  # a database known down: 503 at once
                await nursery.start(self.listener.run)
                await nursery.start(self.ownership.run)
                await nursery.start(self.forwarder.run)
                await nursery.start(self._server.run)
                await nursery.start(self._heartbeat, sessions)
                nursery.start_soon(self._event_wakeups, on_events)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.db.close()

    async def forward(
        self,
        to_host: str,
        call: ForwardedCall,
        *,
        timeout: float,
        claim_timeout: float,
        owner_gone: OwnerCheck | None = None,
    ) -> ForwardedReply:
        return await self.forwarder.forward(
            to_host, call, timeout=timeout, claim_timeout=claim_timeout, owner_gone=owner_gone
        )

    async def lease_owner(self, escrow_id: str) -> LeaseOwner | None:
        """Who holds the escrow now and whether that host is live (see `Hosts.lease_owner`)."""
        return await self.hosts.lease_owner(escrow_id)

    async def stop_serving(self) -> None:
        """The start of a graceful stop: withdraw this host from the list (the others forward
        nothing more to it) and claim no more forwarded requests, then wait for those claimed
        already. A heartbeat under way ends first, and none follows, so the host stays out."""
        async with self._beating:
            self._withdrawn = True
            try:
                await self.hosts.withdraw(self.host_id)
            except ClusterUnavailable as exc:  # the others see it stale within lease_ttl
                log.warning("cluster host not withdrawn", error=exc.message)
        if self._server is not None:
            await self._server.stop_claiming()

    async def _heartbeat(
        self,
        sessions: Callable[[], tuple[int, int]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        while True:
            async with self._beating:
                if self._withdrawn:
                    break
                active, cap = sessions()
                try:
                    await self.hosts.heartbeat(self.host_id, active, cap)
                except ClusterUnavailable as exc:
                    log.warning("cluster heartbeat failed", error=exc.message)
            if not started:
                task_status.started()
                started = True
            await trio.sleep(self.lease_ttl / 3)
        if not started:
            task_status.started()
        await trio.sleep_forever()

    async def _event_wakeups(self, on_events: Callable[[], None]) -> None:
        with self.listener.subscribe(EVENTS_CHANNEL) as sub:
            while True:
                await sub.wait()
                on_events()

    async def cluster_view(self) -> tuple[list[HostInfo], list[Lease]]:
        """`GET /v1/cluster`: every host that ever beat, and the live leases."""
        hosts = await self.hosts.list()
        leases = [lease for lease in await self.leases.list() if lease.live]
        return hosts, leases

    def statistics(self) -> ClusterFigures:
        """This host's cluster figures now (`/metrics`), each read from the part that counts it."""
        held = self.ownership.statistics()
        server = self._server
        return ClusterFigures(
            host_id=self.host_id,
            leases_held=held.held,
            leases_acquired=held.acquired,
            leases_lost=held.lost,
            fenced_writes=self.leases.statistics().fenced_writes,
            forwarded_sent=self.forwarder.statistics().answered,
            forwarded_served=server.statistics().answered if server is not None else 0,
        )
