"""Stopping the wallet-rpc children a dead walletd left behind (run at start-up, before anything
opens a wallet).

A dead walletd's children normally die with it (PR_SET_PDEATHSIG), but one busy in a long call,
or started by an older walletd, may still hold a wallet's lock; opening that wallet again would
fail (-1) or, worse, leave two processes on one wallet. An orphan is recognised by its pid record
(same /proc start time, so a reused pid is never signalled) or by serving our wallet dir, and is
stopped with SIGTERM (wallet-rpc stores its wallet and exits), then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

import attrs
import structlog

from walletd.wallets.child_control import KILL_WAIT
from walletd.wallets.spawning import (
    EXECUTABLE,
    ChildSettings,
    LiveChildren,
    proc_start_time,
    proc_stat,
)

__all__ = ["remove_orphans"]

log = structlog.get_logger(__name__)


def _exe_name(pid: int) -> str | None:
    try:
        target = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return os.path.basename(target.removesuffix(" (deleted)"))


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]


def _uses_wallet_dir(argv: list[str], wallet_dir: Path) -> bool:
    wanted = {str(wallet_dir), os.path.realpath(wallet_dir)}
    for i, arg in enumerate(argv):
        value: str | None = None
        if arg == "--wallet-dir" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--wallet-dir="):
            value = arg.split("=", 1)[1]
        if value is not None and (value in wanted or os.path.realpath(value) in wanted):
            return True
    return False


@attrs.define
class _Orphan:
    pid: int
    start_time: int
    pidfd: int | None = None

    def same_process(self) -> bool:
        stat = proc_stat(self.pid)
        return stat is not None and stat[1] == self.start_time

    def gone(self) -> bool:
        if self.pidfd is not None:
            ready, _, _ = select.select([self.pidfd], [], [], 0)
            return bool(ready)
        stat = proc_stat(self.pid)
        return stat is None or stat[1] != self.start_time or stat[0] in ("Z", "X")

    def kill(self, sig: signal.Signals) -> None:
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.same_process():
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # gone, or no longer ours (pid reused): in both cases never to be signalled


def _find_orphans(
    settings: ChildSettings, live_pids: set[int]
) -> tuple[dict[int, int], list[Path]]:
    """pid -> start time of every orphan, and the record files read."""
    names = {EXECUTABLE, os.path.basename(settings.wallet_rpc_path)}
    found: dict[int, int] = {}
    records_dir = settings.run_dir / "children"
    records = sorted(records_dir.glob("*.json")) if records_dir.is_dir() else []
    for record in records:
        try:
            data: Any = json.loads(record.read_text())
            pid, started = int(data["pid"]), data.get("start_time")
        except (OSError, ValueError, TypeError, KeyError):
            log.warning("unreadable wallet-rpc pid record", record=str(record))
            continue
        if pid in live_pids or pid == os.getpid() or started is None:
            continue
        if proc_start_time(pid) == int(started) and _exe_name(pid) in names:
            found[pid] = int(started)
        else:
            log.info("stale wallet-rpc pid record: process gone or not ours", pid=pid)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in found or pid in live_pids or pid == os.getpid():
            continue
        argv = _cmdline(pid)
        if not argv or os.path.basename(argv[0]) not in names or _exe_name(pid) not in names:
            continue
        if _uses_wallet_dir(argv, settings.wallet_dir):
            started = proc_start_time(pid)
            if started is not None:
                found[pid] = started
    return found, records


def _pin(pid: int, start_time: int) -> _Orphan | None:
    """Hold the process by a pidfd, then check it is still the one we identified."""
    orphan = _Orphan(pid, start_time)
    try:
        orphan.pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError:
        orphan.pidfd = None
    if not orphan.same_process():
        if orphan.pidfd is not None:
            os.close(orphan.pidfd)
        return None
    return orphan


def _wait_gone(orphans: list[_Orphan], timeout: float) -> list[_Orphan]:
    deadline = time.monotonic() + timeout
    alive = [o for o in orphans if not o.gone()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [o for o in alive if not o.gone()]
    return alive


def remove_orphans(settings: ChildSettings, live: LiveChildren | None = None) -> int:
    """Stop the wallet-rpc children a dead walletd left behind; returns how many were stopped.

    Synchronous (run it at start-up, before anything opens a wallet, e.g. in a worker thread).
    A process is stopped only if it is a monero-wallet-rpc and either matches a pid record (same
    /proc start time) or serves our wallet dir; children of a running pool in this process are
    never touched (`live`: that pool's `ChildPool.live`). SIGTERM (wallet-rpc stores and exits),
    `stop_timeout`, then SIGKILL.
    """
    if live is None:
        live = LiveChildren()  # at start-up no pool runs a child yet
    found, records = _find_orphans(settings, live.pids)
    orphans = [o for pid, start in sorted(found.items()) if (o := _pin(pid, start)) is not None]
    try:
        for orphan in orphans:
            log.warning("stopping orphaned wallet-rpc", pid=orphan.pid)
            orphan.kill(signal.SIGTERM)
        stubborn = _wait_gone(orphans, settings.stop_timeout)
        for orphan in stubborn:
            log.warning("orphaned wallet-rpc ignored SIGTERM; sending SIGKILL", pid=orphan.pid)
            orphan.kill(signal.SIGKILL)
        left = _wait_gone(stubborn, KILL_WAIT)
    finally:
        for orphan in orphans:
            if orphan.pidfd is not None:
                os.close(orphan.pidfd)
    for orphan in left:
        log.error("orphaned wallet-rpc could not be stopped", pid=orphan.pid)
    kept = {o.pid for o in left} | live.pids
    for record in records:
        if record.stem.isdigit() and int(record.stem) in kept:
            continue
        with contextlib.suppress(OSError):
            record.unlink()
    for conf in settings.run_dir.glob("child-*.conf") if settings.run_dir.is_dir() else []:
        port = conf.stem.removeprefix("child-")
        if not (port.isdigit() and int(port) in live.ports):
            with contextlib.suppress(OSError):
                conf.unlink()  # credentials of a process that is gone
    return len(orphans) - len(left)
