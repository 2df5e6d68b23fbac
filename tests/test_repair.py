"""Repairing a wallet that fails to open (wallets.repair), on real files in a temporary wallet
directory, with a stand-in for wallet-rpc that reads them the way wallet-rpc would: a keys file
opens only with its password and shows its address, a damaged cache fails the open until it is
set aside, and a keys file locked (fcntl) by another process is a real lock held by a child
process. What a user checks: the live files, the `damaged-*`/`replaced-*` sets and the events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from walletd.cluster.db import Database
from walletd.cluster.leases import Leases
from walletd.cluster.wallet_files import WalletFiles
from walletd.errors import NotRepaired, RpcCallError
from walletd.state.backups import Backups
from walletd.wallets.keys_lock import lock_holder
from walletd.wallets.repair import WalletRepair
from walletd.wallets.rpc import DAMAGE_SIGNS

MULTISIG = "4" + "M" * 94
PLAIN = "4" + "P" * 94
PASSWORD = "correct horse"


class FileWalletRpc:
    """open_wallet/get_address/close_wallet over the wallet directory, as wallet-rpc sees it."""

    def __init__(self, wallet_dir: Path, password: str) -> None:
        self.wallet_dir = wallet_dir
        self.password = password
        self.opened: list[str] = []
        self.current: str | None = None

    async def open(self, filename: str) -> str:
        self.opened.append(filename)
        keys = self.wallet_dir / f"{filename}.keys"
        cache = self.wallet_dir / filename
        try:
            data = json.loads(keys.read_text())
        except (OSError, ValueError):
            raise RpcCallError("open_wallet", -1, "Failed to open wallet") from None
        if data["password"] != self.password or (cache.exists() and cache.read_bytes() != b"ok"):
            raise RpcCallError("open_wallet", -1, "Failed to open wallet")
        self.current = filename
        return str(data["address"])

    async def close(self) -> None:
        if self.current is None:
            raise RpcCallError("close_wallet", -13, "No wallet file")
        (self.wallet_dir / self.current).write_bytes(b"ok")  # close_wallet stores
        self.current = None


def write_wallet(directory: Path, name: str, address: str, *, cache: bytes = b"ok") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.keys").write_text(json.dumps({"address": address, "password": PASSWORD}))
    (directory / name).write_bytes(cache)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[WalletRepair, Backups, list[dict[str, Any]], Path]:
    wallet_dir = tmp_path / "wallets"
    backups = Backups(wallet_dir, tmp_path / "backups")
    events: list[dict[str, Any]] = []
    repair = WalletRepair(wallet_dir, backups, lambda escrow_id, **d: events.append(d))
    return repair, backups, events, wallet_dir


def backup_of(backups: Backups, wallet_dir: Path, address: str, label: str) -> None:
    """A backup holding a wallet with `address` (files written, copied, then put back)."""
    live = snapshot(wallet_dir)
    write_wallet(wallet_dir, "w", address)
    backups.take("e1", ["w"], label)
    for name, data in live.items():
        (wallet_dir / name).write_bytes(data)


def failed() -> RpcCallError:
    return RpcCallError("open_wallet", -1, "Failed to open wallet")


@pytest.fixture
def locked_by_child(tmp_path: Path) -> Iterator[Path]:
    """A keys file with a POSIX record lock held by another process, as wallet-rpc holds it."""
    keys = tmp_path / "wallets" / "w.keys"
    write_wallet(keys.parent, "w", MULTISIG)
    script = (
        "import fcntl, sys; f = open(sys.argv[1], 'r+'); fcntl.lockf(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(keys)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "locked\n"
    try:
        yield keys
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


async def test_a_wallet_locked_by_another_process_is_never_repaired(
    setup: tuple[WalletRepair, Backups, list[dict[str, Any]], Path], locked_by_child: Path
) -> None:
    """A wallet another process holds open is not damaged: its cache and keys stay as they are,
    no backup is restored (even one with the right address), and the error names the holder."""
    repair, backups, events, wallet_dir = setup
    backup_of(backups, wallet_dir, MULTISIG, "before payout")
    before = snapshot(wallet_dir)
    rpc = FileWalletRpc(wallet_dir, PASSWORD)
    with pytest.raises(NotRepaired, match="held open by another process"):
        await repair.repair("e1", "buyer", "w", MULTISIG, rpc, failed())
    assert snapshot(wallet_dir) == before
    assert rpc.opened == []
    assert events == []
    assert _sets(backups, "damaged-") == []
    assert _sets(backups, "replaced-") == []


async def test_a_wrong_password_is_never_repaired(
    setup: tuple[WalletRepair, Backups, list[dict[str, Any]], Path],
) -> None:
    """A wallet opened with a wrong password keeps its cache and keys: the cache set aside to
    test it goes back, and no backup (even one with the escrow's address) replaces the keys."""
    repair, backups, events, wallet_dir = setup
    write_wallet(wallet_dir, "w", MULTISIG)
    backup_of(backups, wallet_dir, MULTISIG, "before payout")
    before = snapshot(wallet_dir)
    rpc = FileWalletRpc(wallet_dir, "wrong password")
    with pytest.raises(NotRepaired) as info:
        await repair.repair("e1", "buyer", "w", MULTISIG, rpc, failed())
    assert PASSWORD not in str(info.value)
    assert snapshot(wallet_dir) == before
    assert _sets(backups, "damaged-") == []
    assert _sets(backups, "replaced-") == []
    assert events == []


async def test_a_damaged_cache_is_set_aside(
    setup: tuple[WalletRepair, Backups, list[dict[str, Any]], Path],
) -> None:
    """A truncated cache is moved to a damaged-* set and the wallet opens from its keys file;
    the keys file is untouched and a wallet_repaired event says source=cache."""
    repair, backups, events, wallet_dir = setup
    write_wallet(wallet_dir, "w", MULTISIG, cache=b"trunc")
    keys = (wallet_dir / "w.keys").read_bytes()
    rpc = FileWalletRpc(wallet_dir, PASSWORD)
    await repair.repair("e1", "vendor", "w", MULTISIG, rpc, failed())
    assert rpc.current == "w"
    assert (wallet_dir / "w.keys").read_bytes() == keys
    assert len(_sets(backups, "damaged-")) == 1
    assert events == [{"role": "vendor", "source": "cache"}]


async def test_a_backup_of_another_wallet_never_replaces_the_keys(
    setup: tuple[WalletRepair, Backups, list[dict[str, Any]], Path],
) -> None:
    """With damaged keys and only the backup taken before multisig setup (a plain wallet), the
    repair fails with a clear error and the live files stay exactly as they were."""
    repair, backups, events, wallet_dir = setup
    write_wallet(wallet_dir, "w", MULTISIG)
    backup_of(backups, wallet_dir, PLAIN, "before multisig setup")
    (wallet_dir / "w.keys").write_bytes(b"\x00garbage")
    before = snapshot(wallet_dir)
    rpc = FileWalletRpc(wallet_dir, PASSWORD)
    with pytest.raises(NotRepaired, match="no backup opens as the escrow's multisig wallet"):
        await repair.repair("e1", "arbiter", "w", MULTISIG, rpc, failed())
    assert snapshot(wallet_dir) == before
    assert _sets(backups, "replaced-") == []
    assert events == []


async def test_damaged_keys_are_replaced_only_by_a_backup_with_the_escrow_address(
    setup: tuple[WalletRepair, Backups, list[dict[str, Any]], Path],
) -> None:
    """With damaged keys, the newest backup whose wallet opens with the escrow's multisig
    address is restored (a newer plain one is passed over); the old files go to replaced-*."""
    repair, backups, events, wallet_dir = setup
    write_wallet(wallet_dir, "w", MULTISIG)
    backup_of(backups, wallet_dir, MULTISIG, "before payout")
    backup_of(backups, wallet_dir, PLAIN, "not the escrow's")
    (wallet_dir / "w.keys").write_bytes(b"\x00garbage")
    rpc = FileWalletRpc(wallet_dir, PASSWORD)
    await repair.repair("e1", "buyer", "w", MULTISIG, rpc, failed())
    assert rpc.current == "w"
    assert json.loads((wallet_dir / "w.keys").read_text())["address"] == MULTISIG
    (replaced,) = _sets(backups, "replaced-")
    assert (replaced / "w.keys").read_bytes() == b"\x00garbage"
    assert not list(wallet_dir.glob("*.restore-check*"))
    assert [(e["role"], e["source"]) for e in events] == [("buyer", "backup")]


async def test_no_backup_is_restored_without_a_verified_address(
    setup: tuple[WalletRepair, Backups, list[dict[str, Any]], Path],
) -> None:
    """While adopting (no verified multisig address yet) damaged keys are never replaced."""
    repair, backups, events, wallet_dir = setup
    write_wallet(wallet_dir, "w", MULTISIG)
    backup_of(backups, wallet_dir, MULTISIG, "before payout")
    (wallet_dir / "w.keys").write_bytes(b"\x00garbage")
    before = snapshot(wallet_dir)
    with pytest.raises(NotRepaired, match="no verified multisig address"):
        await repair.repair("e1", "buyer", "w", None, FileWalletRpc(wallet_dir, PASSWORD), failed())
    assert snapshot(wallet_dir) == before
    assert events == []


def test_damaged_and_replaced_sets_are_pruned(tmp_path: Path) -> None:
    """Only the newest three damaged-* sets of an escrow are kept, like backups."""
    wallet_dir = tmp_path / "wallets"
    backups = Backups(wallet_dir, tmp_path / "backups")
    for i in range(5):
        write_wallet(wallet_dir, "w", MULTISIG, cache=f"cache {i}".encode())
        backups.set_aside_cache("e1", "w")
    kept = _sets(backups, "damaged-")
    assert [(p / "w").read_bytes() for p in kept] == [b"cache 2", b"cache 3", b"cache 4"]
    for i in range(5):
        write_wallet(wallet_dir, "c", MULTISIG, cache=f"new {i}".encode())
        backups.replace_with("e1", "w", "c")
    assert len(_sets(backups, "replaced-")) == 3


def _sets(backups: Backups, prefix: str) -> list[Path]:
    root = backups.backup_dir / "e1"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(prefix)]
    return sorted(found, key=lambda p: int(p.name[len(prefix) :]))


def test_lock_probe_sees_a_lock_held_by_another_process(
    locked_by_child: Path, tmp_path: Path
) -> None:
    """The probe names the process holding the keys file's lock, and sees none on a free file."""
    assert lock_holder(locked_by_child) not in (None, os.getpid())
    write_wallet(tmp_path / "free", "w", MULTISIG)
    assert lock_holder(tmp_path / "free" / "w.keys") is None


@pytest.mark.parametrize("sign", DAMAGE_SIGNS)
async def test_an_open_failing_with_a_damage_sign_repairs_the_cache(
    setup: tuple[WalletRepair, Backups, list[dict[str, Any]], Path], sign: str
) -> None:
    """open_wallet failing with one of the errors that mean a damaged cache (basicswap's list)
    is repaired like a truncated cache: the cache is set aside, the wallet opens from its keys
    file with the escrow's address, and a wallet_repaired event says source=cache."""
    repair, backups, events, wallet_dir = setup
    write_wallet(wallet_dir, "w", MULTISIG, cache=b"trunc")
    rpc = FileWalletRpc(wallet_dir, PASSWORD)
    error = RpcCallError("open_wallet", -1, f"Failed to open wallet: {sign}")
    await repair.repair("e1", "buyer", "w", MULTISIG, rpc, error)
    assert rpc.current == "w"
    assert len(_sets(backups, "damaged-")) == 1
    assert events == [{"role": "buyer", "source": "cache"}]


@pytest.mark.pg
async def test_a_cluster_repairs_from_the_databases_newest_good_version_first(
    db: Database, tmp_path: Path
) -> None:
    """In a cluster, a wallet with damaged keys, an old local backup and newer versions in the
    database is repaired from the newest database version that opens as the escrow's wallet
    (a newer damaged one is passed over), never from the old local backup; the event says
    source=database and which version."""
    wallet_dir = tmp_path / "wallets"
    backups = Backups(wallet_dir, tmp_path / "backups")
    leases = Leases(db, 10.0)
    stored = WalletFiles(db, leases)
    events: list[dict[str, Any]] = []
    repair = WalletRepair(wallet_dir, backups, lambda escrow_id, **d: events.append(d), stored)
    tenure = await leases.acquire("e1", "h1")
    assert tenure is not None

    def keys_of(generation: str) -> str:
        return json.dumps({"address": MULTISIG, "password": PASSWORD, "generation": generation})

    write_wallet(wallet_dir, "w", MULTISIG)
    (wallet_dir / "w.keys").write_text(keys_of("old"))
    backups.take("e1", ["w"], "before payout")  # the old local backup
    await stored.save(tenure, "buyer", wallet_dir, "w")  # version 1: the old state
    (wallet_dir / "w.keys").write_text(keys_of("newer"))
    assert await stored.save(tenure, "buyer", wallet_dir, "w") == 2
    (wallet_dir / "w.keys").write_bytes(b"\x00garbage: saved, then found damaged")
    assert await stored.save(tenure, "buyer", wallet_dir, "w") == 3
    (wallet_dir / "w.keys").write_bytes(b"\x00garbage: damaged on this disk only")

    rpc = FileWalletRpc(wallet_dir, PASSWORD)
    await repair.repair("e1", "buyer", "w", MULTISIG, rpc, failed())
    assert rpc.current == "w"
    assert json.loads((wallet_dir / "w.keys").read_text())["generation"] == "newer"
    assert [(e["source"], e["version"]) for e in events] == [("database", 2)]
    (replaced,) = _sets(backups, "replaced-")
    assert (replaced / "w.keys").read_bytes() == b"\x00garbage: damaged on this disk only"
    assert not list(wallet_dir.glob("*.restore-check*"))
