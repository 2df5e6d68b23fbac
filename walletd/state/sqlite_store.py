"""One host's state store: escrows, payouts and the event log in one SQLite database in the state
directory. `Store` is the database; `LocalState` is the `walletd.state.store.StateStore` over it
(the cluster's counterpart: `walletd.cluster.postgres_store`).

WAL journal with synchronous=FULL: a payout intent that was committed survives a power cut, and a
crash mid-write leaves the previous state. Every change is one transaction. The schema carries a
version and `_MIGRATIONS` brings an older database forward at start-up.

Calls are synchronous on purpose: each is a few hundred microseconds on a small local database, and
running them inline keeps each read-modify-write atomic with respect to other trio tasks. The
price is that a call must never wait long, so the busy timeout is `BUSY_TIMEOUT` (half a second,
not Python's default 5 s): walletd is the only writer, so the lock is busy only when another
process holds it (an operator's sqlite3 shell, a backup tool), and then one operation fails fast
and is retried rather than every session and API call freezing behind it. Moving the calls to a
worker thread would unfreeze the loop too, but every caller would then await the store and lose
the atomicity above, and sqlite3 connections must stay on one thread: a bounded wait is simpler
and sound.

A database that cannot be read or written (disk full, I/O error, locked) raises
`StoreUnavailable`, an `Unavailable` (503) that names the database: callers fail the one operation
and try again later, and background tasks catch it rather than die. The store remembers the last
failure until a write succeeds (`failure`, `probe`), so /v1/health can say writes are failing.
A transaction that fails anywhere, COMMIT included, is rolled back if SQLite has not already done
so: the connection is never left inside a half transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar, Unpack

import structlog

from walletd.errors import StoreUnavailable
from walletd.escrows.model import EscrowRecord, EscrowState, PayoutProof, utcnow
from walletd.jsontypes import JsonMapping
from walletd.state.columns import funding_from_json as _funding_from_json
from walletd.state.columns import funding_to_json as _funding_to_json
from walletd.state.columns import payout_from_json as _payout_from_json
from walletd.state.columns import payout_to_json as _payout_to_json
from walletd.state.columns import wallets_from_json as _wallets_from_json
from walletd.state.columns import wallets_to_json as _wallets_to_json
from walletd.state.store import (
    EscrowChanges,
    EventRecord,
    NewEvent,
    changed_columns,
)

__all__ = ["SCHEMA_VERSION", "LocalState", "Store"]

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 2
BUSY_TIMEOUT = 0.5  # seconds a statement waits for another process's lock (see module doc)

# Errors about the request itself (a duplicate key, a closed connection): not the database failing.
_CALLER_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


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
    # Beside the payout column, not in it: the escrow record is read, logged and shown
    # everywhere; the transaction key only through the proof endpoint.
    2: """
    CREATE TABLE payout_proofs (
        escrow_id TEXT PRIMARY KEY,
        txid TEXT NOT NULL,
        address TEXT NOT NULL,
        tx_key TEXT NOT NULL,
        proof TEXT NOT NULL,
        stored_at TEXT NOT NULL
    );
    """,
}


def _record(row: sqlite3.Row) -> EscrowRecord:
    return EscrowRecord(
        escrow_id=row["escrow_id"],
        state=EscrowState(row["state"]),
        amount=row["amount"],
        required_confirmations=row["required_confirmations"],
        multisig_address=row["multisig_address"],
        origin=row["origin"],
        wallets=_wallets_from_json(row["wallets"]),
        request_digest=row["request_digest"],
        funding=_funding_from_json(row["funding"]),
        payout=_payout_from_json(row["payout"]) if row["payout"] else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


P = ParamSpec("P")
R = TypeVar("R")


def _read(fn: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """A read whose database failure is a `StoreUnavailable` like a write's."""

    def guarded(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        # try/except, not `with self._guard()`: every warm read does one of these (the escrow's
        # state), and the generator context manager was ~2 us of its ~10 us (measured).
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            if isinstance(exc, _CALLER_ERRORS):
                raise
            raise self._unavailable(exc) from exc

    guarded.__doc__ = fn.__doc__
    return guarded


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors = 0  # database errors since start
        self.failure: str | None = None  # the last error, until a write succeeds again
        self.on_error: Callable[[], None] = lambda: None  # the app counts them in /metrics
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._guard():
            if self._db.in_transaction:  # a rollback that failed earlier: finish it first
                self._rollback()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        self.failure = None

    def _rollback(self) -> None:
        """Roll back unless SQLite already has (it does on a full disk, and a second ROLLBACK
        would then raise and hide the real error)."""
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("database rollback failed", db=str(self.path), error=str(exc))

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn the database failing into `StoreUnavailable`, counted and remembered."""
        try:
            yield
        except sqlite3.Error as exc:
            if isinstance(exc, _CALLER_ERRORS):
                raise
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailable:
        """A database failure (not a caller's mistake) as `StoreUnavailable`, counted,
        remembered and logged."""
        self.errors += 1
        self.failure = str(exc)
        self.on_error()
        log.error("database error", db=str(self.path), error=str(exc))
        return StoreUnavailable(f"database unavailable ({exc}); retry later")

    def probe(self) -> bool:
        """Try a small real write: True (and `failure` cleared) if the database takes it.

        It rewrites the schema version unchanged, which SQLite does write (page 1); an UPDATE
        that changes nothing writes no page at all and would prove nothing. One page may still
        fit where a larger write does not: the next failing write reports the failure again."""
        try:
            with self._tx() as db:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                db.execute(f"PRAGMA user_version = {version}")
        except StoreUnavailable:
            return False
        return True

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
                    rec.state.value,
                    rec.amount,
                    rec.required_confirmations,
                    rec.multisig_address,
                    rec.origin,
                    _wallets_to_json(rec.wallets),
                    rec.request_digest,
                    _funding_to_json(rec.funding),
                    _payout_to_json(rec.payout) if rec.payout is not None else None,
                    rec.created_at,
                    rec.updated_at,
                ),
            )
            return [_insert_event(db, t, rec.escrow_id, d) for t, d in events]

    @_read
    def get_escrow(self, escrow_id: str) -> EscrowRecord | None:
        row = self._db.execute("SELECT * FROM escrows WHERE escrow_id = ?", (escrow_id,)).fetchone()
        return _record(row) if row else None

    @_read
    def escrow_state(self, escrow_id: str) -> EscrowState | None:
        """The escrow's state alone (None if there is no such escrow): cheaper than the record."""
        row = self._db.execute(
            "SELECT state FROM escrows WHERE escrow_id = ?", (escrow_id,)
        ).fetchone()
        return EscrowState(row[0]) if row else None

    @_read
    def list_escrows(self, state: EscrowState | None = None) -> list[EscrowRecord]:
        if state is None:
            rows = self._db.execute("SELECT * FROM escrows ORDER BY created_at, escrow_id")
        else:
            rows = self._db.execute(
                "SELECT * FROM escrows WHERE state = ? ORDER BY created_at, escrow_id",
                (state.value,),
            )
        return [_record(r) for r in rows]

    @_read
    def count_escrows(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM escrows").fetchone()[0])

    @_read
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

    @_read
    def escrow_with_address(self, address: str) -> str | None:
        """The escrow recorded with this multisig address, if any. A full scan: it runs once
        per creation or adoption, never on the read path, so it needs no index (nor migration)."""
        row = self._db.execute(
            "SELECT escrow_id FROM escrows WHERE multisig_address = ? LIMIT 1", (address,)
        ).fetchone()
        return row[0] if row else None

    def update_escrow(self, escrow_id: str, **changes: Unpack[EscrowChanges]) -> EscrowRecord:
        """Change some columns of one escrow in one transaction and return the new record."""
        return self.change_escrow(escrow_id, changes)[0]

    def change_escrow(
        self, escrow_id: str, changes: EscrowChanges, events: Sequence[NewEvent] = ()
    ) -> tuple[EscrowRecord, list[EventRecord]]:
        """Change some columns of one escrow and append its events in one transaction, so a
        crash can never keep a state change whose event the server would then never see.

        A change of state must be one of `EscrowState`'s moves (`IllegalMove` otherwise); a
        change with `expect_payout` is refused (`PayoutChanged`) unless the payout is there."""
        columns = changed_columns(changes)
        cols = [f"{name} = ?" for name in columns]
        values = list(columns.values())
        with self._tx() as db:
            if "state" in changes or "expect_payout" in changes:
                row = db.execute(
                    "SELECT state, payout FROM escrows WHERE escrow_id = ?", (escrow_id,)
                ).fetchone()
                if row is None:
                    raise KeyError(escrow_id)
                if "expect_payout" in changes:
                    recorded = _payout_from_json(row[1]) if row[1] else None
                    changes["expect_payout"].check(escrow_id, recorded)
                if "state" in changes:
                    EscrowState(row[0]).check_move(changes["state"])
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

    # ---- payout proofs ---------------------------------------------------------------------------

    def put_payout_proof(self, escrow_id: str, proof: PayoutProof) -> None:
        """Keep the proof of the escrow's submitted payout (the same payout: same values)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO payout_proofs VALUES (?, ?, ?, ?, ?, ?)",
                (escrow_id, proof.txid, proof.address, proof.tx_key, proof.proof, utcnow()),
            )

    @_read
    def get_payout_proof(self, escrow_id: str) -> PayoutProof | None:
        row = self._db.execute(
            "SELECT txid, address, tx_key, proof FROM payout_proofs WHERE escrow_id = ?",
            (escrow_id,),
        ).fetchone()
        return PayoutProof(*row) if row else None

    # ---- events ----------------------------------------------------------------------------------

    def append_event(self, type_: str, escrow_id: str | None, data: JsonMapping) -> EventRecord:
        with self._tx() as db:
            return _insert_event(db, type_, escrow_id, data)

    @_read
    def events_after(self, seq: int, limit: int = 500) -> list[EventRecord]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return [
            EventRecord(r["seq"], r["type"], r["escrow_id"], r["at"], json.loads(r["data"]))
            for r in rows
        ]

    @_read
    def last_event_seq(self) -> int:
        """The last seq handed out, from AUTOINCREMENT's own counter: unlike max(seq) it stays
        put when old events are pruned, even if none is left."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def prune_events(self, before: str, limit: int) -> int:
        """Delete up to `limit` of the oldest events dated before `before`, never the newest
        event; returns how many went. Small batches keep each transaction short."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE at < ? AND "
                "seq < (SELECT max(seq) FROM events) ORDER BY seq LIMIT ?)",
                (before, limit),
            )
            return int(cur.rowcount)


def _insert_event(
    db: sqlite3.Connection, type_: str, escrow_id: str | None, data: JsonMapping
) -> EventRecord:
    at = utcnow()
    cur = db.execute(
        "INSERT INTO events (type, escrow_id, at, data) VALUES (?,?,?,?)",
        (type_, escrow_id, at, json.dumps(dict(data))),
    )
    return EventRecord(int(cur.lastrowid or 0), type_, escrow_id, at, dict(data))


class LocalState:
    """`StateStore` over the host's SQLite `Store`: each call runs inline, as it always has."""

    def __init__(self, store: Store) -> None:
        self.sqlite = store

    @property
    def errors(self) -> int:
        return self.sqlite.errors

    @errors.setter
    def errors(self, value: int) -> None:
        self.sqlite.errors = value

    @property
    def failure(self) -> str | None:
        return self.sqlite.failure

    @failure.setter
    def failure(self, value: str | None) -> None:
        self.sqlite.failure = value

    @property
    def on_error(self) -> Callable[[], None]:
        return self.sqlite.on_error

    @on_error.setter
    def on_error(self, value: Callable[[], None]) -> None:
        self.sqlite.on_error = value

    async def insert_escrow(
        self, rec: EscrowRecord, events: Sequence[NewEvent] = ()
    ) -> list[EventRecord]:
        return self.sqlite.insert_escrow(rec, events)

    async def get_escrow(self, escrow_id: str) -> EscrowRecord | None:
        return self.sqlite.get_escrow(escrow_id)

    async def escrow_state(self, escrow_id: str) -> EscrowState | None:
        return self.sqlite.escrow_state(escrow_id)

    async def list_escrows(self, state: EscrowState | None = None) -> list[EscrowRecord]:
        return self.sqlite.list_escrows(state)

    async def count_escrows(self) -> int:
        return self.sqlite.count_escrows()

    async def wallet_files_in_use(self, *, except_escrow: str | None = None) -> set[str]:
        return self.sqlite.wallet_files_in_use(except_escrow=except_escrow)

    async def escrow_with_address(self, address: str) -> str | None:
        return self.sqlite.escrow_with_address(address)

    async def update_escrow(self, escrow_id: str, **changes: Unpack[EscrowChanges]) -> EscrowRecord:
        return self.sqlite.update_escrow(escrow_id, **changes)

    async def change_escrow(
        self, escrow_id: str, changes: EscrowChanges, events: Sequence[NewEvent] = ()
    ) -> tuple[EscrowRecord, list[EventRecord]]:
        return self.sqlite.change_escrow(escrow_id, changes, events)

    async def delete_escrow(self, escrow_id: str) -> None:
        self.sqlite.delete_escrow(escrow_id)

    async def put_payout_proof(self, escrow_id: str, proof: PayoutProof) -> None:
        self.sqlite.put_payout_proof(escrow_id, proof)

    async def get_payout_proof(self, escrow_id: str) -> PayoutProof | None:
        return self.sqlite.get_payout_proof(escrow_id)

    async def append_event(
        self, type_: str, escrow_id: str | None, data: JsonMapping
    ) -> EventRecord:
        return self.sqlite.append_event(type_, escrow_id, data)

    def escrow_state_nowait(self, escrow_id: str) -> EscrowState | None:
        return self.sqlite.escrow_state(escrow_id)

    def append_event_nowait(
        self, type_: str, escrow_id: str | None, data: JsonMapping
    ) -> EventRecord:
        return self.sqlite.append_event(type_, escrow_id, data)

    async def events_after(self, seq: int, limit: int = 500) -> list[EventRecord]:
        return self.sqlite.events_after(seq, limit)

    async def last_event_seq(self) -> int:
        return self.sqlite.last_event_seq()

    async def prune_events(self, before: str, limit: int) -> int:
        return self.sqlite.prune_events(before, limit)

    async def probe(self) -> bool:
        return self.sqlite.probe()

    async def aclose(self) -> None:
        self.sqlite.close()
