"""Start-up checks that need no running daemon: `walletd --check-config` and start-up share them.

Each check returns problems as one line each, naming the config key (`monero.wallet_rpc_path:
/opt/monero/monero-wallet-rpc not found`). Nothing here creates or changes a file, and nothing
looks at the state dir's lock: `systemctl reload` runs `--check-config` while walletd runs.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from walletd.config import Config

__all__ = ["problems", "socket_dir_problem", "wallet_dir_problem"]


def problems(config: Config) -> list[str]:
    """Every problem start-up would meet with `config`, one line each; empty when all is well."""
    found: list[str] = []
    m = config.monero
    if not m.wallet_rpc_endpoints:  # walletd starts its own monero-wallet-rpc children
        found += _executable("monero.wallet_rpc_path", m.wallet_rpc_path)
    d = config.daemon
    state_problems = _private_dir("daemon.state_dir", d.state_dir)
    found += state_problems or _key_file(d.state_dir / "walletd.key")
    wallet_problems = _private_dir("monero.wallet_dir", m.wallet_dir)
    if not wallet_problems and m.wallet_dir.is_dir():
        problem = wallet_dir_problem(m.wallet_dir)
        wallet_problems += [problem] if problem else []
    found += wallet_problems
    sock_dir = d.socket_path.parent
    if sock_dir.exists():
        problem = socket_dir_problem(sock_dir)
        found += [problem] if problem else []
    else:
        found += _creatable("daemon.socket_path", sock_dir)
    if d.socket_path.is_symlink() or (
        d.socket_path.exists() and not stat.S_ISSOCK(d.socket_path.stat().st_mode)
    ):  # a live socket is fine: `systemctl reload` checks next to the running walletd
        found.append(f"daemon.socket_path: {d.socket_path} exists and is not a socket")
    if len(os.fsencode(d.socket_path)) > 107:  # sun_path holds 108 bytes with the NUL
        found.append(f"daemon.socket_path: {d.socket_path} is longer than a Unix socket allows")
    return found


def socket_dir_problem(sock_dir: Path) -> str | None:
    """The socket's directory must be ours and writable by nobody else: otherwise another user
    could replace the socket and answer walletd's clients."""
    st = sock_dir.stat()
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"daemon.socket_path: directory {sock_dir} must be owned by walletd's user "
            f"(uid {os.getuid()}) and writable by nobody else"
        )
    return None


def wallet_dir_problem(wallet_dir: Path) -> str | None:
    """The wallet directory must be walletd's user's alone: mode 0700 or stricter.

    A wallet-rpc another user (or anything else) starts on a wallet walletd holds can end up
    with it open beside walletd's, with no lock between them (seen in 18 of 105 race rounds):
    two processes spending from one multisig wallet. Nobody else must be able to reach the
    files. An existing directory with a wider mode is an error, not silently narrowed: walletd
    did not make it so, someone meant another user to read it, and the operator must learn
    that (and fix it, or find out what used it) rather than have that access vanish unseen."""
    st = wallet_dir.stat()
    if st.st_uid != os.getuid():
        return (
            f"monero.wallet_dir: {wallet_dir} is owned by uid {st.st_uid}, "
            f"walletd runs as {os.getuid()}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            f"monero.wallet_dir: {wallet_dir} is mode {mode:04o}; walletd's wallets must be "
            f"reachable by walletd's user only (chmod 0700 {wallet_dir}), and nothing else may "
            "open them"
        )
    return None


def _executable(key: str, name: str) -> list[str]:
    if "/" in name:
        path = Path(name)
        if not path.is_file():
            return [f"{key}: {name} not found"]
        if not os.access(path, os.X_OK):
            return [f"{key}: {name} is not executable"]
        return []
    if shutil.which(name) is None:
        return [f"{key}: {name} not found on PATH"]
    return []


def _private_dir(key: str, path: Path) -> list[str]:
    """A directory walletd keeps private: ours and writable, or creatable."""
    if not path.exists():
        return _creatable(key, path)
    if not path.is_dir():
        return [f"{key}: {path} is not a directory"]
    st = path.stat()
    if st.st_uid != os.getuid():
        return [f"{key}: {path} is owned by uid {st.st_uid}, walletd runs as {os.getuid()}"]
    if not os.access(path, os.W_OK | os.X_OK):
        return [f"{key}: {path} is not writable"]
    return []


def _key_file(path: Path) -> list[str]:
    """The vault key (walletd.state.vault), if it exists yet: private and whole."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return []  # made at first start
    except OSError as exc:
        return [f"daemon.state_dir: {path}: {exc.strerror}"]
    if st.st_mode & 0o077:
        mode = st.st_mode & 0o777
        return [f"daemon.state_dir: {path}: key file must be mode 0600, is {mode:04o}"]
    if st.st_size != 32:
        return [f"daemon.state_dir: {path}: key file has {st.st_size} bytes, expected 32"]
    return []


def _creatable(key: str, path: Path) -> list[str]:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"{key}: cannot create {path} ({parent} is not writable)"]
    return []
