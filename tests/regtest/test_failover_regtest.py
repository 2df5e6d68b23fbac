"""Failover between two real monerod sharing one regtest chain (`monero.daemon_addresses`).

The first daemon is stopped (or hung with SIGSTOP) while a client reads an escrow's balance in a
loop and the escrow awaits its deposit: walletd moves its wallet-rpc children to the second
daemon, the balance calls keep answering (or answer 503 while the sessions restart), the deposit
paid and mined through the second daemon is detected, and (stopped case) a release pays once.
When the first daemon is back and synced, walletd moves back to it. The switch time (daemon
failed -> calls answering again from the restarted session) is printed; run with -s to see it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.regtest.harness import AMOUNT, MONITOR, wait_state
from tests.regtest.walletd_proc import WalletdProcess, events_of, wait_event
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import fund, mining_wallet
from walletd.wallets.rpc import WalletRpc

pytestmark = pytest.mark.regtest
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


async def _switches(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """Wait until `count` daemon_switched events are recorded; returns them."""
    with trio.fail_after(WAIT):
        while True:
            switches = await events_of(client, "daemon_switched")
            if len(switches) >= count:
                return switches
            await trio.sleep(0.5)


@attrs.frozen
class Setup:
    first: MonerodProcess
    second: MonerodProcess
    miner: WalletRpc  # a funded plain wallet whose wallet-rpc uses the second daemon
    miner_address: str
    client: httpx.AsyncClient  # walletd, configured with [first, second]
    escrow: dict[str, Any]  # "fo-1", awaiting funding

    @property
    def daemons(self) -> tuple[str, str]:
        return (self.first.daemon_address, self.second.daemon_address)


@contextlib.asynccontextmanager
async def _setup(tmp_path: Path) -> AsyncIterator[Setup]:
    with contextlib.ExitStack() as stack:
        first, second = stack.enter_context(_two_nodes(tmp_path))
        # Mined on the first daemon; the miner's wallet-rpc follows the second, which stays up.
        mined = stack.enter_context(
            mining_wallet(tmp_path, first, daemon_address=second.daemon_address)
        )
        miner, miner_address = mined.process.client(), mined.address
        try:
            await _synced(first, second)
            daemon = stack.enter_context(
                WalletdProcess(
                    tmp_path / "w",
                    first.daemon_address,
                    monitor=MONITOR,
                    monero={"daemon_addresses": [first.daemon_address, second.daemon_address]},
                )
            )
            async with daemon.client() as client:
                r = await client.post("/v1/escrows", json={"escrow_id": "fo-1", "amount": AMOUNT})
                assert r.status_code == 201, r.text
                escrow = r.json()
                assert escrow["state"] == "awaiting_funding"
                assert (await client.get("/v1/health")).json()["daemon"] == first.daemon_address
                yield Setup(first, second, miner, miner_address, client, escrow)
        finally:
            await miner.aclose()


class BalanceStream:
    """A client reading the escrow's balance in a loop, recording when each answer came."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.answers: list[tuple[float, float, int]] = []  # (sent, answered, status)
        self.warmed = trio.Event()
        self.back = trio.Event()  # a 200 for a call sent after `switched_at`
        self.switched_at: float | None = None
        self.back_at: float | None = None

    async def run(self) -> None:
        while True:
            sent = trio.current_time()
            r = await self.client.get("/v1/escrows/fo-1/balance")
            self.answers.append((sent, trio.current_time(), r.status_code))
            if len(self.answers) >= 5:
                self.warmed.set()
            switched = self.switched_at is not None and sent > self.switched_at
            if switched and r.status_code == 200 and not self.back.is_set():
                self.back_at = trio.current_time()
                self.back.set()
            await trio.sleep(0.2)

    def report(self, what: str, stopped_at: float) -> None:
        assert {status for _, _, status in self.answers} <= {200, 503}, self.answers
        assert self.switched_at is not None
        assert self.back_at is not None
        ok = sorted(end for _, end, status in self.answers if status == 200)
        gaps = [b - a for a, b in itertools.pairwise(ok) if a >= stopped_at - 1]
        print(
            f"\nfailover ({what}): -> daemon_switched {self.switched_at - stopped_at:.1f} s,"
            f" -> calls answering from the new session {self.back_at - stopped_at:.1f} s;"
            f" longest gap between 200s {max(gaps, default=0.0):.1f} s;"
            f" 503s {sum(s == 503 for _, _, s in self.answers)} of {len(self.answers)} calls"
        )


async def _fail_first_under_load(s: Setup, what: str, fail: Callable[[], Awaitable[None]]) -> None:
    """Fail the first daemon under a stream of balance calls; wait for the switch and for calls
    answered by the restarted sessions; pay and mine the deposit through the second daemon and
    wait for the escrow to be ready."""
    stream = BalanceStream(s.client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.run)
        with trio.fail_after(WAIT):
            await stream.warmed.wait()
        stopped_at = trio.current_time()
        await fail()
        with trio.fail_after(WAIT):
            switched = await wait_event(s.client, "daemon_switched")
        stream.switched_at = trio.current_time()
        assert (switched["from"], switched["to"]) == s.daemons
        with trio.fail_after(WAIT):
            await stream.back.wait()
        health = (await s.client.get("/v1/health")).json()
        assert health["daemon"] == s.second.daemon_address

        # The deposit, paid and mined through the second daemon, is detected.
        await s.miner.call("refresh")
        await fund(s.miner, s.escrow["multisig_address"], AMOUNT)
        await trio.to_thread.run_sync(s.second.mine, 1, s.miner_address)
        with trio.fail_after(WAIT):
            await wait_event(s.client, "funded", "fo-1")
        await trio.to_thread.run_sync(s.second.mine, 10, s.miner_address)
        await wait_state(s.client, "fo-1", "ready")
        nursery.cancel_scope.cancel()
    stream.report(what, stopped_at)


async def _moved_back(s: Setup) -> None:
    switches = await _switches(s.client, 2)
    assert (switches[1]["from"], switches[1]["to"]) == s.daemons[::-1]
    assert (await s.client.get("/v1/health")).json()["daemon"] == s.first.daemon_address
    r = await s.client.get("/v1/escrows/fo-1/balance")
    assert r.status_code == 200, r.text


async def test_first_daemon_stopped_under_load(tmp_path: Path, regtest_dir: Path) -> None:
    """Stop the daemon in use under a stream of balance calls with an escrow awaiting funding:
    every call answers 200 or 503, `daemon_switched` names both daemons, /v1/health names the
    second, the deposit mined on the second daemon is detected, and a release pays once. Started
    again (regtest wipes its chain; it syncs from the second), the first daemon is taken back."""
    async with _setup(tmp_path) as s:
        await _fail_first_under_load(
            s, "monerod stopped", lambda: trio.to_thread.run_sync(s.first.stop)
        )

        url = "/v1/escrows/fo-1/release"
        first_try = await s.client.post(url, json={"address": s.miner_address})
        again = await s.client.post(url, json={"address": s.miner_address})
        assert (first_try.status_code, again.status_code) == (202, 202), first_try.text
        assert first_try.json()["payout"]["txid"] == again.json()["payout"]["txid"]
        await trio.to_thread.run_sync(s.second.mine, 10, s.miner_address)
        await wait_state(s.client, "fo-1", "completed")
        assert len(await events_of(s.client, "payout_submitted")) == 1
        assert len(await events_of(s.client, "daemon_switched")) == 1

        await trio.to_thread.run_sync(s.first.start)
        await _moved_back(s)


async def test_first_daemon_hung_under_load(tmp_path: Path, regtest_dir: Path) -> None:
    """The daemon in use hangs (SIGSTOP: connections accepted, nothing answered): the same as a
    stopped one, every call answers 200 or 503 and the deposit is detected through the second;
    resumed (SIGCONT), the first daemon is taken back."""
    async with _setup(tmp_path) as s:
        pid = s.first.pid
        assert pid is not None

        async def hang() -> None:
            os.kill(pid, signal.SIGSTOP)
            await trio.lowlevel.checkpoint()

        try:
            await _fail_first_under_load(s, "monerod hung", hang)
        finally:
            os.kill(pid, signal.SIGCONT)
        await trio.to_thread.run_sync(s.second.mine, 1, s.miner_address)  # it catches up
        await _moved_back(s)
