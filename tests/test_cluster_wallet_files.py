"""Wallet files off the host, against a real PostgreSQL: save under the lease, restore before
opening, export and import for an offline backup. Small fake byte files stand in for wallets."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from tests.pgtest import advance_db_clock, fresh_database, url_of
from walletd.cli.daemon import main
from walletd.cluster.db import Connection, Database
from walletd.cluster.leases import Leases, Tenure
from walletd.cluster.migrations import migrate
from walletd.cluster.wallet_files import MANIFEST, WalletFiles, abandon_wallet_files
from walletd.errors import ExportRefused, Fenced, ImportRefused, WalletFilesMissing
from walletd.ops import logs

pytestmark = pytest.mark.pg

TTL = 10.0
NAME = "escrow-e1-buyer"


async def _open(url: str) -> Database:
    database = Database(url)
    await database.open()
    await migrate(database)
    return database


def _write(wallet_dir: Path, keys: bytes, cache: bytes, name: str = NAME) -> None:
    wallet_dir.mkdir(mode=0o700, exist_ok=True)
    (wallet_dir / f"{name}.keys").write_bytes(keys)
    (wallet_dir / name).write_bytes(cache)


def _files(wallet_dir: Path, name: str = NAME) -> tuple[bytes, bytes]:
    return (wallet_dir / f"{name}.keys").read_bytes(), (wallet_dir / name).read_bytes()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _versions(db: Database, escrow_id: str = "e1", role: str = "buyer") -> list[int]:
    def job(conn: Connection) -> list[int]:
        rows = conn.execute(
            "SELECT version FROM wallet_files WHERE escrow_id = %s AND role = %s ORDER BY version",
            (escrow_id, role),
        ).fetchall()
        return [int(r[0]) for r in rows]

    return await db.run(job)


async def _tenure(leases: Leases, escrow_id: str = "e1", host: str = "A") -> Tenure:
    tenure = await leases.acquire(escrow_id, host)
    assert tenure is not None
    return tenure


async def test_save_then_restore_on_another_host(db: Database, tmp_path: Path) -> None:
    """Files saved by one host come back byte for byte on a host with an empty wallet directory,
    readable by walletd's user only (0600)."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    keys, cache = os.urandom(1500), os.urandom(70_000)
    _write(a_dir, keys, cache)
    assert await files.save(await _tenure(leases), "buyer", a_dir, NAME) == 1
    assert await files.restore("e1", "vendor", b_dir, NAME) is None  # no version of that role
    b_dir.mkdir(mode=0o700)
    assert await files.restore("e1", "buyer", b_dir, NAME) == 1
    assert _files(b_dir) == (keys, cache)
    assert _mode(b_dir / f"{NAME}.keys") == _mode(b_dir / NAME) == 0o600
    assert sorted(p.name for p in b_dir.iterdir()) == [NAME, f"{NAME}.keys"]  # no temp left


async def test_unchanged_save_writes_no_version(db: Database, tmp_path: Path) -> None:
    """Saving files identical to the latest version writes nothing; a change in either file
    (here only the cache) makes the next version."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    tenure = await _tenure(leases)
    _write(tmp_path, b"keys", b"cache-1")
    assert await files.save(tenure, "buyer", tmp_path, NAME) == 1
    assert await files.save(tenure, "buyer", tmp_path, NAME) is None
    _write(tmp_path, b"keys", b"cache-2")
    assert await files.save(tenure, "buyer", tmp_path, NAME) == 2
    assert await _versions(db) == [1, 2]


async def test_only_the_last_versions_are_kept(db: Database, tmp_path: Path) -> None:
    """Each save prunes to the newest `keep` versions of that wallet, and only of that wallet."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases, keep=3)
    tenure = await _tenure(leases)
    _write(tmp_path, b"vendor-keys", b"vendor-cache", "v")
    await files.save(tenure, "vendor", tmp_path, "v")
    for n in range(1, 8):
        _write(tmp_path, b"keys", f"cache-{n}".encode())
        assert await files.save(tenure, "buyer", tmp_path, NAME) == n
    assert await _versions(db) == [5, 6, 7]
    assert await _versions(db, role="vendor") == [1]


async def test_stale_tenure_save_is_refused(db: Database, db_url: str, tmp_path: Path) -> None:
    """A host whose lease expired and was taken over cannot save: Fenced, and no version is
    written; the new owner saves with its own epoch on top of the old owner's versions."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    old = await _tenure(leases, host="A")
    _write(tmp_path, b"keys", b"cache-1")
    assert await files.save(old, "buyer", tmp_path, NAME) == 1
    advance_db_clock(db_url, TTL + 1)
    _write(tmp_path, b"keys", b"cache-stale")
    with pytest.raises(Fenced):  # expired, not yet taken
        await files.save(old, "buyer", tmp_path, NAME)
    new = await _tenure(leases, host="B")
    with pytest.raises(Fenced):  # taken over
        await files.save(old, "buyer", tmp_path, NAME)
    assert await _versions(db) == [1]
    _write(tmp_path, b"keys", b"cache-2")
    assert await files.save(new, "buyer", tmp_path, NAME) == 2

    def epochs(conn: Connection) -> list[int]:
        return [int(r[0]) for r in conn.execute("SELECT epoch FROM wallet_files ORDER BY version")]

    assert await db.run(epochs) == [old.epoch, new.epoch]


async def test_save_of_missing_files_is_refused(db: Database, tmp_path: Path) -> None:
    """A wallet whose cache is missing after a store is not saved half: a clear error."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    (tmp_path / f"{NAME}.keys").write_bytes(b"keys")
    with pytest.raises(WalletFilesMissing):
        await files.save(await _tenure(leases), "buyer", tmp_path, NAME)
    assert await _versions(db) == []


async def test_restore_repairs_and_leaves_identical_files(db: Database, tmp_path: Path) -> None:
    """Restore leaves identical local files untouched (same mtime), replaces a damaged cache,
    writes back a missing keys file, and keeps local files the database never had aside."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    tenure = await _tenure(leases)
    wallets = tmp_path / "w"
    _write(wallets, b"keys-1", b"cache-1")
    assert await files.save(tenure, "buyer", wallets, NAME) == 1
    _write(wallets, b"keys-1", b"cache-2")
    assert await files.save(tenure, "buyer", wallets, NAME) == 2
    before = [os.stat(wallets / n).st_mtime_ns for n in (NAME, f"{NAME}.keys")]
    assert await files.restore("e1", "buyer", wallets, NAME) == 2
    assert [os.stat(wallets / n).st_mtime_ns for n in (NAME, f"{NAME}.keys")] == before

    # An older stored version locally (a host that owned the escrow before): replaced, and not
    # kept aside, since the database has it.
    _write(wallets, b"keys-1", b"cache-1")
    assert await files.restore("e1", "buyer", wallets, NAME) == 2
    assert _files(wallets) == (b"keys-1", b"cache-2")
    assert not (wallets / ".replaced").exists()

    # A damaged cache and a missing keys file.
    (wallets / NAME).write_bytes(b"garbage")
    (wallets / f"{NAME}.keys").unlink()
    assert await files.restore("e1", "buyer", wallets, NAME) == 2
    assert _files(wallets) == (b"keys-1", b"cache-2")
    assert _mode(wallets / f"{NAME}.keys") == _mode(wallets / NAME) == 0o600
    [kept] = (wallets / ".replaced").iterdir()  # the garbage: unknown to the database, kept
    assert (kept / NAME).read_bytes() == b"garbage"


async def test_restore_without_a_stored_version_leaves_local_files(
    db: Database, tmp_path: Path
) -> None:
    """Local files of an escrow the database has no version of (a one-host escrow, or one not
    yet saved) are left exactly as they are."""
    files = WalletFiles(db, Leases(db, TTL))
    _write(tmp_path, b"keys", b"cache")
    assert await files.restore("e1", "buyer", tmp_path, NAME) is None
    assert _files(tmp_path) == (b"keys", b"cache")


async def test_abandoned_versions_are_never_restored_exported_or_repaired_from(
    db: Database, tmp_path: Path
) -> None:
    """Once an escrow's versions are marked abandoned (its creation undone), restore leaves the
    local files of a later escrow with that id alone, an export leaves them out, a repair is
    offered none of them, and the same bytes saved again become a live version numbered after
    them."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    tenure = await _tenure(leases)
    wallets = tmp_path / "w"
    _write(wallets, b"abandoned keys", b"abandoned cache")
    assert await files.save(tenure, "buyer", wallets, NAME) == 1

    def abandon(conn: Connection) -> int:
        return abandon_wallet_files(conn, "e1")

    assert await db.run(abandon) == 1
    _write(wallets, b"adopted keys", b"adopted cache")
    assert await files.restore("e1", "buyer", wallets, NAME) is None
    assert _files(wallets) == (b"adopted keys", b"adopted cache")
    assert await files.kept_versions("e1", "buyer", wallets, NAME) == []
    assert await files.export_all(tmp_path / "export") == 0
    _write(wallets, b"abandoned keys", b"abandoned cache")
    assert await files.save(tenure, "buyer", wallets, NAME) == 2
    assert await files.kept_versions("e1", "buyer", tmp_path / "none", NAME) == [2]


async def test_export_then_import_into_a_fresh_database(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    """An export holds the latest version of every wallet (0700 directory, 0600 files); imported
    into a fresh database it restores the same bytes; importing it again adds nothing."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    wallets = tmp_path / "w"
    for escrow_id in ("e1", "e2"):
        tenure = await _tenure(leases, escrow_id)
        for role in ("buyer", "vendor", "arbiter"):
            name = f"escrow-{escrow_id}-{role}"
            _write(wallets, f"k-{name}".encode(), b"old", name)
            await files.save(tenure, role, wallets, name)
            _write(wallets, f"k-{name}".encode(), f"c-{name}".encode(), name)
            await files.save(tenure, role, wallets, name)
    backup = tmp_path / "backup"
    assert await files.export_all(backup) == 6
    assert _mode(backup) == 0o700
    assert all(_mode(p) == 0o600 for p in backup.iterdir())
    manifest = json.loads((backup / MANIFEST).read_text())
    assert {(w["escrow_id"], w["role"], w["version"]) for w in manifest["wallets"]} == {
        (e, r, 2) for e in ("e1", "e2") for r in ("buyer", "vendor", "arbiter")
    }
    with pytest.raises(ExportRefused):  # never into an existing directory
        await files.export_all(backup)

    with fresh_database() as other_url:
        other = await _open(other_url)
        try:
            other_files = WalletFiles(other, Leases(other, TTL))
            summary = await other_files.import_all(backup)
            assert (summary.imported, summary.identical, summary.conflicts) == (6, 0, ())
            again = await other_files.import_all(backup)
            assert (again.imported, again.identical) == (0, 6)
            restored = tmp_path / "restored"
            restored.mkdir(mode=0o700)
            for escrow_id in ("e1", "e2"):
                for role in ("buyer", "vendor", "arbiter"):
                    name = f"escrow-{escrow_id}-{role}"
                    assert await other_files.restore(escrow_id, role, restored, name) == 1
                    assert _files(restored, name) == _files(wallets, name)
        finally:
            await other.close()


async def test_tampered_export_is_refused_whole(db: Database, tmp_path: Path) -> None:
    """If any file of an export does not match its digest, the import writes nothing at all and
    names the wallet."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    for escrow_id in ("e1", "e2"):
        _write(tmp_path / "w", b"keys", f"cache-{escrow_id}".encode(), escrow_id)
        await files.save(await _tenure(leases, escrow_id), "buyer", tmp_path / "w", escrow_id)
    backup = tmp_path / "backup"
    await files.export_all(backup)
    manifest = json.loads((backup / MANIFEST).read_text())
    tampered = next(w for w in manifest["wallets"] if w["escrow_id"] == "e2")
    (backup / tampered["cache"]["file"]).write_bytes(b"evil")

    def wipe(conn: Connection) -> None:
        conn.execute("DELETE FROM wallet_files")

    await db.run(wipe)
    with pytest.raises(ImportRefused, match="e2/buyer: cache file does not match"):
        await files.import_all(backup)
    assert await _versions(db, "e1") == []


async def test_import_does_not_roll_back_newer_database_files(db: Database, tmp_path: Path) -> None:
    """An offline copy older than the database's latest files is not put on top of them (a
    conflict, named) unless the operator asks to replace; the lease's epoch is recorded."""
    leases = Leases(db, TTL)
    files = WalletFiles(db, leases)
    tenure = await _tenure(leases)
    _write(tmp_path, b"keys", b"cache-1")
    await files.save(tenure, "buyer", tmp_path, NAME)
    backup = tmp_path / "backup"
    await files.export_all(backup)
    _write(tmp_path, b"keys", b"cache-2")
    await files.save(tenure, "buyer", tmp_path, NAME)
    summary = await files.import_all(backup)
    assert (summary.imported, summary.conflicts) == (0, ("e1/buyer",))
    assert await _versions(db) == [1, 2]
    summary = await files.import_all(backup, replace=True)
    assert summary.imported == 1
    assert await _versions(db) == [1, 2, 3]
    assert await files.restore("e1", "buyer", tmp_path, NAME) == 3
    assert _files(tmp_path) == (b"keys", b"cache-1")


@pytest.fixture
def cli_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI configures logging for the process: put it back for the tests that follow.

    Its loggers must not be cached meanwhile: a module's logger first used here would stay
    bound to this test's captured stderr, closed afterwards, and a later test logging through
    it (a wallet save, in any test after this file) would fail on the closed file."""
    monkeypatch.setattr(logs, "_threshold", logs._threshold)
    configure = structlog.configure

    def uncached(**settings: Any) -> None:
        configure(**{**settings, "cache_logger_on_first_use": False})

    monkeypatch.setattr(structlog, "configure", uncached)
    saved = structlog.get_config()
    try:
        yield
    finally:
        configure(**saved)


def _config(path: Path, url: str) -> Path:
    path.write_text(f'[cluster]\ndatabase_url = "{url}"\nhost_id = "h1"\n')
    return path


@pytest.mark.usefixtures("cli_logging")
def test_cli_export_then_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`walletd --config C cluster export DIR` and `walletd cluster import DIR --config C` each
    print one line of counts and never the database URL; a tampered export exits 1 with a clear
    line and imports nothing."""
    wallets = tmp_path / "w"

    async def seed(url: str) -> None:
        db = await _open(url)
        try:
            leases = Leases(db, TTL)
            files = WalletFiles(db, leases)
            for escrow_id in ("e1", "e2"):
                _write(wallets, b"keys", f"cache-{escrow_id}".encode(), escrow_id)
                await files.save(await _tenure(leases, escrow_id), "buyer", wallets, escrow_id)
        finally:
            await db.close()

    backup = tmp_path / "backup"
    with fresh_database() as source:
        url = url_of(source)
        trio.run(seed, source)
        capsys.readouterr()  # the seeding's log lines
        config = _config(tmp_path / "a.toml", url)
        assert main(["--config", str(config), "cluster", "export", str(backup)]) == 0
    out, err = capsys.readouterr()
    assert out == f"exported 2 wallets to {backup}\n"
    assert url not in out + err
    with fresh_database() as target:
        url = url_of(target)
        config = _config(tmp_path / "b.toml", url)
        assert main(["cluster", "import", str(backup), "--config", str(config)]) == 0
        out, err = capsys.readouterr()
        assert out == "imported 2 wallets, 0 already identical, 0 conflicts\n"
        assert url not in out + err
        manifest = json.loads((backup / MANIFEST).read_text())
        (backup / manifest["wallets"][0]["keys"]["file"]).write_bytes(b"tampered")
        assert main(["cluster", "import", str(backup), "--config", str(config)]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert "import refused, nothing written: e1/buyer: keys file" in err
        assert url not in err


@pytest.mark.usefixtures("cli_logging")
def test_cli_needs_a_cluster_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without [cluster] the cluster commands exit 2 saying so (there is no database to use)."""
    config = tmp_path / "c.toml"
    config.write_text("")
    assert main(["--config", str(config), "cluster", "export", str(tmp_path / "x")]) == 2
    assert "no [cluster] section" in capsys.readouterr().err
