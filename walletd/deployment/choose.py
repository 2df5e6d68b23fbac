"""The one place the daemon asks whether it runs in a cluster: `[cluster]` set or not."""

from __future__ import annotations

from walletd.config import Config
from walletd.deployment.cluster import Cluster
from walletd.deployment.deployment import Deployment, Wiring
from walletd.deployment.single_host import SingleHost

__all__ = ["deployment_for"]


def deployment_for(config: Config, wiring: Wiring) -> Deployment:
    """One host (SQLite in the state directory) unless `[cluster]` is set."""
    if config.cluster is None:
        return SingleHost(config.daemon.state_dir / "walletd.sqlite3", wiring)
    timeout = config.daemon.request_timeout  # a forwarded request's bound: the call's own
    return Cluster(config.cluster, config.monero.wallet_dir, wiring, forward_timeout=timeout)
