"""The cluster's figures on this host's `/metrics`, read from the live objects at each scrape.

Every host serves its own `/metrics`; `walletd_cluster_host_info{host_id}` says which host the
scrape came from, so a Prometheus scraping every host can tell them apart without relabelling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["ClusterFigures", "register"]


@attrs.frozen
class ClusterFigures:
    host_id: str
    leases_held: int
    leases_acquired: int
    leases_lost: int
    fenced_writes: int  # writes this host tried with a stale or missing lease, refused
    forwarded_sent: int  # requests this host handed to the escrow's owner
    forwarded_served: int  # requests other hosts handed to this one


class _Collector:
    def __init__(self, read: Callable[[], ClusterFigures]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        f = self._read()
        info = GaugeMetricFamily(
            "walletd_cluster_host_info",
            "This host's cluster host_id (always 1)",
            labels=["host_id"],
        )
        info.add_metric([f.host_id], 1)
        yield info
        yield GaugeMetricFamily(
            "walletd_cluster_leases_held", "Escrow leases this host holds", value=f.leases_held
        )
        yield CounterMetricFamily(
            "walletd_cluster_leases_acquired",
            "Escrow leases this host acquired (each a new epoch)",
            value=f.leases_acquired,
        )
        yield CounterMetricFamily(
            "walletd_cluster_leases_lost",
            "Escrow leases this host lost before releasing them (it self-fenced: the escrow's "
            "wallet-rpc processes were killed)",
            value=f.leases_lost,
        )
        yield CounterMetricFamily(
            "walletd_cluster_fenced_writes",
            "Writes about an escrow refused because this host's lease was stale or missing",
            value=f.fenced_writes,
        )
        forwarded = CounterMetricFamily(
            "walletd_cluster_forwarded_requests",
            "API requests forwarded between hosts: sent (to the escrow's owner) or served (here)",
            labels=["direction"],
        )
        forwarded.add_metric(["sent"], f.forwarded_sent)
        forwarded.add_metric(["served"], f.forwarded_served)
        yield forwarded


def register(registry: CollectorRegistry, read: Callable[[], ClusterFigures]) -> None:
    registry.register(_Collector(read))
