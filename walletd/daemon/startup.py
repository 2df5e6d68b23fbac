"""What start-up does to the machine before any service runs: the private directories, the
wallet-rpc children a dead walletd left behind, the `/metrics` listening sockets."""

from __future__ import annotations

import os
from pathlib import Path

import structlog
import trio

from walletd.config import Config
from walletd.errors import ConfigError
from walletd.ops.preflight import socket_dir_problem, wallet_dir_problem
from walletd.wallets.children import ChildSettings
from walletd.wallets.fastopen import FastOpen
from walletd.wallets.orphans import remove_orphans

__all__ = ["metrics_listeners", "prepare_dirs", "stop_orphans"]

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


async def stop_orphans(settings: ChildSettings, fast_open: FastOpen) -> None:
    """Stop the children a walletd that died left (they hold the wallets' keys-file locks),
    and say whether the new ones open wallets fast."""
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
