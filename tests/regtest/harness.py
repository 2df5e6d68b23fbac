"""What the regtest tests do to escrows through walletd's HTTP API, written once: create, pay,
mine, wait for a state, fund until ready.

The clients are the tests' own (`WalletdProcess.client()`, `ClusterHost.client()`); the chain is
the session's (`monerod`, `miner` in conftest.py) or a test's own (`private_chain` in
`walletd.testing.wallet_rpc_process`). Waiting polls with `tests.harness.until_state`, bounded
by HANG: a bound that only fails a hang on a loaded 2-core machine, never a timing claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import trio

from tests.harness import until_state
from tests.regtest.walletd_proc import wait_event
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import Miner

__all__ = [
    "AMOUNT",
    "HANG",
    "MONITOR",
    "UNLOCK",
    "XMR",
    "create_escrow",
    "create_escrows",
    "escrow_of",
    "fund_until_ready",
    "mine",
    "pay",
    "wait_state",
]

XMR = 10**12
AMOUNT = 2 * XMR
UNLOCK = 11  # blocks after which a received output is unlocked and has 10 confirmations
MONITOR = {"poll_interval": 2, "height_check": 0.3, "cold_interval": 2}  # walletd's [monitor]
HANG = 300.0  # a bound only to fail a hang on a loaded 2-core machine, never a timing claim


async def mine(monerod: MonerodProcess, miner: Miner, blocks: int) -> None:
    """Mine `blocks` blocks to the miner (in a thread: the call blocks until they are mined)."""
    await trio.to_thread.run_sync(monerod.mine, blocks, miner.address)


async def pay(miner: Miner, amounts: Mapping[str, int]) -> str:
    """One transaction from the miner paying each address its amount; returns the txid
    (unconfirmed). The miner's wallet is refreshed first: it sees every block mined so far."""
    payer = miner.process.client()
    try:
        await payer.call("refresh")
        destinations = [{"amount": amount, "address": to} for to, amount in amounts.items()]
        answer = await payer.call("transfer", {"destinations": destinations})
    finally:
        await payer.aclose()
    return str(answer["tx_hash"])


async def create_escrow(
    client: httpx.AsyncClient, escrow_id: str, amount: int = AMOUNT
) -> dict[str, Any]:
    """POST /v1/escrows: 201 and `awaiting_funding`; returns the escrow."""
    r = await client.post("/v1/escrows", json={"escrow_id": escrow_id, "amount": amount})
    assert r.status_code == 201, r.text
    escrow: dict[str, Any] = r.json()
    assert escrow["state"] == "awaiting_funding"
    return escrow


async def create_escrows(
    client: httpx.AsyncClient, ids: list[str], amount: int = AMOUNT
) -> dict[str, dict[str, Any]]:
    """`create_escrow` for every id, all at once; the escrows by id."""
    made: dict[str, dict[str, Any]] = {}

    async def one(escrow_id: str) -> None:
        made[escrow_id] = await create_escrow(client, escrow_id, amount)

    async with trio.open_nursery() as nursery:
        for escrow_id in ids:
            nursery.start_soon(one, escrow_id)
    return made


async def escrow_of(client: httpx.AsyncClient, escrow_id: str) -> dict[str, Any]:
    """GET /v1/escrows/{id}: 200; returns the escrow."""
    r = await client.get(f"/v1/escrows/{escrow_id}")
    assert r.status_code == 200, r.text
    escrow: dict[str, Any] = r.json()
    return escrow


async def wait_state(
    client: httpx.AsyncClient, escrow_id: str, state: str, timeout: float = HANG
) -> dict[str, Any]:
    """Read the escrow through `client` until it is in `state` (every read answers 200)."""

    async def read(eid: str) -> dict[str, Any]:
        return await escrow_of(client, eid)

    return await until_state(read, escrow_id, state, timeout=timeout, interval=0.3)


async def fund_until_ready(
    client: httpx.AsyncClient,
    monerod: MonerodProcess,
    miner: Miner,
    escrows: Mapping[str, Mapping[str, Any]],
    *,
    amount: int = AMOUNT,
    stepwise: bool = False,
) -> str:
    """Pay `amount` to every escrow of `escrows` (id -> the escrow as created) in one
    transaction, mine until it is unlocked, and wait (asking through `client`) until each is
    `ready` with exactly that unlocked balance; returns the funding txid.

    `stepwise` also checks the way there: one block first, each escrow's `funded` event shows
    the deposit and a release is refused `not_ready` while it is locked; then the other blocks,
    and each escrow's `ready` event."""
    txid = await pay(miner, {e["multisig_address"]: amount for e in escrows.values()})
    if stepwise:
        await mine(monerod, miner, 1)
        for escrow_id in escrows:
            funded = await wait_event(client, "funded", escrow_id)
            assert funded["balance"] >= amount
            release = {"address": miner.address}
            r = await client.post(f"/v1/escrows/{escrow_id}/release", json=release)
            assert (r.status_code, r.json()["error"]["code"]) == (409, "not_ready")
        await mine(monerod, miner, UNLOCK - 1)
    else:
        await mine(monerod, miner, UNLOCK)
    for escrow_id in escrows:
        if stepwise:
            await wait_event(client, "ready", escrow_id)
        ready = await wait_state(client, escrow_id, "ready")
        assert ready["funding"]["unlocked_balance"] == amount
    return txid
