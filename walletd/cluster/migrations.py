"""Versioned schema migrations, applied at start-up: `sql/NNNN_name.sql` in order, once each.

`schema_version` records each applied version. Every migration runs in its own transaction under a
transaction-level advisory lock, so hosts starting together apply each one exactly once, and a
failed migration leaves the database at the previous version.
"""

from __future__ import annotations

import re
from importlib import resources

import attrs

from walletd.cluster.db import Connection, Database

__all__ = ["Migration", "migrate", "migrations"]

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x77616C6C  # pg_advisory_xact_lock key for migrations ("wall")


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The package's migrations, ordered by version (numbered from 1 without gaps)."""
    found = []
    for entry in resources.files("walletd.cluster").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"cluster migrations must be numbered 1..n: {[m.name for m in found]}")
    return found


def _current(conn: Connection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version"
        " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
    )
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


async def migrate(db: Database) -> int:
    """Apply the migrations this database lacks; return its schema version afterwards.

    A database newer than this walletd (a version we do not know) is refused: running old code on
    a newer schema could write what the newer code no longer expects.
    """
    known = migrations()
    for migration in known:

        def apply(conn: Connection, m: Migration = migration) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            current = _current(conn)
            if current > len(known):
                raise RuntimeError(
                    f"cluster database schema is version {current}, newer than this walletd"
                    f" ({len(known)}): upgrade walletd"
                )
            if current >= m.version:
                return  # applied earlier, or by another host that held the lock first
            conn.execute(m.sql.encode())  # no parameters: a multi-statement script
            conn.execute("INSERT INTO schema_version VALUES (%s, %s, now())", (m.version, m.name))

        await db.run(apply)
    return await db.run(_current)
