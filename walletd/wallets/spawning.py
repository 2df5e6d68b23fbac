"""Starting one monero-wallet-rpc child, and the /proc checks around it.

The mechanics behind `walletd.wallets.children` (whose docstring says why each is there): the
command line and minimal environment, the 0600 credentials file, the fork from the trio thread
with PR_SET_PDEATHSIG, the pid record for `orphans`, the check of who listens on a child's port,
and the pruning of the logs of gone children. `LiveChildren` is what this process runs now.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs
import structlog
import trio

__all__ = [
    "EXECUTABLE",
    "KEEP_EXITED_LOGS",
    "LOG_FILES_ROTATED",
    "LOG_FILE_MAX_BYTES",
    "ChildSettings",
    "LiveChildren",
    "Spawned",
    "free_port",
    "listener_is_owned_by",
    "prepare_run_dir",
    "proc_start_time",
    "proc_stat",
    "prune_logs",
    "spawn",
    "wallet_rpc_argv",
]

log = structlog.get_logger(__name__)

EXECUTABLE = "monero-wallet-rpc"
# wallet-rpc logs (run_dir/logs/wallet-rpc-PORT.log): each capped, then those of gone children
# pruned to the newest few (see `prune_logs`).
LOG_FILE_MAX_BYTES = 5_000_000
LOG_FILES_ROTATED = 1
KEEP_EXITED_LOGS = 8

_PR_SET_PDEATHSIG = 1
_SIGTERM = int(signal.SIGTERM)


def _load_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    fn: Callable[..., int] = prctl
    return fn


_prctl = _load_prctl()


@attrs.frozen
class ChildSettings:
    wallet_rpc_path: str
    wallet_dir: Path
    daemon_address: str
    run_dir: Path
    spares: int = 3
    call_timeout: float = 30.0
    start_timeout: float = 30.0
    stop_timeout: float = 10.0
    max_uses: int = 20
    # Added to each child's minimal environment: the fast-open preload (`walletd.wallets.fastopen`).
    extra_env: tuple[tuple[str, str], ...] = ()


def wallet_rpc_argv(
    settings: ChildSettings, port: int, config_file: Path, log_file: Path
) -> list[str]:
    """The command line of one child; the credentials come from `config_file` (`rpc-login=`)."""
    return [
        settings.wallet_rpc_path,
        "--wallet-dir",
        str(settings.wallet_dir),
        "--rpc-bind-ip",
        "127.0.0.1",
        "--rpc-bind-port",
        str(port),
        "--daemon-address",
        settings.daemon_address,
        "--trusted-daemon",
        "--non-interactive",
        "--no-dns",
        "--shared-ringdb-dir",
        str(settings.run_dir / "ringdb"),
        "--rpc-ssl",
        "disabled",
        "--daemon-ssl",
        "disabled",
        "--log-file",
        str(log_file),
        "--max-log-file-size",
        str(LOG_FILE_MAX_BYTES),
        "--max-log-files",
        str(LOG_FILES_ROTATED),
        "--config-file",
        str(config_file),
    ]


@attrs.define
class LiveChildren:
    """The wallet-rpc children this process runs now, and the ports they hold: `remove_orphans`
    never touches these, and a new child never gets a port one of them holds. One per pool."""

    pids: set[int] = attrs.Factory(set)
    ports: set[int] = attrs.Factory(set)


@attrs.frozen
class Spawned:
    """A child just forked: what its supervisor needs to watch, stop and clean up after it."""

    popen: subprocess.Popen[bytes]
    port: int
    pidfd: int | None
    output: trio.lowlevel.FdStream
    config_file: Path
    record_file: Path


def free_port(live: LiveChildren) -> int:
    """A loopback port that was free a moment ago and that none of our children holds."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in live.ports:
            return port
    return port


def _loopback_listeners(port: int) -> set[int]:
    """Socket inodes of every TCP listener that can take a connection to 127.0.0.1:`port`:
    bound to 127.0.0.1 or 0.0.0.0, or on IPv6 to :: or ::ffff:127.0.0.1 (dual stack)."""
    v4 = {"127.0.0.1", "0.0.0.0"}  # noqa: S104 - a wildcard listener also takes loopback
    v6 = {"::", "::ffff:127.0.0.1"}
    inodes: set[int] = set()
    for table, family, wanted in (("tcp", socket.AF_INET, v4), ("tcp6", socket.AF_INET6, v6)):
        try:
            with open(f"/proc/net/{table}", encoding="ascii") as handle:
                lines = handle.readlines()[1:]
        except FileNotFoundError:
            continue  # no IPv6 in this kernel
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # TCP_LISTEN
                continue
            addr_hex, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            # The kernel prints each 32-bit word of the address as a host-order integer.
            raw = b"".join(
                struct.pack("=I", int(addr_hex[i : i + 8], 16)) for i in range(0, len(addr_hex), 8)
            )
            if socket.inet_ntop(family, raw) in wanted:
                inodes.add(int(fields[9]))
    return inodes


def listener_is_owned_by(port: int, pid: int | None) -> bool:
    """True if something listens on 127.0.0.1:`port` and every such listening socket is an open
    descriptor of process `pid` (see the module docstring). Reads /proc: once per child start.

    Any doubt (no listener, /proc unreadable, the process gone) is a no: the child is then
    discarded, never trusted with a wallet password."""
    if pid is None:
        return False
    try:
        inodes = _loopback_listeners(port)
        if not inodes:
            return False
        owned: set[int] = set()
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    owned.add(int(target[8:-1]))
    except (OSError, ValueError) as exc:
        log.warning("cannot verify who listens on a wallet-rpc port", port=port, error=str(exc))
        return False
    return inodes <= owned


def prepare_run_dir(run_dir: Path) -> None:
    for path in (run_dir, run_dir / "children", run_dir / "logs"):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)


def _log_files(logs_dir: Path) -> dict[int, list[Path]]:
    """wallet-rpc log files by port: `wallet-rpc-PORT.log` and its rotated `...log-DATE`."""
    by_port: dict[int, list[Path]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(logs_dir):
            port, dot, _ = entry.name.removeprefix("wallet-rpc-").partition(".log")
            if entry.name.startswith("wallet-rpc-") and dot and port.isdigit():
                by_port.setdefault(int(port), []).append(Path(entry.path))
    return by_port


def prune_logs(logs_dir: Path, live: LiveChildren, keep: int = KEEP_EXITED_LOGS) -> None:
    """Delete the logs of gone children (ports no child of ours holds) but the `keep` newest."""

    def newest(files: list[Path]) -> float:
        times = []
        for path in files:
            with contextlib.suppress(OSError):
                times.append(path.stat().st_mtime)
        return max(times, default=0.0)

    gone = [files for port, files in _log_files(logs_dir).items() if port not in live.ports]
    gone.sort(key=newest, reverse=True)
    for files in gone[keep:]:
        for path in files:
            with contextlib.suppress(OSError):
                path.unlink()


def _write_private(path: Path, text: str) -> None:
    """Create `path` with mode 0600 from the start (never briefly world-readable)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: SIGTERM this child when the forking thread (the trio thread) dies."""

    def preexec() -> None:
        if _prctl is None or _prctl(_PR_SET_PDEATHSIG, _SIGTERM, 0, 0, 0) != 0:
            raise OSError("prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            raise OSError("parent exited while the child started")

    return preexec


def _child_env(settings: ChildSettings) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(settings.run_dir),
        "LANG": "C",
        "DNS_PUBLIC": "tcp://127.0.0.1",  # OpenAlias look-ups go nowhere instead of public DNS
        **dict(settings.extra_env),
    }


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from /proc/PID/stat, or None if there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[-1].split()
    try:
        return fields[0].decode(), int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None


def proc_start_time(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat[1] if stat else None


def spawn(
    settings: ChildSettings, port: int, live: LiveChildren, *, user: str, password: str
) -> Spawned:
    """Fork and exec one child from the calling (trio) thread; see the module docstring."""
    prepare_run_dir(settings.run_dir)
    config_file = settings.run_dir / f"child-{port}.conf"
    log_file = settings.run_dir / "logs" / f"wallet-rpc-{port}.log"
    for old in _log_files(log_file.parent).get(port, []):  # an earlier child's, on this port
        with contextlib.suppress(OSError):
            old.unlink()
    _write_private(config_file, f"rpc-login={user}:{password}\n")
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            wallet_rpc_argv(settings, port, config_file, log_file),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=_child_env(settings),
            cwd=settings.run_dir,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C on walletd's terminal is walletd's to handle
            preexec_fn=_die_with_parent(os.getpid()),  # forks here, in the trio thread
        )
    except BaseException:
        os.close(read_fd)
        config_file.unlink(missing_ok=True)
        raise
    finally:
        os.close(write_fd)
    live.pids.add(popen.pid)
    live.ports.add(port)
    try:
        pidfd: int | None = os.pidfd_open(popen.pid)
    except OSError:
        pidfd = None
    record_file = settings.run_dir / "children" / f"{popen.pid}.json"
    record = {"pid": popen.pid, "port": port, "start_time": proc_start_time(popen.pid)}
    try:
        _write_private(record_file, json.dumps(record) + "\n")
    except OSError as exc:  # the /proc scan of remove_orphans still covers it
        log.warning("cannot write wallet-rpc pid record", pid=popen.pid, error=str(exc))
    return Spawned(
        popen,
        port=port,
        pidfd=pidfd,
        output=trio.lowlevel.FdStream(read_fd),
        config_file=config_file,
        record_file=record_file,
    )
