"""A real reorg on a private regtest chain: a deposit taken away before `ready`.

The chain is this test's own (its own monerod and miner): popping blocks and flushing the pool on
the session's shared chain would reach into other tests' funding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.regtest.harness import AMOUNT, MONITOR, pay
from tests.regtest.walletd_proc import WalletdProcess, wait_event
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import Miner, private_chain

pytestmark = pytest.mark.regtest


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[MonerodProcess, Miner]]:
    """A private monerod and a miner wallet with spendable coinbase outputs."""
    with private_chain(tmp_path) as (node, miner):
        yield node, miner


def _reorg_away(node: MonerodProcess, txid: str, miner: Miner) -> None:
    """Take the top block (holding `txid`) off the chain, drop `txid` from the pool, and mine a
    longer chain without it: what the wallets see when a double spend wins a reorg."""
    r = httpx.post(f"{node.rpc_url}/pop_blocks", json={"nblocks": 1}, timeout=30)
    r.raise_for_status()
    assert r.json()["status"] == "OK", r.text
    node.call("flush_txpool", {"txids": [txid]})
    node.mine(2, miner.address)


async def test_a_deposit_reorged_away_is_reported_and_the_escrow_waits_for_it(
    tmp_path: Path, chain: tuple[MonerodProcess, Miner]
) -> None:
    """On a real chain: the funding transaction of a `funded` escrow is reorged away; walletd
    writes `funding_reorged`, the escrow stays `funded` (not ready on funds that are gone), and
    when the buyer pays again it becomes `ready`."""
    node, miner = chain
    with WalletdProcess(tmp_path / "w", node.daemon_address, monitor=MONITOR) as daemon:
        async with daemon.client() as client:
            r = await client.post("/v1/escrows", json={"escrow_id": "rg", "amount": AMOUNT})
            assert r.status_code == 201, r.text
            address = r.json()["multisig_address"]
            txid = await pay(miner, {address: AMOUNT})
            await trio.to_thread.run_sync(node.mine, 1, miner.address)
            await wait_event(client, "funded", "rg")

            await trio.to_thread.run_sync(_reorg_away, node, txid, miner)
            with trio.fail_after(120):
                reorged = await wait_event(client, "funding_reorged", "rg")
            assert reorged["balance"] < AMOUNT <= reorged["previous_balance"]
            esc = (await client.get("/v1/escrows/rg")).json()
            assert esc["state"] == "funded"

            await pay(miner, {address: AMOUNT})
            await trio.to_thread.run_sync(node.mine, 11, miner.address)
            await wait_event(client, "ready", "rg")
            assert (await client.get("/v1/escrows/rg")).json()["state"] == "ready"
