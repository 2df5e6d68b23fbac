"""The escrow lifecycle end to end on a real regtest chain, each transition seen in /v1/events.

walletd creates the three wallets and the multisig itself, a miner pays the escrow, blocks are
mined on demand, and the payout lands in a real wallet that checks what it received.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import trio

from tests.regtest.harness import AMOUNT, MONITOR, fund_until_ready, mine
from tests.regtest.walletd_proc import WalletdProcess, events_of, wait_event
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import Miner, create_plain_wallet, fund
from walletd.wallets.rpc import WalletRpc

pytestmark = pytest.mark.regtest


def _daemon(tmp_path: Path, monerod: MonerodProcess) -> WalletdProcess:
    return WalletdProcess(tmp_path / "w", monerod.daemon_address, monitor=MONITOR)


async def _validate_calls(client: httpx.AsyncClient) -> float:
    """How many validate_address calls walletd made to wallet-rpc (from /metrics)."""
    text = (await client.get("/metrics")).text
    m = re.search(r'walletd_wallet_rpc_call_seconds_count\{method="validate_address"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


async def _received(rpc: WalletRpc) -> list[int]:
    await rpc.call("refresh")
    incoming = await rpc.call("get_transfers", {"in": True})
    return [int(t["amount"]) for t in incoming.get("in", [])]


async def test_release_path(
    tmp_path: Path, monerod: MonerodProcess, miner: Miner, wallet_rpcs: list[WalletRpc]
) -> None:
    """Create, pay, funded, ready, release (twice, and twice at once: one tx), confirmations,
    completed, session closed; the vendor received the amount less the fee. The co-signer's
    check of the real proposal (describe_transfer) let it through, and the payout's proof
    (tx key + get_tx_proof) verifies with check_tx_proof on a wallet-rpc walletd never saw."""
    vendor_rpc, checker_rpc = wallet_rpcs[0], wallet_rpcs[1]
    vendor_address = await create_plain_wallet(vendor_rpc, "vendor-payout")
    await create_plain_wallet(checker_rpc, "proof-checker")
    with _daemon(tmp_path, monerod) as daemon, trio.fail_after(600):
        async with daemon.client() as client:
            body = {"escrow_id": "order-1", "amount": AMOUNT}
            r = await client.post("/v1/escrows", json=body)
            assert r.status_code == 201, r.text
            escrow = r.json()
            assert len(escrow["multisig_address"]) == 95
            retry = await client.post("/v1/escrows", json=body)  # identical: safe
            assert retry.status_code == 200
            assert retry.json()["multisig_address"] == escrow["multisig_address"]
            await fund_until_ready(client, monerod, miner, {"order-1": escrow}, stepwise=True)

            url = "/v1/escrows/order-1/release"
            answers: list[httpx.Response] = []

            async def release() -> None:
                answers.append(await client.post(url, json={"address": vendor_address}))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(release)
                nursery.start_soon(release)
            await release()
            assert [a.status_code for a in answers] == [202, 202, 202], [a.text for a in answers]
            txids = {a.json()["payout"]["txid"] for a in answers}
            assert len(txids) == 1
            assert len(await events_of(client, "payout_submitted")) == 1
            other = await client.post(
                "/v1/escrows/order-1/refund", json={"address": vendor_address}
            )
            assert (other.status_code, other.json()["error"]["code"]) == (409, "conflict")

            await mine(monerod, miner, 10)
            done = await wait_event(client, "completed", "order-1")
            assert done["txid"] in txids
            closed = await wait_event(client, "session_closed", "order-1")
            assert closed["reason"] in ("finished", "evicted", "expired")
            final = (await client.get("/v1/escrows/order-1")).json()
            assert final["state"] == "completed"
            assert final["payout"]["confirmations"] >= 10
            assert final["session"] == {"open": False}
            r = await client.get("/v1/escrows/order-1/payout/proof")
            assert r.status_code == 200, r.text
            proof = r.json()
    received = await _received(vendor_rpc)
    assert len(received) == 1
    assert AMOUNT - 10**10 < received[0] < AMOUNT  # the amount less a fee of ~0.002 XMR
    assert (proof["txid"], proof["address"]) == (done["txid"], vendor_address)
    checked = await checker_rpc.call(
        "check_tx_proof",
        {"txid": proof["txid"], "address": vendor_address, "signature": proof["proof"]},
    )
    assert checked["good"] is True, checked
    assert int(checked["received"]) == received[0]
    assert len(proof["tx_key"]) == 64  # the key; check_tx_key with it agrees
    by_key = await checker_rpc.call(
        "check_tx_key",
        {"txid": proof["txid"], "tx_key": proof["tx_key"], "address": vendor_address},
    )
    assert int(by_key["received"]) == received[0]


async def test_refund_path_and_address_checks(
    tmp_path: Path, monerod: MonerodProcess, miner: Miner, wallet_rpcs: list[WalletRpc]
) -> None:
    """Refund to the buyer ends `refunded`; bad addresses and OpenAlias names get 400 without
    any wallet-rpc lookup (so no DNS)."""
    buyer_rpc = wallet_rpcs[1]
    buyer_address = await create_plain_wallet(buyer_rpc, "buyer-refund")
    with _daemon(tmp_path, monerod) as daemon, trio.fail_after(600):
        async with daemon.client() as client:
            r = await client.post("/v1/escrows", json={"escrow_id": "order-2", "amount": AMOUNT})
            assert r.status_code == 201, r.text
            await fund_until_ready(client, monerod, miner, {"order-2": r.json()}, stepwise=True)

            before = await _validate_calls(client)
            for bad in ("donate.getmonero.org", "alice@example.com", "4" * 94 + "0", ""):
                r = await client.post("/v1/escrows/order-2/refund", json={"address": bad})
                assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
            assert await _validate_calls(client) == before  # never reached wallet-rpc
            # Shaped like an address but not one: wallet-rpc says so (OpenAlias off, no DNS).
            fake = buyer_address[:-4] + ("AAAA" if buyer_address[-4:] != "AAAA" else "BBBB")
            r = await client.post("/v1/escrows/order-2/refund", json={"address": fake})
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
            assert (await client.get("/v1/escrows/order-2")).json()["payout"] is None

            r = await client.post("/v1/escrows/order-2/refund", json={"address": buyer_address})
            assert r.status_code == 202, r.text
            assert r.json()["state"] == "refunding"
            await mine(monerod, miner, 10)
            await wait_event(client, "refunded", "order-2")
    received = await _received(buyer_rpc)
    assert len(received) == 1
    assert AMOUNT - 10**10 < received[0] < AMOUNT


async def _wait_exchanged(client: httpx.AsyncClient, escrow_id: str) -> None:
    """Until the escrow's open session holds a multisig info exchange (the monitor's)."""
    while True:
        body = (await client.get(f"/v1/escrows/{escrow_id}")).json()
        if body["session"].get("multisig_exchanged"):
            return
        await trio.sleep(0.5)


async def test_release_after_funds_arrived_since_the_pre_exchange(
    tmp_path: Path, monerod: MonerodProcess, miner: Miner, wallet_rpcs: list[WalletRpc]
) -> None:
    """Ready -> the session exchanges multisig info ahead -> a second payment arrives and
    unlocks -> the release still sweeps the whole balance (both payments) in one payout."""
    vendor_rpc = wallet_rpcs[2]
    vendor_address = await create_plain_wallet(vendor_rpc, "vendor-late-funds")
    with _daemon(tmp_path, monerod) as daemon, trio.fail_after(600):
        async with daemon.client() as client:
            r = await client.post("/v1/escrows", json={"escrow_id": "order-3", "amount": AMOUNT})
            assert r.status_code == 201, r.text
            escrow = r.json()
            await fund_until_ready(client, monerod, miner, {"order-3": escrow}, stepwise=True)
            await _wait_exchanged(client, "order-3")

            payer = miner.process.client()
            try:
                await payer.call("refresh")
                await fund(payer, escrow["multisig_address"], AMOUNT // 2)
            finally:
                await payer.aclose()
            await mine(monerod, miner, 11)  # mined and unlocked
            balance = (await client.get("/v1/escrows/order-3/balance?refresh=true")).json()
            assert balance["unlocked_balance"] == AMOUNT + AMOUNT // 2, balance

            r = await client.post("/v1/escrows/order-3/release", json={"address": vendor_address})
            assert r.status_code == 202, r.text
            (submitted,) = await events_of(client, "payout_submitted")
            assert submitted["amount"] + submitted["fee"] == AMOUNT + AMOUNT // 2, submitted
            await mine(monerod, miner, 1)
    received = await _received(vendor_rpc)
    assert len(received) == 1
    assert AMOUNT + AMOUNT // 2 - 10**10 < received[0] < AMOUNT + AMOUNT // 2
