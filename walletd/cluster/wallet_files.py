"""Wallet files off the host: each escrow wallet's keys and cache, versioned in the cluster database

In a cluster the database is the truth and a host's wallet directory is a cache of it. After every
store the session hands the wallet's two files to `save`, which, in one transaction fenced by the
writer's lease epoch, adds them as version last+1 unless they are byte-identical to the latest
version, and keeps the newest `keep` versions. A host that takes an escrow over calls `restore`
before it opens the wallets: the latest version is written into the wallet directory unless the
local files already equal it. `export_all`/`import_all` copy the latest version of every wallet to
and from a directory, for an offline backup.

Never lose a wallet file:
- a save is refused whole (`Fenced`) if the lease is stale, so an old owner cannot push its older
  files over the new owner's;
- `restore` overwrites local files only by rename (each file whole, old or new), and local files
  the database has no copy of (they match none of the kept versions: a store whose save failed)
  are first kept under `<wallet_dir>/.replaced/`, never just overwritten;
- `import_all` checks every digest before writing anything, and by default does not put an offline
  copy on top of different files the database already has (see `import_all`);
- an abandoned creation's versions are marked abandoned (`abandon_wallet_files`, in the fenced
  transaction that deletes its record), not deleted: kept until a later escrow with that id
  saves enough versions, but never restored, exported or offered to a repair again, so such an
  escrow opens its own files.

The `.keys` file holds the wallet's keys (for a multisig wallet, its multisig state); the cache
(the file without suffix) its chain scan, transfers, tx keys and multisig info. Both are
encrypted by wallet-rpc with the wallet password, which this module never sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from walletd.cluster.db import Connection, Database
from walletd.cluster.leases import Leases, Tenure
from walletd.errors import (
    ExportRefused,
    ImportRefused,
    InvalidRequest,
    Unavailable,
    WalletFilesMissing,
)
from walletd.ids import ROLES, check_escrow_id

__all__ = [
    "MANIFEST",
    "ImportSummary",
    "WalletFiles",
    "abandon_wallet_files",
]

log = structlog.get_logger(__name__)

MANIFEST = "manifest.json"
FORMAT = "walletd-wallet-files"
FORMAT_VERSION = 1
REPLACED_DIR = ".replaced"  # in the wallet directory: local files restore kept aside


@attrs.frozen
class ImportSummary:
    imported: int  # added as a new version
    identical: int  # the database's latest version already had these bytes
    conflicts: tuple[str, ...]  # "escrow/role": the database has other files, left as they are


@attrs.frozen
class _Files:
    keys: bytes = attrs.field(repr=False)
    cache: bytes = attrs.field(repr=False)

    @property
    def digests(self) -> tuple[bytes, bytes]:
        return hashlib.sha256(self.keys).digest(), hashlib.sha256(self.cache).digest()


def _paths(wallet_dir: Path, filename: str) -> tuple[Path, Path]:
    """(keys, cache): wallet-rpc's layout, `<name>.keys` beside the cache `<name>`."""
    return wallet_dir / f"{filename}.keys", wallet_dir / filename


class WalletFiles:
    """Save, restore, export and import escrow wallet files in the cluster database."""

    def __init__(self, db: Database, leases: Leases, keep: int = 5) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.db = db
        self.leases = leases
        self.keep = keep

    # ---- save ----------------------------------------------------------------------------------

    async def save(self, tenure: Tenure, role: str, wallet_dir: Path, filename: str) -> int | None:
        """Put the wallet's stored files in the database as a new version, under the lease check.

        Call it after wallet-rpc's `store` returned (the files are whole then). Returns the new
        version, or None if both files equal the latest version's (nothing written). A stale
        tenure raises `Fenced` and writes nothing; a missing file raises `WalletFilesMissing`.
        """
        files = await trio.to_thread.run_sync(_read, wallet_dir, filename)
        if files is None:
            raise WalletFilesMissing(
                f"escrow {tenure.escrow_id} {role}: wallet files missing after a store"
            )
        digests = files.digests
        escrow_id, keep = tenure.escrow_id, self.keep

        def write(conn: Connection) -> int | None:
            # The lease row is locked by fenced_write: saves of one escrow are serialised.
            latest = conn.execute(_LATEST, (escrow_id, role)).fetchone()
            if _same_live(latest, digests):
                return None
            version = (int(latest[0]) if latest else 0) + 1
            _insert(conn, escrow_id, role, version, tenure.epoch, files, keep)
            return version

        version = await self.leases.fenced_write(tenure, write)
        if version is not None:
            log.info("wallet files saved", escrow_id=escrow_id, role=role, version=version)
        return version

    # ---- restore -------------------------------------------------------------------------------

    async def restore(
        self, escrow_id: str, role: str, wallet_dir: Path, filename: str
    ) -> int | None:
        """Make the local files the database's latest version, before the wallet is opened.

        Writes only if a local file is missing or differs (identical files are not touched).
        Returns the version the local files now hold, or None if the database has no version of
        this wallet (then the local files, if any, are left alone: a wallet not yet saved, or a
        one-host escrow). Local files that match none of the kept versions are kept under
        `<wallet_dir>/.replaced/` before being replaced. The wallet must not be open meanwhile.
        """

        versions = await self._kept(escrow_id, role)
        if not versions:
            return None
        local = await trio.to_thread.run_sync(_digests, wallet_dir, filename)
        latest = versions[0][0]
        if local == versions[0][1:]:
            return latest
        known = local is not None and local in {v[1:] for v in versions}

        def fetch(conn: Connection) -> tuple[int, _Files] | None:
            row = conn.execute(
                "SELECT version, keys, cache FROM wallet_files WHERE escrow_id = %s"
                " AND role = %s AND abandoned_at IS NULL ORDER BY version DESC LIMIT 1",
                (escrow_id, role),
            ).fetchone()
            return (int(row[0]), _Files(bytes(row[1]), bytes(row[2]))) if row else None

        fetched = await self.db.run(fetch, abandon_on_cancel=True)
        if fetched is None:  # pruned away meanwhile: cannot happen without a version after it
            raise Unavailable(f"escrow {escrow_id} {role}: wallet files vanished during restore")
        version, files = fetched
        # Unknown local files (even a lone one) are kept: the database may lack what they hold.
        aside = await trio.to_thread.run_sync(
            _replace, wallet_dir, filename, files, not known, self.keep
        )
        if aside is not None:
            log.warning(
                "local wallet files matched no stored version; kept aside and replaced",
                escrow_id=escrow_id,
                role=role,
                version=version,
                kept=str(aside),
            )
        else:
            log.info("wallet files restored", escrow_id=escrow_id, role=role, version=version)
        return version

    async def _kept(self, escrow_id: str, role: str) -> list[tuple[int, bytes, bytes]]:
        """(version, keys digest, cache digest) of the wallet's live versions, newest first."""

        def kept(conn: Connection) -> list[tuple[int, bytes, bytes]]:
            rows = conn.execute(
                "SELECT version, sha256(keys), sha256(cache) FROM wallet_files WHERE"
                " escrow_id = %s AND role = %s AND abandoned_at IS NULL ORDER BY version DESC",
                (escrow_id, role),
            ).fetchall()
            return [(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

        return await self.db.run(kept, abandon_on_cancel=True)

    # ---- repair ---------------------------------------------------------------------------------

    async def kept_versions(
        self, escrow_id: str, role: str, wallet_dir: Path, filename: str
    ) -> list[int]:
        """The kept versions a repair may try, newest first: every live version whose files
        differ from the local ones (those do not open: trying them again proves nothing)."""
        local = await trio.to_thread.run_sync(_digests, wallet_dir, filename)
        return [v for v, *digests in await self._kept(escrow_id, role) if tuple(digests) != local]

    async def write_version(
        self, escrow_id: str, role: str, version: int, wallet_dir: Path, filename: str
    ) -> bool:
        """Write one kept version's files as wallet `filename` (a scratch name: the live files
        are not touched); False if that version is gone (pruned by newer saves meanwhile)."""

        def fetch(conn: Connection) -> _Files | None:
            row = conn.execute(
                "SELECT keys, cache FROM wallet_files WHERE escrow_id = %s AND role = %s"
                " AND version = %s AND abandoned_at IS NULL",
                (escrow_id, role, version),
            ).fetchone()
            return _Files(bytes(row[0]), bytes(row[1])) if row else None

        files = await self.db.run(fetch, abandon_on_cancel=True)
        if files is None:
            return False
        await trio.to_thread.run_sync(_replace, wallet_dir, filename, files, False, self.keep)
        return True

    # ---- export and import ---------------------------------------------------------------------

    async def export_all(self, directory: Path) -> int:
        """Write the latest version of every escrow wallet into the new `directory` (0700, files
        0600) with a manifest of their versions, epochs and SHA-256 digests; return how many.

        The export is built beside the target and renamed into place: whole or absent."""

        def latest(conn: Connection) -> list[tuple[str, str, int]]:
            rows = conn.execute(
                "SELECT DISTINCT ON (escrow_id, role) escrow_id, role, version FROM wallet_files"
                " WHERE abandoned_at IS NULL ORDER BY escrow_id, role, version DESC"
            ).fetchall()
            return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

        directory, tmp = await trio.to_thread.run_sync(_export_dirs, directory)
        try:
            wanted = await self.db.run(latest, abandon_on_cancel=True)
            entries: list[dict[str, Any]] = []
            for n, (escrow_id, role, version) in enumerate(wanted):

                def one(
                    conn: Connection, e: str = escrow_id, r: str = role, v: int = version
                ) -> tuple[int, _Files] | None:
                    row = conn.execute(
                        "SELECT epoch, keys, cache FROM wallet_files"
                        " WHERE escrow_id = %s AND role = %s AND version = %s",
                        (e, r, v),
                    ).fetchone()
                    return (int(row[0]), _Files(bytes(row[1]), bytes(row[2]))) if row else None

                row = await self.db.run(one, abandon_on_cancel=True)
                if row is None:  # pruned since listed: newer versions were saved meanwhile
                    raise Unavailable("wallet files changed during the export; run it again")
                epoch, files = row
                entry = {
                    "escrow_id": escrow_id,
                    "role": role,
                    "version": version,
                    "epoch": epoch,
                    "keys": {"file": f"{n:06d}.keys", "sha256": files.digests[0].hex()},
                    "cache": {"file": f"{n:06d}.cache", "sha256": files.digests[1].hex()},
                }
                await trio.to_thread.run_sync(_write_export_files, tmp, entry, files)
                entries.append(entry)
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "wallets": entries}
            data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
            await trio.to_thread.run_sync(_write_file, tmp / MANIFEST, data)
            await trio.to_thread.run_sync(_rename_dir, tmp, directory)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: shutil.rmtree(tmp, ignore_errors=True))
            raise
        log.info("wallet files exported", wallets=len(entries))
        return len(entries)

    async def import_all(self, directory: Path, *, replace: bool = False) -> ImportSummary:
        """Import an export: every file's digest is checked first (any problem refuses the whole
        import, `ImportRefused`, nothing written); then each wallet becomes a new version.

        Not fenced by a tenure: an import is an operator's offline action (restoring a lost
        database, seeding a new cluster), made by no lease holder. It locks the escrow's lease
        row, if any, so it is serialised with hosts' fenced saves, and records the lease's current
        epoch (0 if never leased), so a later save by the current owner stacks on top as usual.

        A wallet whose latest version already has these bytes is skipped. One whose latest
        version has *other* bytes is a conflict: in a running cluster the database's copy comes
        from the owner's last store and is newer than any offline copy, so it is left as it is
        and named in the summary, unless `replace` (an operator who knows the database's copy is
        the bad one) adds the offline copy as the newest version (older ones stay, within keep).
        """
        checked = await trio.to_thread.run_sync(_check_export, directory)
        imported = identical = 0
        conflicts: list[str] = []
        for entry, files in checked:
            escrow_id, role = entry["escrow_id"], entry["role"]
            outcome = await self.db.run(self._import_job(escrow_id, role, files, replace))
            if outcome == "imported":
                imported += 1
            elif outcome == "identical":
                identical += 1
            else:
                conflicts.append(f"{escrow_id}/{role}")
        summary = ImportSummary(imported, identical, tuple(conflicts))
        log.info(
            "wallet files imported",
            imported=imported,
            identical=identical,
            conflicts=len(conflicts),
        )
        return summary

    def _import_job(
        self, escrow_id: str, role: str, files: _Files, replace: bool
    ) -> Callable[[Connection], str]:
        keep = self.keep

        def job(conn: Connection) -> str:
            lease = conn.execute(
                "SELECT epoch FROM leases WHERE escrow_id = %s FOR UPDATE", (escrow_id,)
            ).fetchone()
            epoch = int(lease[0]) if lease else 0
            latest = conn.execute(_LATEST, (escrow_id, role)).fetchone()
            if latest is not None and latest[3] is None:  # abandoned files are no conflict
                if (bytes(latest[1]), bytes(latest[2])) == files.digests:
                    return "identical"
                if not replace:
                    return "conflict"
            version = (int(latest[0]) if latest else 0) + 1
            _insert(conn, escrow_id, role, version, epoch, files, keep)
            return "imported"

        return job


# ---- database helpers (in the caller's transaction) ------------------------------------------

# The newest row of a wallet, abandoned or not: new versions number on after every row (the
# primary key), and an abandoned newest row is never "the same files" as a save.
_LATEST = (
    "SELECT version, sha256(keys), sha256(cache), abandoned_at FROM wallet_files"
    " WHERE escrow_id = %s AND role = %s ORDER BY version DESC LIMIT 1"
)


def _same_live(latest: tuple[Any, ...] | None, digests: tuple[bytes, bytes]) -> bool:
    """Whether the newest row (`_LATEST`) is a live version holding these files."""
    return (
        latest is not None and latest[3] is None and (bytes(latest[1]), bytes(latest[2])) == digests
    )


def abandon_wallet_files(conn: Connection, escrow_id: str) -> int:
    """Mark every kept version of the escrow's wallets abandoned (its creation was undone):
    never restored, exported or repaired from again, but kept until newer saves of a later
    escrow with this id push them out. Returns how many rows were marked."""
    cursor = conn.execute(
        "UPDATE wallet_files SET abandoned_at = cluster_now()"
        " WHERE escrow_id = %s AND abandoned_at IS NULL",
        (escrow_id,),
    )
    return cursor.rowcount


def _insert(
    conn: Connection, escrow_id: str, role: str, version: int, epoch: int, files: _Files, keep: int
) -> None:
    conn.execute(
        "INSERT INTO wallet_files (escrow_id, role, version, epoch, keys, cache, stored_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, cluster_now())",
        (escrow_id, role, version, epoch, files.keys, files.cache),
    )
    conn.execute(
        "DELETE FROM wallet_files WHERE escrow_id = %s AND role = %s AND version NOT IN"
        " (SELECT version FROM wallet_files WHERE escrow_id = %s AND role = %s"
        "  ORDER BY version DESC LIMIT %s)",
        (escrow_id, role, escrow_id, role, keep),
    )


# ---- file helpers (run in worker threads) -----------------------------------------------------


def _read(wallet_dir: Path, filename: str) -> _Files | None:
    keys, cache = _paths(wallet_dir, filename)
    try:
        return _Files(keys.read_bytes(), cache.read_bytes())
    except FileNotFoundError:
        return None


def _digests(wallet_dir: Path, filename: str) -> tuple[bytes, bytes] | None:
    """The local files' digests; None if either is missing."""
    files = _read(wallet_dir, filename)
    return files.digests if files is not None else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write a new file, 0600, fsynced (not atomic: for files in a directory built aside)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a temporary file in the same directory, fsync, rename, fsync
    the directory. Readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{time.time_ns()}.restore-tmp")
    try:
        _write_file(tmp, data)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _replace(
    wallet_dir: Path, filename: str, files: _Files, keep_aside: bool, keep: int
) -> Path | None:
    """Write `files` over the local wallet files; first keep the local ones aside if asked.

    The local files are hard-linked into the aside directory (copied where links fail), so the
    wallet's own names always name a whole file. Keys are written first: a crash between the two
    renames leaves a mixed pair, which the next restore finds different and writes again."""
    keys_path, cache_path = _paths(wallet_dir, filename)
    aside: Path | None = None
    if keep_aside and (keys_path.exists() or cache_path.exists()):
        root = wallet_dir / REPLACED_DIR
        _make_private_dir(root, exist_ok=True)
        aside = root / f"{filename}.{time.time_ns()}"
        _make_private_dir(aside)
        for path in (keys_path, cache_path):
            if path.exists():
                try:
                    os.link(path, aside / path.name)
                except OSError:
                    shutil.copy2(path, aside / path.name)
        _fsync_dir(aside)
        _prune_aside(root, filename, keep)
    local = _read(wallet_dir, filename)
    if local is None or local.keys != files.keys:
        _write_atomic(keys_path, files.keys)
    if local is None or local.cache != files.cache:
        _write_atomic(cache_path, files.cache)
    return aside


def _prune_aside(root: Path, filename: str, keep: int) -> None:
    prefix = f"{filename}."
    sets = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix)]
    sets = [p for p in sets if p.name[len(prefix) :].isdigit()]
    sets.sort(key=lambda p: int(p.name[len(prefix) :]))
    for old in sets[:-keep]:
        shutil.rmtree(old)


def _make_private_dir(path: Path, *, exist_ok: bool = False) -> None:
    path.mkdir(mode=0o700, exist_ok=exist_ok)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def _write_export_files(directory: Path, entry: dict[str, Any], files: _Files) -> None:
    _write_file(directory / entry["keys"]["file"], files.keys)
    _write_file(directory / entry["cache"]["file"], files.cache)


def _rename_dir(tmp: Path, directory: Path) -> None:
    _fsync_dir(tmp)
    if directory.exists():
        raise ExportRefused(f"{directory} appeared during the export")
    os.rename(tmp, directory)
    _fsync_dir(directory.parent)


def _export_dirs(directory: Path) -> tuple[Path, Path]:
    """(the target, the new private directory the export is built in, beside it)."""
    directory = directory.absolute()
    if directory.exists():
        raise ExportRefused(f"{directory} exists: an export goes into a new directory")
    tmp = directory.with_name(f".{directory.name}.{time.time_ns()}.tmp")
    _make_private_dir(tmp)
    return directory, tmp


def _check_export(directory: Path) -> list[tuple[dict[str, Any], _Files]]:
    """Read and check a whole export; ImportRefused listing every problem found, if any."""
    directory = directory.absolute()
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImportRefused(f"{directory}: no readable {MANIFEST} ({exc})") from exc
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("format_version") != FORMAT_VERSION
        or not isinstance(manifest.get("wallets"), list)
    ):
        raise ImportRefused(f"{directory}: {MANIFEST} is not a walletd wallet-files export (v1)")
    problems: list[str] = []
    checked: list[tuple[dict[str, Any], _Files]] = []
    seen: set[tuple[str, str]] = set()
    for n, entry in enumerate(manifest["wallets"]):
        where = f"wallet #{n}"
        try:
            escrow_id, role = entry["escrow_id"], entry["role"]
            names = [entry[part]["file"] for part in ("keys", "cache")]
            wanted = [entry[part]["sha256"] for part in ("keys", "cache")]
        except (KeyError, TypeError):
            problems.append(f"{where}: incomplete manifest entry")
            continue
        where = f"{escrow_id}/{role}"
        try:
            check_escrow_id(escrow_id)
        except InvalidRequest:
            problems.append(f"{where}: bad escrow id")
            continue
        if role not in ROLES:
            problems.append(f"{where}: bad role")
            continue
        if (escrow_id, role) in seen:
            problems.append(f"{where}: listed twice")
            continue
        seen.add((escrow_id, role))
        if any(not isinstance(name, str) or "/" in name or name.startswith(".") for name in names):
            problems.append(f"{where}: bad file name in the manifest")
            continue
        try:
            files = _Files(*((directory / name).read_bytes() for name in names))
        except OSError as exc:
            problems.append(f"{where}: {exc.strerror}: {exc.filename}")
            continue
        for part, got, want in zip(("keys", "cache"), files.digests, wanted, strict=True):
            if got.hex() != want:
                problems.append(f"{where}: {part} file does not match its sha256")
        checked.append((entry, files))
    if problems:
        shown = "; ".join(problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        raise ImportRefused(f"import refused, nothing written: {shown}")
    return checked
