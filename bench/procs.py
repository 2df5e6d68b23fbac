"""What the kernel says about a process: resident memory, CPU time, children; and a preexec hook
that ties a helper process's life to ours."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

from walletd.testing.walletd_process import children_of

__all__ = [
    "children_of",
    "cpu_seconds",
    "die_with_parent",
    "rss_bytes",
    "system_busy",
    "tree_rss",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_rss(pid: int) -> tuple[int, int, int]:
    """(RSS of `pid`, summed RSS of its direct children, number of children)."""
    kids = children_of(pid)
    return rss_bytes(pid), sum(rss_bytes(k) for k in kids), len(kids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far (0 if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime: fields 14 and 15


def system_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, summed over all cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / _CLK_TCK, sum(fields) / _CLK_TCK


def die_with_parent() -> Callable[[], None]:
    """preexec_fn: SIGTERM the child when we die, even by kill -9 (a benchmark must leave nothing
    running). Popen forks from the calling thread: call it from the main thread."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, 15, 0, 0, 0)

    return preexec
