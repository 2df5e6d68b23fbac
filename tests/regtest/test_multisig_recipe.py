"""The 2-of-3 multisig recipe of `walletd.wallets.multisig`, end to end against real processes.

Every test is bounded by `trio.fail_after` (or runs synchronously with bounded process waits);
every wallet a test opens is closed by the `wallet_rpcs` fixture, so the pool is clean afterwards.
"""

from __future__ import annotations

import fcntl
import functools
import secrets
import time
from pathlib import Path

import pytest
import trio

from walletd.errors import PayoutRefused, RpcCallError
from walletd.testing.regtest import (
    Monerod,
    MonerodProcess,
    mine,
    mine_until_confirmed,
    start_monerod,
)
from walletd.testing.wallet_rpc_process import (
    Miner,
    MultisigSet,
    MultisigSetFactory,
    WalletRpcProcess,
    create_plain_wallet,
    fund,
    run_trio,
)
from walletd.wallets.multisig import (
    ROLES,
    Role,
    check_proposal,
    cosign,
    create_wallets,
    make_multisig,
    propose,
    refresh,
    submit,
    sync_multisig_info,
    validate_address,
)
from walletd.wallets.rpc import DaemonRpc, WalletRpc

pytestmark = pytest.mark.regtest

XMR = 10**12
FUNDING = 3 * XMR
UNLOCK_BLOCKS = 10  # a received output is spendable 10 blocks after the block that holds it
ANY_FEE = 10**8  # a fee-per-byte bound no regtest sweep reaches: these checks are not about fees


async def test_fund_sweep_and_resubmit(
    wallet_rpcs: list[WalletRpc], miner: Miner, miner_rpc: WalletRpc, daemon_rpc: DaemonRpc
) -> None:
    """A new 2-of-3 receives funds, two signers sweep them to a plain wallet (balance less fee),
    and resubmitting the signed blob returns the same txid without a second transaction. The
    co-signer's payout check passes the sweep, and a sweep to an integrated address only with
    that address's own payment id."""
    with trio.fail_after(240):
        rpcs: dict[Role, WalletRpc] = dict(zip(ROLES, wallet_rpcs[:3], strict=True))
        destination_rpc = wallet_rpcs[3]
        token = secrets.token_hex(4)
        passwords: dict[Role, str] = {role: f"pw-{role}-{token}" for role in ROLES}
        await create_wallets(rpcs, {role: f"recipe-{token}-{role}" for role in ROLES}, passwords)
        address = await make_multisig(rpcs, passwords)
        assert await validate_address(rpcs["buyer"], address)

        txid = await fund(miner_rpc, address, FUNDING)
        await mine_until_confirmed(daemon_rpc, txid, UNLOCK_BLOCKS, miner.address)
        await refresh(list(rpcs.values()))
        balance = await rpcs["buyer"].call("get_balance")
        assert (balance["balance"], balance["unlocked_balance"]) == (FUNDING, FUNDING)

        destination = await create_plain_wallet(destination_rpc, f"dest-{token}")
        signers = [rpcs["buyer"], rpcs["vendor"]]
        await sync_multisig_info(signers)
        # The co-signer's check on real descriptions: an integrated address's payment id is
        # compared (a proposal to it is not a payout to the same address with another id).
        made = await destination_rpc.call("make_integrated_address", {})
        integrated = str(made["integrated_address"])
        to_integrated = await propose(rpcs["buyer"], integrated)
        await check_proposal(rpcs["vendor"], to_integrated, integrated, ANY_FEE)
        other = await destination_rpc.call("make_integrated_address", {"payment_id": "1" * 16})
        with pytest.raises(PayoutRefused, match="recorded payout address"):
            await check_proposal(
                rpcs["vendor"], to_integrated, str(other["integrated_address"]), ANY_FEE
            )
        proposal = await propose(rpcs["buyer"], destination)
        await check_proposal(rpcs["vendor"], proposal, destination, ANY_FEE)
        assert proposal.amount + proposal.fee == FUNDING
        assert 0 < proposal.fee < XMR // 100
        payout = await cosign(rpcs["vendor"], proposal)
        assert len(payout.txids) == 1

        assert await submit(rpcs["vendor"], payout) == payout.txids
        # As after a crash between submit and reply: the recorded blob again, from any wallet.
        assert await submit(rpcs["arbiter"], payout) == payout.txids
        await mine(daemon_rpc, 1, miner.address)
        assert await submit(rpcs["buyer"], payout) == payout.txids  # even once mined

        await destination_rpc.call("refresh")
        transfers = await destination_rpc.call("get_transfers", {"in": True, "pool": True})
        received = [(t["txid"], t["amount"]) for t in transfers.get("in", [])]
        received += [(t["txid"], t["amount"]) for t in transfers.get("pool", [])]
        assert received == [(payout.txids[0], FUNDING - payout.fee)]


async def test_validate_address_without_dns(
    wallet_rpcs: list[WalletRpc], miner: Miner, wallet_rpc_pool: list[WalletRpcProcess]
) -> None:
    """Regtest (mainnet-format) addresses are valid; an OpenAlias name and garbage are rejected
    without any DNS query (wallet-rpc logs its DNS queries under net.dns, which we turn on)."""
    with trio.fail_after(60):
        rpc = wallet_rpcs[0]
        await create_plain_wallet(rpc, f"validate-{secrets.token_hex(4)}")
        log_file = wallet_rpc_pool[0].work_dir / "wallet-rpc.log"
        await rpc.call("set_log_categories", {"categories": "*:WARNING,net.dns:DEBUG"})
        try:
            before = await _dns_log_lines(log_file)
            assert await validate_address(rpc, miner.address)
            for bad in ("donate.getmonero.org", "not an address!", "", miner.address[:-1]):
                assert not await validate_address(rpc, bad), bad
            assert await _dns_log_lines(log_file) == before
            # Control: a transfer to that name does query DNS (kept on loopback by DNS_PUBLIC),
            # so the log would have shown a query.
            params = {"destinations": [{"amount": 1, "address": "donate.getmonero.org"}]}
            with pytest.raises(RpcCallError):
                await rpc.call("transfer", params)
            assert await _dns_log_lines(log_file) > before
        finally:
            await rpc.call("set_log_level", {"level": 0})


async def _dns_log_lines(log_file: Path) -> int:
    text = await trio.Path(log_file).read_text(errors="replace")
    return sum("net.dns" in line for line in text.splitlines())


def test_make_multisig_sets_for_adoption(
    make_multisig_sets: MultisigSetFactory,
    tmp_path: Path,
    monerod: MonerodProcess,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The factory makes 11 ready sets in the given dir, closed (no lock held on any .keys file),
    and a fresh wallet-rpc on that dir opens them as the same ready 2-of-3 multisig."""
    wallet_dir = tmp_path / "wallets"
    started = time.monotonic()
    sets = make_multisig_sets(wallet_dir, 11, "adopt-me")
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\n11 multisig sets in {elapsed:.1f} s")

    assert len({s.address for s in sets}) == 11
    for multisig_set in sets:
        for name in multisig_set.files.values():
            assert (wallet_dir / name).is_file()
            _assert_unlocked(wallet_dir / f"{name}.keys")

    with WalletRpcProcess(
        wallet_dir=wallet_dir,
        work_dir=tmp_path / "adopter",
        daemon_address=monerod.daemon_address,
    ) as adopter:
        adopter.wait_ready()
        run_trio(functools.partial(_check_adoptable, adopter, sets[0]))


def _assert_unlocked(keys_file: Path) -> None:
    """Taking the POSIX write lock succeeds only if no wallet-rpc holds the wallet open."""
    with open(keys_file, "r+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(handle, fcntl.LOCK_UN)


async def _check_adoptable(adopter: WalletRpcProcess, multisig_set: MultisigSet) -> None:
    rpc = adopter.client()
    try:
        for name in multisig_set.files.values():
            await rpc.call("open_wallet", {"filename": name, "password": multisig_set.password})
            info = await rpc.call("is_multisig")
            assert (info["ready"], info["threshold"], info["total"]) == (True, 2, 3)
            assert (await rpc.call("get_address"))["address"] == multisig_set.address
        await rpc.call("close_wallet")
    finally:
        await rpc.aclose()


async def test_start_monerod_serves_until_cancelled(tmp_path: Path, miner: Miner) -> None:
    """`start_monerod` reports a node that answers and mines, and stops it on cancellation."""
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            node: Monerod = await nursery.start(start_monerod, tmp_path / "monerod")
            assert await mine(node.rpc, 2, miner.address) == 3  # genesis + 2
            nursery.cancel_scope.cancel()
        assert node.process.returncode is not None
