"""Rolling backups of an escrow's wallet files (cache and keys), taken before risky steps.

Haveno's lesson: keep a few copies and fall back to them when a wallet no longer opens. walletd
takes one before multisig setup and one before each payout, keeps the newest `keep` per escrow,
and writes each copy to a temporary directory renamed into place, so a backup is whole or absent.
Which backup may replace a live wallet, and when, is repair's business: a backup taken
before multisig setup holds a plain wallet and must never replace a multisig one.

Files a repair moves out of the way are kept beside the backups, the newest `keep` sets of each
kind per escrow: `damaged-*` (a cache set aside) and `replaced-*` (live files a checked backup
replaced). Older sets are removed, so repeated repairs cannot fill the disk.
"""

from __future__ import annotations

import contextlib
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
        """Move a wallet's cache file (not its keys) into a new `damaged-*` set.

        Deleting the cache is safe (monero-facts.md); moving it keeps it for a post-mortem, and
        lets `put_back_cache` undo the move when the cache turns out not to be the damage."""
        cache = self.wallet_dir / name
        if not cache.exists():
            return None
        root = self.backup_dir / escrow_id
        target = root / f"damaged-{time.time_ns()}"
        target.mkdir(mode=0o700, parents=True)
        shutil.move(cache, target / name)
        self._prune_sets(root, "damaged-")
        return target

    def put_back_cache(self, aside: Path, name: str) -> None:
        """Undo `set_aside_cache`: the cache goes back, the empty set goes away."""
        shutil.move(aside / name, self.wallet_dir / name)
        with contextlib.suppress(OSError):
            aside.rmdir()

    def replace_with(self, escrow_id: str, name: str, checked: str) -> Path:
        """Move the live files of wallet `name` into a new `replaced-*` set, then rename the
        files of wallet `checked` (a backup copy already verified in the wallet directory) to
        `name`. Renames within one directory: each file is whole or absent."""
        root = self.backup_dir / escrow_id
        keep = root / f"replaced-{time.time_ns()}"
        keep.mkdir(mode=0o700, parents=True)
        for suffix in ("", ".keys"):
            current = self.wallet_dir / f"{name}{suffix}"
            if current.exists():
                shutil.move(current, keep / current.name)
        for suffix in ("", ".keys"):
            fresh = self.wallet_dir / f"{checked}{suffix}"
            if fresh.exists():
                os.rename(fresh, self.wallet_dir / f"{name}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            (self.wallet_dir / f"{checked}.address.txt").unlink()
        self._prune_sets(root, "replaced-")
        log.warning("live wallet files replaced", escrow_id=escrow_id, kept=str(keep))
        return keep

    def _prune(self, root: Path) -> None:
        for old in self.newest(root.name)[self.keep :]:
            shutil.rmtree(old)

    def _prune_sets(self, root: Path, prefix: str) -> None:
        """Keep the newest `keep` sets of one kind (`damaged-`, `replaced-`) per escrow."""
        sets = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix)]
        stamp = len(prefix)
        sets.sort(key=lambda p: int(p.name[stamp:]) if p.name[stamp:].isdigit() else 0)
        for old in sets[: -self.keep]:
            shutil.rmtree(old)
