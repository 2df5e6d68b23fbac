"""A real release is checked before its second signature and leaves a proof anyone can check.

walletd's co-signer decodes the real proposal (`describe_transfer`) and lets it through; after
submission `GET /v1/escrows/{id}/payout/proof` gives the tx key and a `get_tx_proof` that a
wallet-rpc walletd never saw (the vendor's own, another process) verifies with `check_tx_proof`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.regtest.harness import AMOUNT, fund_until_ready, mine
from tests.regtest.test_lifecycle_regtest import _daemon
from tests.regtest.walletd_proc import events_of, wait_event
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import Miner, create_plain_wallet
from walletd.wallets.rpc import WalletRpc

pytestmark = pytest.mark.regtest


async def test_a_release_proof_verifies_on_an_independent_wallet(
    tmp_path: Path, monerod: MonerodProcess, miner: Miner, wallet_rpcs: list[WalletRpc]
) -> None:
    """The payout check passes a real release (no payout_refused); the proof endpoint answers
    404 before the payout and afterwards a proof that the vendor's own wallet-rpc accepts: good,
    the payout's amount received, in a block once mined; check_tx_key agrees."""
    vendor_rpc = wallet_rpcs[0]  # not one of walletd's children: its own process and wallet
    vendor_address = await create_plain_wallet(vendor_rpc, "vendor-proof")
    with _daemon(tmp_path, monerod) as daemon, trio.fail_after(600):
        async with daemon.client() as client:
            r = await client.post("/v1/escrows", json={"escrow_id": "proof-1", "amount": AMOUNT})
            assert r.status_code == 201, r.text
            before = await client.get("/v1/escrows/proof-1/payout/proof")
            assert (before.status_code, before.json()["error"]["code"]) == (404, "not_found")
            await fund_until_ready(client, monerod, miner, {"proof-1": r.json()}, stepwise=True)
            r = await client.post("/v1/escrows/proof-1/release", json={"address": vendor_address})
            assert r.status_code == 202, r.text
            payout = r.json()["payout"]
            assert payout["fee_priority"] == 0
            assert await events_of(client, "payout_refused") == []
            (submitted,) = await events_of(client, "payout_submitted")  # the amount and fee
            r = await client.get("/v1/escrows/proof-1/payout/proof")
            assert r.status_code == 200, r.text
            proof = r.json()
            assert set(proof) == {"txid", "address", "tx_key", "proof"}
            assert (proof["txid"], proof["address"]) == (payout["txid"], vendor_address)
            await mine(monerod, miner, 10)
            await wait_event(client, "completed", "proof-1")
    params = {
        "txid": proof["txid"],
        "address": proof["address"],
        "message": "",
        "signature": proof["proof"],
    }
    checked = await vendor_rpc.call("check_tx_proof", params)
    assert checked["good"] is True, checked
    assert int(checked["received"]) == submitted["amount"] == AMOUNT - submitted["fee"]
    assert int(checked["confirmations"]) >= 1
    key = await vendor_rpc.call(
        "check_tx_key",
        {"txid": proof["txid"], "tx_key": proof["tx_key"], "address": proof["address"]},
    )
    assert int(key["received"]) == submitted["amount"]
