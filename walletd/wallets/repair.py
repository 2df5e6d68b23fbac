"""Repairing a wallet that does not open, only when damage is positively known.

wallet-rpc answers an `open_wallet` that fails with -1 "Failed to open wallet" whatever the
reason: a damaged cache, a damaged keys file, a wrong password, a missing file, or the keys file
locked by another process that has the wallet open (monero-facts.md, "Exclusive lock"). Treating
every -1 as damage once overwrote a live multisig keys file with a pre-multisig backup (a plain
wallet), and the escrow then failed forever with "address mismatch". So each step here proves
its premise before it touches a file, and undoes itself when the premise turns out false:

1. The keys file must not be locked by another process. wallet-rpc holds a POSIX fcntl record
   lock on `<w>.keys` while the wallet is open; we ask the kernel with F_GETLK (a query: it takes
   no lock). walletd itself never holds fcntl locks on wallet files, so closing our probe's file
   descriptor (which drops every record lock this process holds on that file) loses nothing, and
   any holder F_GETLK reports is another process. Locked: no repair, an error naming the pid.
2. The cache is set aside and the wallet opened from its keys file alone. If it opens, the cache
   was the damage (deleting it is safe: the wallet rebuilds from the chain). If it still fails,
   the cache goes back where it was: it was not the damage (a wrong password fails the same way).
3. A backup replaces the live files only if it opens, in the same wallet-rpc process and with
   the same password, as a wallet whose address is the escrow's multisig address. We cannot
   read an address out of a keys file without its password-derived key (and walletd has no
   Monero cryptography), so we let wallet-rpc do it: the backup is copied into the wallet
   directory under a scratch name (wallet-rpc opens only names in its directory), opened,
   asked `get_address`, closed; only then are the live files moved to `replaced-*` and the
   checked copy renamed into place. This also settles the password: a wrong password opens no
   backup either, so it never replaces anything. An escrow with no verified multisig address
   yet (adopting, creating) never restores a backup. No backup qualifies: the error says so and
   the live files are left as they were.

In a cluster the database keeps the last few versions of every wallet (`cluster.wallet_files`),
saved after every store: they are newer than any local backup (taken before setup and payouts
only), and a repair from an old local backup would then be saved as the newest database version
on top of them. So with a verified address, a cluster tries the database's kept versions first,
newest first (those equal to the live files that failed are skipped), each checked in the same
way as a backup; only then the cache step and this host's backups.

`damaged-*` and `replaced-*` sets are kept for a post-mortem, the newest few of each kind per
escrow (see `Backups`). Every repair done is reported as a `wallet_repaired` event.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from walletd.errors import OPEN_FAILED, NotRepaired, RpcCallError
from walletd.ids import Role
from walletd.state.backups import Backups
from walletd.wallets.keys_lock import lock_holder

__all__ = ["KeptVersions", "Opener", "WalletRepair"]

log = structlog.get_logger(__name__)

CHECK_SUFFIX = ".restore-check"  # the scratch name a backup is opened under before it is used


class Opener(Protocol):
    """Opens wallets in the one wallet-rpc process that failed to open the live one."""

    async def open(self, filename: str) -> str:
        """open_wallet `filename` (with the escrow wallet's password); its address."""

    async def close(self) -> None:
        """close_wallet (it stores)."""


class KeptVersions(Protocol):
    """The cluster database's kept versions of a wallet (`cluster.wallet_files.WalletFiles`)."""

    async def kept_versions(
        self, escrow_id: str, role: str, wallet_dir: Path, filename: str
    ) -> list[int]:
        """Versions that differ from the local files of `filename`, newest first."""

    async def write_version(
        self, escrow_id: str, role: str, version: int, wallet_dir: Path, filename: str
    ) -> bool:
        """Write a version's files as wallet `filename`; False if it is gone."""


class WalletRepair:
    def __init__(
        self,
        wallet_dir: Path,
        backups: Backups,
        on_repaired: Callable[..., None],
        kept: KeptVersions | None = None,
    ) -> None:
        self.wallet_dir = wallet_dir
        self.backups = backups
        self._on_repaired = on_repaired  # (escrow_id, role=, source=, ...) -> the event log
        self.kept = kept  # a cluster: the database's versions, tried before anything local

    async def repair(
        self,
        escrow_id: str,
        role: Role,
        file: str,
        address: str | None,
        opener: Opener,
        failure: RpcCallError,
    ) -> None:
        """Make `file` open in `opener`'s process, or raise leaving the live files untouched.

        `failure` is the -1 the plain open got; `address` the escrow's verified multisig
        address (None: no backup may be restored)."""
        keys = self.wallet_dir / f"{file}.keys"
        if not keys.exists():
            raise NotRepaired(f"{role} wallet {file}: keys file missing; nothing to repair")
        holder = lock_holder(keys)
        if holder is not None:
            raise NotRepaired(
                f"{role} wallet {file} is held open by another process (pid {holder}); "
                "not a damaged wallet, not repaired"
            )
        if address is not None and await self._restore_kept(escrow_id, role, file, address, opener):
            return
        if await self._try_without_cache(escrow_id, role, file, opener):
            return
        if address is None:
            raise NotRepaired(
                f"{role} wallet {file} does not open (wrong password or damaged keys file) and "
                "the escrow has no verified multisig address to check a backup against; "
                "files left untouched"
            ) from failure
        await self._restore_checked(escrow_id, role, file, address, opener, failure)

    async def _try_without_cache(
        self, escrow_id: str, role: Role, file: str, opener: Opener
    ) -> bool:
        aside = self.backups.set_aside_cache(escrow_id, file)
        if aside is None:
            return False
        try:
            await opener.open(file)
        except RpcCallError as exc:
            if exc.code != OPEN_FAILED:
                self.backups.put_back_cache(aside, file)
                raise
            # Not the cache: put it back as it was (a wrong password fails this way too).
            self.backups.put_back_cache(aside, file)
            log.info("wallet does not open without its cache either; cache put back", role=role)
            return False
        except BaseException:
            self.backups.put_back_cache(aside, file)
            raise
        log.warning("damaged wallet cache set aside", role=role, path=str(aside))
        self._on_repaired(escrow_id, role=role, source="cache")
        return True

    async def _restore_kept(
        self, escrow_id: str, role: Role, file: str, address: str, opener: Opener
    ) -> bool:
        """The newest database version that opens as the escrow's wallet, if any (a cluster)."""
        if self.kept is None:
            return False
        scratch = f"{file}{CHECK_SUFFIX}"
        for version in await self.kept.kept_versions(escrow_id, role, self.wallet_dir, file):
            self._remove(scratch)
            try:
                if not await self.kept.write_version(
                    escrow_id, role, version, self.wallet_dir, scratch
                ):
                    continue
                if not await self._checks_out(opener, scratch, address, role, f"v{version}"):
                    continue
            except BaseException:
                self._remove(scratch)
                raise
            kept = self.backups.replace_with(escrow_id, file, scratch)
            await opener.open(file)
            log.warning("wallet restored from the database", role=role, version=version)
            self._on_repaired(
                escrow_id, role=role, source="database", version=version, replaced=kept.name
            )
            return True
        return False

    async def _checks_out(
        self, opener: Opener, scratch: str, address: str, role: Role, copy: str
    ) -> bool:
        """Whether the copy under `scratch` opens as the escrow's wallet; removed if not."""
        try:
            shown = await _checked_address(opener, scratch)
        except RpcCallError as exc:
            log.info("copy does not open; skipped", role=role, copy=copy, error=str(exc))
            self._remove(scratch)
            return False
        if shown != address:
            log.warning(
                "copy holds another wallet (not the escrow's address); skipped",
                role=role,
                copy=copy,
            )
            self._remove(scratch)
            return False
        return True

    async def _restore_checked(
        self,
        escrow_id: str,
        role: Role,
        file: str,
        address: str,
        opener: Opener,
        failure: RpcCallError,
    ) -> None:
        scratch = f"{file}{CHECK_SUFFIX}"
        for backup in self.backups.newest(escrow_id):
            if not (backup / f"{file}.keys").exists():
                continue
            self._remove(scratch)
            for suffix in ("", ".keys"):
                saved = backup / f"{file}{suffix}"
                if saved.exists():
                    shutil.copy2(saved, self.wallet_dir / f"{scratch}{suffix}")
            try:
                if not await self._checks_out(opener, scratch, address, role, backup.name):
                    continue
            except BaseException:
                self._remove(scratch)
                raise
            kept = self.backups.replace_with(escrow_id, file, scratch)
            await opener.open(file)
            log.warning("wallet restored from a checked backup", role=role, backup=str(backup))
            self._on_repaired(
                escrow_id, role=role, source="backup", backup=backup.name, replaced=kept.name
            )
            return
        raise NotRepaired(
            f"{role} wallet {file} does not open (wrong password or damaged keys file) and no "
            "backup opens as the escrow's multisig wallet; files left untouched"
        ) from failure

    def _remove(self, name: str) -> None:
        for suffix in ("", ".keys", ".address.txt"):
            with contextlib.suppress(FileNotFoundError):
                (self.wallet_dir / f"{name}{suffix}").unlink()


async def _checked_address(opener: Opener, filename: str) -> str:
    try:
        return await opener.open(filename)
    finally:
        with contextlib.suppress(RpcCallError):
            await opener.close()
