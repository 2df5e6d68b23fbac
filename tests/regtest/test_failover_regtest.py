"""Failover between two real monerod sharing one regtest chain (`monero.daemon_addresses`).

The first daemon is stopped while a client reads an escrow's balance in a loop and the escrow
awaits its deposit: walletd moves its wallet-rpc children to the second daemon, the balance calls
keep answering (or answer 503 while the sessions restart), the deposit paid and mined through the
second daemon is detected, and a release pays once. The switch time (daemon stopped -> calls
answering again from the restarted session) is printed; run with -s to see it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.regtest.conftest import MINER_BLOCKS
from tests.regtest.wallet_rpc_proc import WalletRpcProcess, create_plain_wallet, fund
from tests.regtest.walletd_proc import WalletdProcess, events_of, wait_event
from walletd.testing.regtest import MonerodProcess

pytestmark = pytest.mark.regtest
AMOUNT = 2 * 10**12
MONITOR = {"poll_interval": 2, "height_check": 0.3, "cold_interval": 2}
WAIT = 300  # generous bound for any one condition on a loaded 2-core machine


@contextlib.contextmanager
def _two_nodes(root: Path) -> Iterator[tuple[MonerodProcess, MonerodProcess]]:
    """Two regtest monerod on loopback, each the other's only peer (one chain, no network)."""
    first, second = MonerodProcess(root / "monerod-a"), MonerodProcess(root / "monerod-b")
    first.peers = [second.p2p_port]
    second.peers = [first.p2p_port]
    with first, second:
        yield first, second


async def _synced(leader: MonerodProcess, follower: MonerodProcess) -> int:
    """Wait until `follower` has every block `leader` has; returns that height."""
    with trio.fail_after(WAIT):
        while True:
            target = await trio.to_thread.run_sync(leader.height)
            if await trio.to_thread.run_sync(follower.height) >= target:
                return target
            await trio.sleep(0.5)


async def _wait_state(client: httpx.AsyncClient, escrow_id: str, state: str) -> None:
    with trio.fail_after(WAIT):
        while True:
            if (await client.get(f"/v1/escrows/{escrow_id}")).json()["state"] == state:
                return
            await trio.sleep(0.5)


async def _switches(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """Wait until `count` daemon_switched events are recorded; returns them."""
    with trio.fail_after(WAIT):
        while True:
            switches = await events_of(client, "daemon_switched")
            if len(switches) >= count:
                return switches
            await trio.sleep(0.5)


async def test_first_daemon_stopped_under_load(tmp_path: Path, regtest_dir: Path) -> None:
    """Stop the daemon in use under a stream of balance calls with an escrow awaiting funding:
    every call answers 200 or 503, `daemon_switched` names both daemons, /v1/health names the
    second, the deposit mined on the second daemon is detected, and a release pays once."""
    with contextlib.ExitStack() as stack:
        first, second = stack.enter_context(_two_nodes(tmp_path))
        miner_proc = stack.enter_context(
            WalletRpcProcess(
                wallet_dir=tmp_path / "miner-wallets",
                work_dir=tmp_path / "wallet-rpc-miner",
                daemon_address=second.daemon_address,
            )
        )
        miner_proc.wait_ready()
        miner = miner_proc.client()
        miner_address = await create_plain_wallet(miner, "miner")
        await trio.to_thread.run_sync(first.mine, MINER_BLOCKS, miner_address)
        await _synced(first, second)

        daemons = [first.daemon_address, second.daemon_address]
        daemon = stack.enter_context(
            WalletdProcess(
                tmp_path / "w",
                first.daemon_address,
                monitor=MONITOR,
                monero={"daemon_addresses": daemons},
            )
        )
        async with daemon.client() as client:
            r = await client.post("/v1/escrows", json={"escrow_id": "fo-1", "amount": AMOUNT})
            assert r.status_code == 201, r.text
            escrow = r.json()
            assert escrow["state"] == "awaiting_funding"
            assert (await client.get("/v1/health")).json()["daemon"] == first.daemon_address

            answers: list[tuple[float, float, int]] = []  # (sent, answered, status)
            streaming = True
            warmed, back = trio.Event(), trio.Event()
            marks: dict[str, float] = {}  # "switched": when the event was seen; "back"

            async def balance_stream() -> None:
                while streaming:
                    sent = trio.current_time()
                    r = await client.get("/v1/escrows/fo-1/balance")
                    answers.append((sent, trio.current_time(), r.status_code))
                    if len(answers) >= 5:
                        warmed.set()
                    after_switch = "switched" in marks and sent > marks["switched"]
                    if after_switch and r.status_code == 200 and not back.is_set():
                        marks["back"] = trio.current_time()
                        back.set()
                    await trio.sleep(0.2)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(balance_stream)
                with trio.fail_after(WAIT):
                    await warmed.wait()

                stopped_at = trio.current_time()
                await trio.to_thread.run_sync(first.stop)
                with trio.fail_after(WAIT):
                    switched = await wait_event(client, "daemon_switched")
                switched_at = marks["switched"] = trio.current_time()
                assert (switched["from"], switched["to"]) == tuple(daemons)
                # Calls answering again: a 200 for a call sent after the sessions restarted.
                with trio.fail_after(WAIT):
                    await back.wait()
                back_at = marks["back"]
                health = (await client.get("/v1/health")).json()
                assert health["daemon"] == second.daemon_address

                # The deposit, paid and mined through the second daemon, is detected.
                await miner.call("refresh")
                await fund(miner, escrow["multisig_address"], AMOUNT)
                await trio.to_thread.run_sync(second.mine, 1, miner_address)
                with trio.fail_after(WAIT):
                    await wait_event(client, "funded", "fo-1")
                await trio.to_thread.run_sync(second.mine, 10, miner_address)
                await _wait_state(client, "fo-1", "ready")
                streaming = False

            statuses = {status for _, _, status in answers}
            assert statuses <= {200, 503}, answers
            ok = sorted(end for _, end, status in answers if status == 200)
            gaps = [b - a for a, b in itertools.pairwise(ok) if a >= stopped_at - 1]
            print(
                f"\nfailover: daemon stopped -> daemon_switched {switched_at - stopped_at:.1f} s,"
                f" -> calls answering from the new session {back_at - stopped_at:.1f} s;"
                f" longest gap between 200s {max(gaps, default=0.0):.1f} s;"
                f" 503s {sum(s == 503 for _, _, s in answers)} of {len(answers)} calls"
            )

            url = "/v1/escrows/fo-1/release"
            first_try = await client.post(url, json={"address": miner_address})
            again = await client.post(url, json={"address": miner_address})
            assert (first_try.status_code, again.status_code) == (202, 202), first_try.text
            assert first_try.json()["payout"]["txid"] == again.json()["payout"]["txid"]
            await trio.to_thread.run_sync(second.mine, 10, miner_address)
            await _wait_state(client, "fo-1", "completed")
            assert len(await events_of(client, "payout_submitted")) == 1
            assert len(await events_of(client, "daemon_switched")) == 1

            # The first daemon comes back (regtest wipes its chain; it syncs from the second):
            # once it has caught up, walletd moves back to it and calls answer.
            await trio.to_thread.run_sync(first.start)
            switches = await _switches(client, 2)
            assert (switches[1]["from"], switches[1]["to"]) == (daemons[1], daemons[0])
            assert (await client.get("/v1/health")).json()["daemon"] == first.daemon_address
            r = await client.get("/v1/escrows/fo-1/balance")
            assert r.status_code == 200, r.text
        await miner.aclose()
