"""What start-up does before any service runs: the private directories, the wallet-rpc
processes (our children, or external endpoints) and the children a dead walletd left behind,
the `/metrics` listening sockets."""

from __future__ import annotations

import os
from pathlib import Path

import structlog
import trio

from walletd.config import Config
from walletd.errors import ConfigError
from walletd.ops.preflight import socket_dir_problem, wallet_dir_problem
from walletd.wallets.children import ChildPool, ChildSettings, ProcessPool
from walletd.wallets.endpoints import Endpoint, EndpointPool
from walletd.wallets.fastopen import FastOpen
from walletd.wallets.orphans import remove_orphans

__all__ = ["metrics_listeners", "prepare_children", "prepare_dirs", "wallet_rpc_pool"]

log = structlog.get_logger(__name__)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, walletd runs as {os.getuid()}")
    if st.st_mode & 0o077:
        path.chmod(0o700)


def prepare_dirs(config: Config) -> None:
    """Create walletd's directories: private state, a wallet directory nobody else can reach
    (made 0700; an existing wider one is a `ConfigError`, see `wallet_dir_problem`), and a
    socket directory only we can write."""
    _private_dir(config.daemon.state_dir)
    config.monero.wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = wallet_dir_problem(config.monero.wallet_dir)
    if problem:
        raise ConfigError(problem)
    _private_dir(config.daemon.state_dir / "run")
    sock_dir = config.daemon.socket_path.parent
    sock_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    problem = socket_dir_problem(sock_dir)
    if problem:
        raise ConfigError(problem)


def wallet_rpc_pool(config: Config, settings: ChildSettings) -> ProcessPool:
    """The wallet-rpc processes sessions use: `monero.wallet_rpc_endpoints` when set (started
    by someone else), else walletd's own children."""
    m = config.monero
    if m.wallet_rpc_endpoints:
        endpoints = [Endpoint(e.url, e.user, e.password) for e in m.wallet_rpc_endpoints]
        return EndpointPool(endpoints, call_timeout=m.call_timeout)
    return ChildPool(settings)


async def prepare_children(
    config: Config, pool: ProcessPool, settings: ChildSettings, fast_open: FastOpen
) -> None:
    """Stop the children a walletd that died left (they hold the wallets' keys-file locks),
    and say whether the new ones open wallets fast; or say what external endpoints cost."""
    if config.monero.wallet_rpc_endpoints:
        log.warning(
            "using external wallet-rpc endpoints: session cap limited to endpoints/3",
            endpoints=len(config.monero.wallet_rpc_endpoints),
            max_active=config.effective_max_active,
            configured_max_active=config.sessions.max_active,
        )
        return
    if not isinstance(pool, ChildPool):
        return  # fake wallet-rpc processes (tests, the dev sandbox)
    stopped = await trio.to_thread.run_sync(remove_orphans, settings)
    if stopped:
        log.warning("stopped wallet-rpc children left by a previous walletd", count=stopped)
    if fast_open.enabled:
        log.info("fast wallet opens on", library=str(fast_open.library))
    else:
        log.warning("fast wallet opens off", reason=fast_open.reason)


async def metrics_listeners(address: str) -> list[trio.SocketListener]:
    """The listening sockets of `daemon.metrics_address` (none when it is empty), bound before
    anything starts: a taken port stops start-up with the key's name."""
    if not address:
        return []
    host, _, port = address.rpartition(":")
    try:
        return await trio.open_tcp_listeners(
            int(port), host=host.removeprefix("[").removesuffix("]")
        )
    except OSError as exc:
        raise ConfigError(
            f"daemon.metrics_address: cannot listen on {address}: {exc.strerror or exc}"
        ) from None
