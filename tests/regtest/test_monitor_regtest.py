"""The monitor with more watched escrows than session slots, on a real regtest chain.

30 escrows, cap 10: every escrow's funding is detected, the cap is never exceeded, and the
number of wallet opens the monitor causes is measured (printed for the operator's notes).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.regtest.walletd_proc import WalletdProcess
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import Miner

pytestmark = pytest.mark.regtest
ESCROWS = 30
AMOUNT = 10**11  # 0.1 XMR each
COLD_INTERVAL = 10.0


async def _opens(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    m = re.search(r'walletd_wallet_rpc_call_seconds_count\{method="open_wallet"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


async def _count(client: httpx.AsyncClient, *states: str) -> int:
    total = 0
    for state in states:
        total += len((await client.get("/v1/escrows", params={"state": state})).json()["escrows"])
    return total


async def test_thirty_escrows_cap_ten_all_funding_detected(
    tmp_path: Path, monerod: MonerodProcess, miner: Miner
) -> None:
    """30 watched escrows, cap 10: all funding detected, never more than 10 sessions open."""
    daemon = WalletdProcess(
        tmp_path / "w",
        monerod.daemon_address,
        sessions={"max_active": 10},
        monitor={"poll_interval": 5, "height_check": 0.3, "cold_interval": COLD_INTERVAL},
    )
    with daemon, trio.fail_after(900):
        async with daemon.client(timeout=300) as client:
            addresses: dict[str, str] = {}

            async def create(worker: int) -> None:
                for i in range(worker, ESCROWS, 2):
                    r = await client.post(
                        "/v1/escrows", json={"escrow_id": f"m{i}", "amount": AMOUNT}
                    )
                    assert r.status_code == 201, r.text
                    addresses[f"m{i}"] = r.json()["multisig_address"]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(create, 0)
                nursery.start_soon(create, 1)

            payer = miner.process.client()
            try:
                await payer.call("refresh")
                ids = sorted(addresses)
                for chunk in (ids[:15], ids[15:]):
                    dests = [{"amount": AMOUNT, "address": addresses[e]} for e in chunk]
                    await payer.call("transfer", {"destinations": dests})
            finally:
                await payer.aclose()
            opens_before = await _opens(client)
            started = time.monotonic()
            await trio.to_thread.run_sync(monerod.mine, 1, miner.address)
            max_open = 0
            while await _count(client, "funded", "ready") < ESCROWS:
                stats = (await client.get("/v1/stats")).json()
                max_open = max(max_open, stats["active_sessions"])
                await trio.sleep(1)
            detect_s = time.monotonic() - started
            detect_opens = await _opens(client) - opens_before
            assert max_open <= 10

            # Steady state: a block every 5 s for a minute, funded escrows waiting to unlock.
            window_start, opens_start = time.monotonic(), await _opens(client)
            for _ in range(12):
                await trio.to_thread.run_sync(monerod.mine, 1, miner.address)
                await trio.sleep(5)
            window = time.monotonic() - window_start
            window_opens = await _opens(client) - opens_start
            assert (await client.get("/v1/stats")).json()["active_sessions"] <= 10
            per_escrow_hour = window_opens / ESCROWS / (window / 3600)
            print(
                f"\nmonitor: {ESCROWS} escrows, cap 10, cold_interval {COLD_INTERVAL:g} s: "
                f"all funding detected in {detect_s:.1f} s with {detect_opens:.0f} wallet opens; "
                f"steady state (a block every 5 s) {window_opens:.0f} opens in {window:.0f} s "
                f"= {per_escrow_hour:.1f} wallet opens per escrow per hour"
            )
