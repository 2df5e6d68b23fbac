"""Rolling backups of an escrow's wallet files (cache and keys), taken before risky steps.

Haveno's lesson: keep a few copies and fall back to them when a wallet no longer opens. walletd
takes one before multisig setup and one before each payout, keeps the newest `keep` per escrow,
and writes each copy to a temporary directory renamed into place, so a backup is whole or absent.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import structlog

__all__ = ["Backups"]

log = structlog.get_logger(__name__)


class Backups:
    def __init__(self, wallet_dir: Path, backup_dir: Path, keep: int = 3) -> None:
        self.wallet_dir = wallet_dir
        self.backup_dir = backup_dir
        self.keep = keep

    def take(self, escrow_id: str, files: Iterable[str], label: str) -> Path:
        """Copy the wallets' files (already stored by wallet-rpc) into a new backup directory."""
        root = self.backup_dir / escrow_id
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = f"{time.time_ns()}"
        tmp = root / f".{stamp}.tmp"
        tmp.mkdir(mode=0o700)
        for name in files:
            for suffix in ("", ".keys"):
                src = self.wallet_dir / f"{name}{suffix}"
                if src.exists():
                    shutil.copy2(src, tmp / src.name)
        (tmp / "LABEL").write_text(label + "\n")
        final = root / stamp
        os.rename(tmp, final)
        self._prune(root)
        log.info("wallet backup taken", escrow_id=escrow_id, label=label, path=str(final))
        return final

    def newest(self, escrow_id: str) -> list[Path]:
        """Backups of one escrow, newest first."""
        root = self.backup_dir / escrow_id
        if not root.is_dir():
            return []
        entries = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
        return sorted(entries, key=lambda p: int(p.name), reverse=True)

    def set_aside_cache(self, escrow_id: str, name: str) -> Path | None:
        """Move a wallet's cache file (not its keys) aside; wallet-rpc rebuilds it from the chain.

        Deleting the cache is safe (monero-facts.md); moving it keeps it for a post-mortem."""
        cache = self.wallet_dir / name
        if not cache.exists():
            return None
        target = self.backup_dir / escrow_id / f"damaged-{time.time_ns()}"
        target.mkdir(mode=0o700, parents=True)
        shutil.move(cache, target / name)
        log.warning("damaged wallet cache set aside", escrow_id=escrow_id, path=str(target))
        return target

    def restore_newest(self, escrow_id: str, name: str) -> Path | None:
        """Put back the newest backup of one wallet (cache and keys); the old files are kept."""
        for backup in self.newest(escrow_id):
            if (backup / f"{name}.keys").exists():
                keep = self.backup_dir / escrow_id / f"replaced-{time.time_ns()}"
                keep.mkdir(mode=0o700, parents=True)
                for suffix in ("", ".keys"):
                    current = self.wallet_dir / f"{name}{suffix}"
                    if current.exists():
                        shutil.move(current, keep / current.name)
                    saved = backup / f"{name}{suffix}"
                    if saved.exists():
                        shutil.copy2(saved, current)
                log.warning("wallet restored from backup", escrow_id=escrow_id, path=str(backup))
                return backup
        return None

    def _prune(self, root: Path) -> None:
        for old in self.newest(root.name)[self.keep :]:
            shutil.rmtree(old)
