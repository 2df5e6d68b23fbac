"""Fixtures for tests against a real regtest monerod and real monero-wallet-rpc processes.

House rules: every process listens on 127.0.0.1 on a port the kernel picked, lives in the
session's temporary directory, and is stopped (SIGTERM, then SIGKILL) however the session ends.
Session fixtures are synchronous (pytest-trio only runs function-scoped async fixtures); async
clients are function-scoped fixtures opened in the test's own trio run.

- `monerod`: one regtest node per session (`walletd.testing.regtest.MonerodProcess`).
- `wallet_rpc_pool`: six wallet-rpc processes; `wallet_rpcs` gives a test async clients to them
  and closes whatever wallets the test left open.
- `miner` / `miner_rpc`: a plain wallet with unlocked coinbase outputs, to fund escrows
  (`walletd.testing.wallet_rpc_process.mining_wallet`).
- `make_multisig_sets(wallet_dir, n, password)`: ready 2-of-3 sets, closed, in `wallet_dir`.
- `payee_process` / `payee`: one plain wallet of our own for the session; every payout goes to a
  fresh subaddress of it (`crash_helpers.new_payee_address`), so tests never share a destination.

What the tests do with these (create, fund until ready, wait for a state, over HTTP) is in
`tests/regtest/harness.py`; a chain of a test's own is `wallet_rpc_process.private_chain`.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import (
    Miner,
    MultisigSetFactory,
    WalletRpcProcess,
    close_wallets,
    mining_wallet,
    plain_wallet_process,
    started_wallet_rpcs,
)
from walletd.wallets.rpc import DaemonRpc, WalletRpc

POOL_SIZE = 6  # two multisig sets at a time; more gains nothing on 2 cores (CPU-bound opens)


@pytest.fixture(scope="session")
def regtest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for binary in ("monerod", "monero-wallet-rpc"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed")
    return tmp_path_factory.mktemp("regtest")


@pytest.fixture(scope="session")
def monerod(regtest_dir: Path) -> Iterator[MonerodProcess]:
    with MonerodProcess(regtest_dir / "monerod") as node:
        yield node


@pytest.fixture(scope="session")
def wallet_rpc_pool(regtest_dir: Path, monerod: MonerodProcess) -> Iterator[list[WalletRpcProcess]]:
    """Six processes sharing one wallet dir; started together, then waited for."""
    pool_dir = regtest_dir / "pool-wallets"
    with started_wallet_rpcs(regtest_dir, pool_dir, monerod.daemon_address, POOL_SIZE) as pool:
        yield pool


@pytest.fixture(scope="session")
def miner(regtest_dir: Path, monerod: MonerodProcess) -> Iterator[Miner]:
    """A plain wallet in its own process, with MINER_BLOCKS coinbase outputs (40 unlocked)."""
    with mining_wallet(regtest_dir, monerod) as mined:
        yield mined


@pytest.fixture(scope="session")
def payee_process(regtest_dir: Path, monerod: MonerodProcess) -> Iterator[WalletRpcProcess]:
    """A wallet-rpc of our own with one plain wallet `payee`, for the whole session (one per
    module made the second module's `create_wallet` fail: the wallet directory is the session's)."""
    with plain_wallet_process(regtest_dir, "payee", monerod.daemon_address) as (proc, _):
        yield proc


@pytest.fixture
async def payee(payee_process: WalletRpcProcess) -> AsyncIterator[WalletRpc]:
    rpc = payee_process.client()
    try:
        yield rpc
    finally:
        await rpc.aclose()


@pytest.fixture(scope="session")
def make_multisig_sets(wallet_rpc_pool: list[WalletRpcProcess]) -> MultisigSetFactory:
    """`make_multisig_sets(wallet_dir, n, password) -> list[MultisigSet]` (or `.acreate`)."""
    return MultisigSetFactory(wallet_rpc_pool)


@pytest.fixture
async def wallet_rpcs(wallet_rpc_pool: list[WalletRpcProcess]) -> AsyncIterator[list[WalletRpc]]:
    """Clients to every pool process; afterwards no pool process has a wallet open."""
    rpcs = [proc.client() for proc in wallet_rpc_pool]
    try:
        yield rpcs
    finally:
        await close_wallets(rpcs)
        for rpc in rpcs:
            await rpc.aclose()


@pytest.fixture
async def miner_rpc(miner: Miner) -> AsyncIterator[WalletRpc]:
    """A client to the miner's wallet, refreshed (it sees every block mined so far)."""
    rpc = miner.process.client()
    try:
        await rpc.call("refresh")
        yield rpc
    finally:
        await rpc.aclose()


@pytest.fixture
async def daemon_rpc(monerod: MonerodProcess) -> AsyncIterator[DaemonRpc]:
    rpc = DaemonRpc(monerod.rpc_url, timeout=60.0)
    try:
        yield rpc
    finally:
        await rpc.aclose()
