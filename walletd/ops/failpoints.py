"""Failpoints: named places where a test can make walletd die as if by kill -9.

`WALLETD_FAILPOINTS=after_submit,creating_multisig` (an environment variable, never a config key
or an API call) makes `hit(name)` SIGKILL this process at that point. The crash tests use it to
stop walletd exactly between a payout's submission and its record, which no timing can do
reliably. Unset, `hit` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["hit"]

_ARMED = frozenset(filter(None, os.environ.get("WALLETD_FAILPOINTS", "").split(",")))


def hit(name: str) -> None:
    """Die here, now, without cleanup, if the failpoint `name` is armed."""
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
