"""The regtest world the benchmark runs in: its own monerod, wallet-rpc processes, a miner with
unlocked coins, ready 2-of-3 multisig sets and funded escrow addresses.

Everything is entered into the caller's ExitStack, so every process stops however the run ends.
The wallet-rpc processes serve `direct_dir`; the first three of them stay up after the sets are
made and serve the "old way" and floor baselines (wallets opened straight on wallet-rpc).
"""

from __future__ import annotations

import contextlib
import shutil
from functools import partial
from pathlib import Path

import attrs

from walletd.ids import ROLES
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import (
    Miner,
    MultisigSet,
    MultisigSetFactory,
    WalletRpcProcess,
    private_chain,
    run_trio,
    started_wallet_rpcs,
)

__all__ = [
    "PASSWORD",
    "XMR",
    "Regtest",
    "copy_wallet",
    "move_set",
    "start_regtest",
]

XMR = 10**12
PASSWORD = "bench-pw"  # noqa: S105 - throwaway regtest wallets
POOL_SIZE = 6  # two sets made at a time; more gains nothing on 2 cores (opens are CPU-bound)
UNLOCK_BLOCKS = 12  # a received output unlocks after 10 blocks; 2 spare


@attrs.define
class Regtest:
    root: Path
    monerod: MonerodProcess
    pool: list[WalletRpcProcess]
    miner: Miner
    direct_dir: Path

    def make_sets(self, n: int) -> list[MultisigSet]:
        """`n` ready 2-of-3 sets, closed, in `direct_dir`."""
        return MultisigSetFactory(self.pool)(self.direct_dir, n, PASSWORD)

    def shrink_pool(self, keep: int) -> None:
        """Stop the pool processes past `keep` (set making is over; they would only add noise)."""
        for proc in self.pool[keep:]:
            proc.stop()
        del self.pool[keep:]

    def fund(self, addresses: list[str], amount: int) -> str:
        """Pay `amount` to each address in one transaction, then mine until it is unlocked."""
        txid = run_trio(partial(self._transfer, addresses, amount))
        self.monerod.mine(UNLOCK_BLOCKS, self.miner.address)
        return txid

    async def _transfer(self, addresses: list[str], amount: int) -> str:
        rpc = self.miner.process.client()
        try:
            await rpc.call("refresh")
            dests = [{"address": a, "amount": amount} for a in addresses]
            answer = await rpc.call("transfer", {"destinations": dests})
            return str(answer["tx_hash"])
        finally:
            await rpc.aclose()


def start_regtest(stack: contextlib.ExitStack, root: Path) -> Regtest:
    monerod, miner = stack.enter_context(private_chain(root))
    direct_dir = root / "direct"
    procs = stack.enter_context(
        started_wallet_rpcs(root, direct_dir, monerod.daemon_address, POOL_SIZE)
    )
    return Regtest(root, monerod, procs, miner, direct_dir)


def _wallet_files(directory: Path, name: str) -> list[Path]:
    return [directory / f"{name}{suffix}" for suffix in ("", ".keys", ".address.txt")]


def move_set(s: MultisigSet, src: Path, dst: Path) -> None:
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    for role in ROLES:
        for path in _wallet_files(src, s.files[role]):
            if path.exists():
                shutil.move(path, dst / path.name)


def copy_wallet(src: Path, name: str, dst: Path, new_name: str) -> None:
    """A byte copy under another name: same keys and address, its own keys-file lock."""
    for path in _wallet_files(src, name)[:2]:
        shutil.copy2(path, dst / path.name.replace(name, new_name, 1))
