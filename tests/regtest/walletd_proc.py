"""walletd itself as a real process, for the regtest tests, and the waits they share.

Running the daemon as a process, not in the test's trio loop, is what lets the tests send it
SIGTERM or SIGKILL and look at what it leaves behind: child processes, locks, stored wallets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from walletd.testing.walletd_process import WalletdProcess, children_of

__all__ = ["WalletdProcess", "children_of", "events_of", "wait_event", "wallet_rpc_pids"]


def wallet_rpc_pids() -> list[int]:
    """Every monero-wallet-rpc process on the machine."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("monero-wallet-r"):
                pids.append(int(entry))
    return pids


async def events_of(client: httpx.AsyncClient, type_: str) -> list[dict[str, Any]]:
    """Every event of `type_` so far."""
    body = (await client.get("/v1/events", params={"after": 0})).json()
    return [e for e in body["events"] if e["type"] == type_]


async def wait_event(
    client: httpx.AsyncClient, type_: str, escrow_id: str | None = None
) -> dict[str, Any]:
    """Long-poll /v1/events until an event of `type_` (for `escrow_id`) arrives."""
    after = 0
    while True:
        body = (await client.get("/v1/events", params={"after": after, "timeout": 30})).json()
        for event in body["events"]:
            if event["type"] == type_ and escrow_id in (None, event["escrow_id"]):
                return dict(event)
        after = body["next"]
