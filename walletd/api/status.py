"""What `/v1/stats`, `/v1/health`, `/v1/cluster` and `/metrics` report: the registry, the
database, monerod, the hosts. Everything it reports is read when asked, from the parts given to
its constructor (their `statistics()`, their state): it keeps no figure of its own."""

from __future__ import annotations

from typing import Protocol

import trio

from walletd import __version__
from walletd.cluster.hosts import HostInfo
from walletd.cluster.leases import Lease
from walletd.cluster.postgres_store import timestamp
from walletd.errors import RpcError, StoreUnavailable
from walletd.escrows.service import STATES
from walletd.jsontypes import JsonObject
from walletd.ops.metrics import Metrics
from walletd.sessions.registry import Registry
from walletd.state.store import StateStore
from walletd.wallets.chain import Chain
from walletd.wallets.failover import DaemonFailover
from walletd.wallets.fastopen import FastOpen

__all__ = ["Hosts", "Status"]

_DAEMON_WAIT = 3.0  # seconds /v1/health waits for monerod's height


class Hosts(Protocol):
    """The hosts serving the escrows (`walletd.deployment`): this one alone, or a cluster's."""

    @property
    def host_id(self) -> str: ...

    async def hosts_and_leases(self) -> tuple[list[HostInfo], list[Lease]]: ...


class Status:
    def __init__(
        self,
        *,
        registry: Registry,
        store: StateStore,
        chain: Chain,
        metrics: Metrics,
        hosts: Hosts,
        fast_open: FastOpen | None = None,
        daemons: DaemonFailover | None = None,
    ) -> None:
        """`fast_open`: whether children preload it; `daemons`: which monerod is in use (None:
        one chain given by a test)."""
        self._registry = registry
        self._store = store
        self._chain = chain
        self._metrics = metrics
        self._hosts = hosts
        self._fast_open = fast_open
        self._daemons = daemons

    @property
    def fast_open(self) -> FastOpen | None:
        return self._fast_open

    def stats_json(self) -> JsonObject:
        stats = self._registry.statistics()
        return {
            "active_sessions": stats.active_sessions,
            "max_sessions": stats.max_sessions,
            "utilization": stats.utilization,
            "avg_age_s": stats.avg_age_s,
            "oldest_age_s": stats.oldest_age_s,
            "opened": stats.opened,
            "closed": stats.closed,
            "evicted": stats.evicted,
            "expired": stats.expired,
            "hits": stats.hits,
            "misses": stats.misses,
            "failed": stats.failed,
            "waiting": dict(stats.waiting),
            "wallet_rpc_restarts": stats.wallet_rpc_restarts,
        }

    async def cluster_json(self) -> JsonObject:
        """`GET /v1/cluster`: every running host (live while its last heartbeat is younger
        than lease_ttl; a host stopped gracefully is gone) and every live escrow lease, from
        the cluster database; on one host, this host alone and no leases."""
        hosts, leases = await self._hosts.hosts_and_leases()
        return {
            "host_id": self._hosts.host_id,
            "hosts": [
                {
                    "host_id": h.host_id,
                    "last_seen": timestamp(h.last_seen),
                    "sessions": h.sessions,
                    "max_sessions": h.capacity,
                    "live": h.live,
                }
                for h in hosts
            ],
            "leases": [
                {
                    "escrow_id": lease.escrow_id,
                    "host_id": lease.host_id,
                    "epoch": lease.epoch,
                    "expires_at": timestamp(lease.expires_at),
                }
                for lease in leases
            ],
        }

    async def health(self) -> tuple[int, JsonObject]:
        body: JsonObject = {
            "version": __version__,
            "active_sessions": self._registry.statistics().active_sessions,
        }
        if self._fast_open is not None:
            body["fast_open"] = self._fast_open.enabled
            if not self._fast_open.enabled:
                body["fast_open_reason"] = self._fast_open.reason
        if self._daemons is not None:
            body["daemon"] = self._daemons.current
        reasons = []
        try:
            body["escrows"] = await self._store.count_escrows()
        except StoreUnavailable:
            body["escrows"] = None
        # Degraded while writes fail: after a failure, ok again only once a write goes through.
        if self._store.failure is not None and not await self._store.probe():
            reasons.append(f"database: writes failing ({self._store.failure})")
        try:
            with trio.fail_after(_DAEMON_WAIT):
                body["daemon_height"] = await self._chain.height()
        except trio.TooSlowError:  # its str() is empty: say what happened
            body["daemon_height"] = None
            reasons.append(f"monerod: no answer in {_DAEMON_WAIT} s")
        except (RpcError, KeyError, ValueError) as exc:
            body["daemon_height"] = None
            reasons.append(f"monerod: {exc or type(exc).__name__}")
        if reasons:
            body.update(status="degraded", reason="; ".join(reasons))
            return 503, body
        body["status"] = "ok"
        return 200, body

    async def metrics_text(self) -> tuple[bytes, str]:
        stats = self._registry.statistics()
        by_state = {s.value: 0 for s in STATES}
        try:
            for rec in await self._store.list_escrows():
                if rec.state in by_state:
                    by_state[rec.state] += 1
        except StoreUnavailable:
            by_state = {}  # keep the last counts; walletd_db_errors_total says why
        return self._metrics.render(stats, [i.age_s for i in self._registry.sessions()], by_state)
