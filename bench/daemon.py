"""walletd as a real process (`python -m walletd --config ...`), as a deployment runs it.

The shared `WalletdProcess` with the benchmark's settings, and helpers to wait for escrow states
over the socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.procs import die_with_parent
from walletd.ids import Role
from walletd.testing.walletd_process import WalletdProcess

__all__ = ["BenchWalletd", "adopt_body", "wait_escrows"]

START_TIMEOUT = 90.0
STOP_TIMEOUT = 90.0
XMR = 10**12


class BenchWalletd(WalletdProcess):
    """walletd as the benchmarks run it: info-level logs (debug logging would be measured
    too), tied to the benchmark's life, and more patient timeouts for a loaded machine."""

    def __init__(self, root: Path, daemon_address: str, **sections: Mapping[str, Any]) -> None:
        super().__init__(
            root,
            daemon_address,
            log_level="info",
            preexec_fn=die_with_parent(),
            start_timeout=START_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
            **sections,
        )

    def client(self, timeout: float = 180.0) -> httpx.AsyncClient:
        return super().client(timeout)


def adopt_body(
    escrow_id: str, files: Mapping[Role, str], password: str, amount: int = XMR
) -> dict[str, Any]:
    return {
        "escrow_id": escrow_id,
        "amount": amount,
        "wallets": {role: {"file": f, "password": password} for role, f in files.items()},
    }


async def wait_exchanged(client: httpx.AsyncClient, ids: list[str], timeout: float = 180) -> None:
    """Until every (ready) escrow's session holds the monitor's multisig info exchange: its
    work (refresh, export/import on three wallets) is then done and out of the figures."""
    with trio.fail_after(timeout):
        pending = list(ids)
        while pending:
            body = (await client.get(f"/v1/escrows/{pending[0]}")).json()
            # Only a ready escrow without a payout is pre-exchanged (unfunded ones never are).
            if body["state"] != "ready" or body["session"].get("multisig_exchanged"):
                pending.pop(0)
            else:
                await trio.sleep(0.1)


async def wait_escrows(
    client: httpx.AsyncClient, ids: list[str], *, state: str | None = None, timeout: float = 180
) -> None:
    """Until every escrow is in `state`, or (without one) has been checked by the monitor."""
    with trio.fail_after(timeout):
        pending = list(ids)
        while pending:
            body = (await client.get(f"/v1/escrows/{pending[0]}")).json()
            done = body["state"] == state if state else body["funding"]["checked_at"] is not None
            if done:
                pending.pop(0)
            else:
                await trio.sleep(0.25)
