"""Durable state: escrows, payouts and the event log in one SQLite database in the state directory.

WAL journal with synchronous=FULL: a payout intent that was committed survives a power cut, and a
crash mid-write leaves the previous state. Every change is one transaction. The schema carries a
version and `_MIGRATIONS` brings an older database forward at start-up.

Calls are synchronous on purpose: each is a few hundred microseconds on a small local database, and
running them inline keeps each read-modify-write atomic with respect to other trio tasks.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from walletd.ids import ROLES, Role

__all__ = [
    "SCHEMA_VERSION",
    "EscrowRecord",
    "EventRecord",
    "NewEvent",
    "Store",
    "WalletRef",
    "utcnow",
]

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE escrows (
        escrow_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        amount INTEGER NOT NULL,
        required_confirmations INTEGER NOT NULL,
        multisig_address TEXT,
        origin TEXT NOT NULL,
        wallets TEXT NOT NULL,
        request_digest TEXT NOT NULL,
        funding TEXT NOT NULL,
        payout TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX escrows_state ON escrows(state);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        escrow_id TEXT,
        at TEXT NOT NULL,
        data TEXT NOT NULL
    );
    """,
}


def utcnow() -> str:
    """Now as an RFC 3339 UTC string with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen
class WalletRef:
    """Where one role's wallet lives and how to get its password (never the password itself)."""

    file: str
    sealed_password: str | None = attrs.field(default=None, repr=False)  # adopted wallets only


@attrs.frozen
class EscrowRecord:
    escrow_id: str
    state: str
    amount: int
    required_confirmations: int
    multisig_address: str | None
    origin: str  # "created" or "adopted"
    wallets: Mapping[Role, WalletRef]
    request_digest: str
    funding: Mapping[str, Any]
    payout: Mapping[str, Any] | None
    created_at: str
    updated_at: str


@attrs.frozen
class EventRecord:
    seq: int
    type: str
    escrow_id: str | None
    at: str
    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "escrow_id": self.escrow_id,
            "at": self.at,
            **self.data,
        }


NewEvent = tuple[str, Mapping[str, Any]]  # (type, data) of an event to append with a change


def _wallets_to_json(wallets: Mapping[Role, WalletRef]) -> str:
    return json.dumps(
        {r: {"file": w.file, "sealed_password": w.sealed_password} for r, w in wallets.items()}
    )


def _wallets_from_json(text: str) -> dict[Role, WalletRef]:
    raw = json.loads(text)
    return {r: WalletRef(raw[r]["file"], raw[r].get("sealed_password")) for r in ROLES}


def _record(row: sqlite3.Row) -> EscrowRecord:
    return EscrowRecord(
        escrow_id=row["escrow_id"],
        state=row["state"],
        amount=row["amount"],
        required_confirmations=row["required_confirmations"],
        multisig_address=row["multisig_address"],
        origin=row["origin"],
        wallets=_wallets_from_json(row["wallets"]),
        request_digest=row["request_digest"],
        funding=json.loads(row["funding"]),
        payout=json.loads(row["payout"]) if row["payout"] else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this walletd "
                f"({SCHEMA_VERSION}); refusing to touch it"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx() as db:
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # ---- escrows ---------------------------------------------------------------------------------

    def insert_escrow(
        self, rec: EscrowRecord, events: Sequence[NewEvent] = ()
    ) -> list[EventRecord]:
        """Record a new escrow and its events in one transaction: both or neither."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO escrows VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.escrow_id,
                    rec.state,
                    rec.amount,
                    rec.required_confirmations,
                    rec.multisig_address,
                    rec.origin,
                    _wallets_to_json(rec.wallets),
                    rec.request_digest,
                    json.dumps(dict(rec.funding)),
                    json.dumps(dict(rec.payout)) if rec.payout is not None else None,
                    rec.created_at,
                    rec.updated_at,
                ),
            )
            return [_insert_event(db, t, rec.escrow_id, d) for t, d in events]

    def get_escrow(self, escrow_id: str) -> EscrowRecord | None:
        row = self._db.execute("SELECT * FROM escrows WHERE escrow_id = ?", (escrow_id,)).fetchone()
        return _record(row) if row else None

    def escrow_state(self, escrow_id: str) -> str | None:
        """The escrow's state alone (None if there is no such escrow): cheaper than the record."""
        row = self._db.execute(
            "SELECT state FROM escrows WHERE escrow_id = ?", (escrow_id,)
        ).fetchone()
        return row[0] if row else None

    def list_escrows(self, state: str | None = None) -> list[EscrowRecord]:
        if state is None:
            rows = self._db.execute("SELECT * FROM escrows ORDER BY created_at, escrow_id")
        else:
            rows = self._db.execute(
                "SELECT * FROM escrows WHERE state = ? ORDER BY created_at, escrow_id", (state,)
            )
        return [_record(r) for r in rows]

    def count_escrows(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM escrows").fetchone()[0])

    def wallet_files_in_use(self, *, except_escrow: str | None = None) -> set[str]:
        """The wallet files every recorded escrow (`creating` ones too) names, but
        `except_escrow`'s own."""
        files: set[str] = set()
        rows = self._db.execute(
            "SELECT wallets FROM escrows WHERE escrow_id IS NOT ?", (except_escrow,)
        )
        for (text,) in rows:
            files.update(w.file for w in _wallets_from_json(text).values())
        return files

    def escrow_with_address(self, address: str) -> str | None:
        """The escrow recorded with this multisig address, if any. A full scan: it runs once
        per creation or adoption, never on the read path, so it needs no index (nor migration)."""
        row = self._db.execute(
            "SELECT escrow_id FROM escrows WHERE multisig_address = ? LIMIT 1", (address,)
        ).fetchone()
        return row[0] if row else None

    def update_escrow(self, escrow_id: str, **changes: Any) -> EscrowRecord:
        """Change some columns of one escrow in one transaction and return the new record."""
        return self.change_escrow(escrow_id, changes)[0]

    def change_escrow(
        self, escrow_id: str, changes: Mapping[str, Any], events: Sequence[NewEvent] = ()
    ) -> tuple[EscrowRecord, list[EventRecord]]:
        """Change some columns of one escrow and append its events in one transaction, so a
        crash can never keep a state change whose event the server would then never see."""
        allowed = {"state", "multisig_address", "funding", "payout"}
        if not changes or set(changes) - allowed:
            raise ValueError(f"cannot update {sorted(set(changes) - allowed)}")
        cols, values = [], []
        for key, value in changes.items():
            cols.append(f"{key} = ?")
            values.append(json.dumps(dict(value)) if isinstance(value, Mapping) else value)
        cols.append("updated_at = ?")
        values.append(utcnow())
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE escrows SET {', '.join(cols)} WHERE escrow_id = ?",  # noqa: S608 - column names are fixed above
                (*values, escrow_id),
            )
            if cur.rowcount != 1:
                raise KeyError(escrow_id)
            appended = [_insert_event(db, t, escrow_id, d) for t, d in events]
        rec = self.get_escrow(escrow_id)
        if rec is None:
            raise KeyError(escrow_id)
        return rec, appended

    def delete_escrow(self, escrow_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM escrows WHERE escrow_id = ?", (escrow_id,))

    # ---- events ----------------------------------------------------------------------------------

    def append_event(
        self, type_: str, escrow_id: str | None, data: Mapping[str, Any]
    ) -> EventRecord:
        with self._tx() as db:
            return _insert_event(db, type_, escrow_id, data)

    def events_after(self, seq: int, limit: int = 500) -> list[EventRecord]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return [
            EventRecord(r["seq"], r["type"], r["escrow_id"], r["at"], json.loads(r["data"]))
            for r in rows
        ]

    def last_event_seq(self) -> int:
        row = self._db.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)


def _insert_event(
    db: sqlite3.Connection, type_: str, escrow_id: str | None, data: Mapping[str, Any]
) -> EventRecord:
    at = utcnow()
    cur = db.execute(
        "INSERT INTO events (type, escrow_id, at, data) VALUES (?,?,?,?)",
        (type_, escrow_id, at, json.dumps(dict(data))),
    )
    return EventRecord(int(cur.lastrowid or 0), type_, escrow_id, at, dict(data))
