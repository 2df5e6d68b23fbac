"""Prometheus metrics, with the standard client library and a registry of our own.

Counters are bumped where things happen (opens, closes by reason, wallet-rpc restarts, monitor
cycles, wallet-rpc call latency); gauges that are cheaper to read than to track (sessions active,
escrows by state, session ages) are set from the live state when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["Metrics", "SessionCounts"]


class SessionCounts(Protocol):
    """The registry's figures a scrape reports (its `RegistryStats`; ops sits below sessions)."""

    @property
    def active_sessions(self) -> int: ...
    @property
    def max_sessions(self) -> int: ...


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_AGE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.sessions_active = Gauge("walletd_sessions_active", "Open escrow sessions", registry=r)
        self.sessions_max = Gauge("walletd_sessions_max", "Session cap", registry=r)
        self.session_opens = Counter("walletd_session_opens", "Sessions opened", registry=r)
        self.session_closes = Counter(
            "walletd_session_closes",
            "Sessions closed, by reason (explicit, evicted, expired, finished, shutdown, failed)",
            ["reason"],
            registry=r,
        )
        self.session_age = Histogram(
            "walletd_session_age_seconds",
            "Age of the open sessions at scrape time",
            buckets=_AGE_BUCKETS,
            registry=r,
        )
        self.rpc_latency = Histogram(
            "walletd_wallet_rpc_call_seconds",
            "wallet-rpc call latency by method",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.wallet_rpc_restarts = Counter(
            "walletd_wallet_rpc_restarts", "wallet-rpc processes replaced", registry=r
        )
        self.monitor_cycle = Histogram(
            "walletd_monitor_cycle_seconds",
            "Wall time of one monitor cycle",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.escrows = Gauge("walletd_escrows", "Escrows by state", ["state"], registry=r)
        self.db_errors = Counter(
            "walletd_db_errors",
            "State database reads and writes that failed (disk full, I/O error, locked)",
            registry=r,
        )

    def observe_rpc(self, method: str, seconds: float) -> None:
        self.rpc_latency.labels(method=method).observe(seconds)

    def render(
        self,
        stats: SessionCounts,
        session_ages: Iterable[float],
        escrows_by_state: Mapping[str, int],
    ) -> tuple[bytes, str]:
        self.sessions_active.set(stats.active_sessions)
        self.sessions_max.set(stats.max_sessions)
        # A histogram of a snapshot: rebuild it at each scrape from the live ages.
        self.registry.unregister(self.session_age)
        self.session_age = Histogram(
            "walletd_session_age_seconds",
            "Age of the open sessions at scrape time",
            buckets=_AGE_BUCKETS,
            registry=self.registry,
        )
        for age in session_ages:
            self.session_age.observe(age)
        for state, count in escrows_by_state.items():
            self.escrows.labels(state=state).set(count)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
