"""Prometheus metrics, with the standard client library and a registry of our own.

Counters are bumped where things happen (opens, closes by reason, wallet-rpc restarts, monitor
cycles, wallet-rpc call latency, API requests, payouts); figures that are cheaper to read than to
track (sessions active, escrows by state, session ages) are read from the live state when /metrics
is scraped. Session ages are a gauge histogram yielded by a collector at each scrape: a snapshot of
the sessions open now, not a histogram that accumulates, so it has no `_count`, `_sum` or
`_created` that would reset at every scrape.

Buckets reach 120 s: a wallet-rpc `open_wallet` or `create_wallet` takes well over 10 s on a
loaded host (monero.open_timeout is 120 s), and an API call may wait that long too (long polls
take up to 60 s, daemon.request_timeout is 90 s).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeHistogramMetricFamily, Metric

from walletd import __version__

__all__ = ["PAYOUT_KINDS", "PAYOUT_OUTCOMES", "PAYOUT_RETRY_SOURCES", "Metrics", "SessionCounts"]


class SessionCounts(Protocol):
    """The registry's figures a scrape reports (`RegistryStatistics`; ops sits below sessions)."""

    @property
    def active_sessions(self) -> int: ...
    @property
    def max_sessions(self) -> int: ...
    @property
    def waiting(self) -> Mapping[str, int]: ...


# From a warm read (under a millisecond) to a wallet open on a loaded host (up to 120 s).
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 20, 30, 60, 90, 120,
)  # fmt: skip
_AGE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
PAYOUT_KINDS = ("release", "refund")
# submitted: monerod accepted it; failed: a step failed (the payout resumes on the next call);
# resubmitted: monerod had lost it and the recorded transaction was relayed again;
# confirmed: it reached the escrow's required confirmations (completed or refunded).
PAYOUT_OUTCOMES = ("submitted", "failed", "resubmitted", "confirmed")
# restart: resumed at start-up; retry: this host's own, after its back-off; adopted: left by a
# host no longer live (or by none known), after its back-off (walletd.escrows.retries).
PAYOUT_RETRY_SOURCES = ("restart", "retry", "adopted")


class _SessionAges:
    """A collector: the ages of the sessions open at the last `Metrics.render`, as a gauge
    histogram (bucket counts of the current sessions; `_gcount`, `_gsum`)."""

    def __init__(self) -> None:
        self.ages: list[float] = []

    def describe(self) -> Iterable[Metric]:
        return [self._family([])]

    def collect(self) -> Iterator[Metric]:
        yield self._family(self.ages)

    @staticmethod
    def _family(ages: list[float]) -> Metric:
        buckets = [(str(float(b)), sum(1 for a in ages if a <= b)) for b in _AGE_BUCKETS]
        buckets.append(("+Inf", len(ages)))
        return GaugeHistogramMetricFamily(
            "walletd_session_age_seconds",
            "Ages of the sessions open now (a snapshot at each scrape)",
            buckets=buckets,
            gsum_value=sum(ages),
        )


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Gauge(
            "walletd_build_info", "walletd's version (always 1)", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.sessions_active = Gauge("walletd_sessions_active", "Open escrow sessions", registry=r)
        self.sessions_max = Gauge("walletd_sessions_max", "Session cap", registry=r)
        self.sessions_waiting = Gauge(
            "walletd_sessions_waiting",
            "Callers waiting for a session slot at the cap, by caller kind",
            ["caller"],
            registry=r,
        )
        self.session_opens = Counter("walletd_session_opens", "Sessions opened", registry=r)
        self.session_closes = Counter(
            "walletd_session_closes",
            "Sessions closed, by reason (explicit, evicted, expired, finished, shutdown, failed)",
            ["reason"],
            registry=r,
        )
        self._session_ages = _SessionAges()
        r.register(self._session_ages)
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
        self.monitor_lag = Gauge(
            "walletd_monitor_lag_blocks",
            "Blocks monerod's chain is ahead of the last height the monitor finished a cycle at",
            registry=r,
        )
        self.escrows = Gauge("walletd_escrows", "Escrows by state", ["state"], registry=r)
        self.wallet_repairs = Counter(
            "walletd_wallet_repairs",
            "Wallets repaired, by source: cache (rebuilt from the chain), backup (a checked "
            "backup restored), database (a checked version the cluster database kept), reopened "
            "(damage reported in a session; reopened unsaved)",
            ["source"],
            registry=r,
        )
        for source in ("cache", "backup", "database", "reopened"):
            self.wallet_repairs.labels(source=source)
        self.db_errors = Counter(
            "walletd_db_errors",
            "State database reads and writes that failed (disk full, I/O error, locked)",
            registry=r,
        )
        self.api_requests = Counter(
            "walletd_api_requests",
            "API requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.api_latency = Histogram(
            "walletd_api_request_seconds",
            "API request handling time by route template and method (long polls included)",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.payouts = Counter(
            "walletd_payouts",
            "Payouts by kind (release, refund) and outcome (submitted, failed, resubmitted, "
            "confirmed)",
            ["kind", "outcome"],
            registry=r,
        )
        for kind in PAYOUT_KINDS:  # every series from the start, so rate() sees the first one
            for outcome in PAYOUT_OUTCOMES:
                self.payouts.labels(kind=kind, outcome=outcome)
        self.payout_retries = Counter(
            "walletd_payout_retries",
            "Payouts driven again after an attempt that did not finish, by source (restart: at "
            "start-up; retry: this host's own after its back-off; adopted: left by a host no "
            "longer live)",
            ["source"],
            registry=r,
        )
        for source in PAYOUT_RETRY_SOURCES:
            self.payout_retries.labels(source=source)

    def observe_rpc(self, method: str, seconds: float) -> None:
        self.rpc_latency.labels(method=method).observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One API request; `route` is the matched template (`/v1/escrows/{id}`), never the
        raw path, so escrow ids never become labels.

        The labelled children are looked up once per (route, method, status) and kept: every
        request passes here, and `labels()` (keyword checks, a lock, string conversions) cost
        more than the two updates. The keys are bounded as the labels are."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.api_requests.labels(route=route, method=method, status=str(status)),
                self.api_latency.labels(route=route, method=method),
            )
            self._request_children[key] = children
        count, latency = children
        count.inc()
        latency.observe(seconds)

    def payout(self, kind: str, outcome: str) -> None:
        self.payouts.labels(kind=kind, outcome=outcome).inc()

    def payout_retry(self, source: str) -> None:
        self.payout_retries.labels(source=source).inc()

    def render(
        self,
        stats: SessionCounts,
        session_ages: Iterable[float],
        escrows_by_state: Mapping[str, int],
    ) -> tuple[bytes, str]:
        self.sessions_active.set(stats.active_sessions)
        self.sessions_max.set(stats.max_sessions)
        for caller, count in stats.waiting.items():
            self.sessions_waiting.labels(caller=caller).set(count)
        self._session_ages.ages = list(session_ages)
        for state, count in escrows_by_state.items():
            self.escrows.labels(state=state).set(count)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
