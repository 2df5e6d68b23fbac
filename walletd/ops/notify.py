"""systemd's sd_notify protocol without libsystemd: one datagram to $NOTIFY_SOCKET per message.

Outside systemd (no $NOTIFY_SOCKET) every function is a no-op returning False, so the daemon calls
them unconditionally. A failed send is never fatal: systemd then times the unit out, which says more
than a crash of walletd would.
"""

from __future__ import annotations

import os
import socket
import time

import trio

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]

_SEND_TIMEOUT = 1.0  # a stuck service manager must not stall the event loop for long


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]  # Linux abstract namespace
    if path.startswith("/"):
        return path
    return None  # unset, or a transport we do not speak (vsock:)


def notify(state: str) -> bool:
    """Send `state` (newline-separated KEY=VALUE lines); True if it was handed to the socket."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def ready(text: str | None = None) -> bool:
    """Start-up (or a reload) is complete; with `text`, also the STATUS= line."""
    return notify("READY=1" if text is None else f"READY=1\nSTATUS={_one_line(text)}")


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd tell this reload cycle from an earlier one (systemd >= 253).
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    return notify(f"STATUS={_one_line(text)}")


def _one_line(text: str) -> str:
    # A newline would start another KEY=VALUE assignment.
    return " ".join(text.splitlines())


def watchdog_interval() -> float | None:
    """WatchdogSec= in seconds if systemd expects pings from this process, else None."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None  # meant for another process (e.g. the one that exec'd us)
    return usec / 1_000_000


async def watchdog_loop(interval: float) -> None:
    """Ping every interval/2 until cancelled.

    The ping comes from a trio task, so it proves the event loop still runs: a handler that blocks
    the loop (or a deadlock on it) stops the pings and systemd restarts walletd.
    """
    while True:
        watchdog()
        await trio.sleep(interval / 2)
