"""The store on the cluster's PostgreSQL: what `walletd.state.sqlite_store` does on SQLite, fenced.

Same methods, parameters, results and errors as the SQLite store (async), so the daemon runs on
either: an `EscrowRecord` reads back identical from both (the JSON columns are written by the same
`walletd.state.columns`, times come back in `utcnow()`'s format), unknown escrows are `KeyError`,
bad changes `ValueError`/`IllegalMove`, a state change and its events are one transaction.

What PostgreSQL adds:

- **Fencing.** Every write about an escrow (insert, change, delete, payout proof, an event naming
  it) runs in `Leases.fenced_job` with the tenure `tenure_of(escrow_id)` gives for it (the
  writing task's holding's, `ClusterOwnership`): the lease row is checked and locked in the
  writing transaction, so a host whose lease expired or changed owner, or a holding older than
  the host's current lease, writes nothing (`Fenced`). No tenure at all is refused the same way,
  before any statement. A payout change with `expect_payout` is compare-and-set on the locked row.
  The payout (intent, signed blob, submitted) is a column of the escrow row, so it is fenced with
  it: a new owner reads the blob the old one recorded, and nothing an old owner tries lands after
  the new owner's epoch exists. Events about no escrow are not fenced.
- **One ordered feed.** An event's seq comes from the counter row updated in the writing
  transaction (`leases.append_event`): seq order is commit order across hosts. Each append also
  notifies `EVENTS_CHANNEL` with the seq, delivered at commit: the long polls of every host wake
  on it, then read by seq.
- **Failures.** The database failing (unreachable, a statement failing for a reason not the
  caller's) raises `ClusterUnavailable`, a `StoreUnavailable` like the SQLite store's; it is
  counted in `errors`, remembered in `failure` until a write succeeds, and reported through
  `on_error`, as the SQLite store does for /v1/health and /metrics. A duplicate escrow id is the
  driver's `IntegrityError`, as it is sqlite3's there. `Fenced` (also a `StoreUnavailable`) is not
  the database failing: it is counted in `Leases.statistics()` and logged, not in `errors`.

`PgStore` is a `walletd.state.store.StateStore`; its `_nowait` calls always raise
`trio.WouldBlock` (every call is a round trip).

Escrow times (`created_at`, `updated_at`) are the writing host's `utcnow()` as in SQLite (the
record's own data, kept in timestamptz columns); event times and proof times are the database's
clock (`cluster_now()`), like every time the cluster itself decides on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, Unpack

import psycopg
import structlog
import trio

from walletd.cluster.db import Connection, Database
from walletd.cluster.leases import Leases, Tenure, append_event_row
from walletd.cluster.wallet_files import abandon_wallet_files
from walletd.errors import ClusterUnavailable, Fenced
from walletd.escrows.model import EscrowRecord, EscrowState, PayoutProof
from walletd.jsontypes import JsonMapping
from walletd.state.columns import (
    funding_from_json,
    funding_to_json,
    payout_from_json,
    payout_to_json,
    wallets_from_json,
    wallets_to_json,
)
from walletd.state.store import EscrowChanges, EventRecord, NewEvent, changed_columns

__all__ = ["EVENTS_CHANNEL", "PgStore", "timestamp"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

EVENTS_CHANNEL = "walletd_events"  # NOTIFY channel; the payload is the new event's seq

# Errors about the request itself (a duplicate key, bad SQL, a value PostgreSQL refuses): not the
# database failing, so not counted (as the SQLite store treats sqlite3's).
_CALLER_ERRORS = (
    psycopg.IntegrityError,
    psycopg.ProgrammingError,
    psycopg.DataError,
    psycopg.InterfaceError,
)

# The escrow columns in EscrowRecord's order; JSON as text for walletd.state.columns.
# escrow_id COLLATE "C" in ORDER BY: byte order, as SQLite sorts, whatever the database's locale.
_ESCROW_COLUMNS = (
    "escrow_id, state, amount, required_confirmations, multisig_address, origin, wallets::text,"
    " request_digest, funding::text, payout::text, created_at, updated_at"
)


# How a changed column's stored text is cast on the way in (JSON columns, the timestamp).
_CASTS = {"funding": "::jsonb", "payout": "::jsonb", "updated_at": "::timestamptz"}


def timestamp(at: datetime) -> str:
    """A timestamptz as `utcnow()` formats times (RFC 3339 UTC, milliseconds, "Z")."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(row: tuple[Any, ...]) -> EscrowRecord:  # Any: one row's column values
    return EscrowRecord(
        escrow_id=row[0],
        state=EscrowState(row[1]),
        amount=int(row[2]),
        required_confirmations=int(row[3]),
        multisig_address=row[4],
        origin=row[5],
        wallets=wallets_from_json(row[6]),
        request_digest=row[7],
        funding=funding_from_json(row[8]),
        payout=payout_from_json(row[9]) if row[9] is not None else None,
        created_at=timestamp(row[10]),
        updated_at=timestamp(row[11]),
    )


def _append(
    conn: Connection, type_: str, escrow_id: str | None, data: JsonMapping, tenure: Tenure | None
) -> EventRecord:
    """Append one event in the caller's transaction and notify its seq (sent at commit)."""
    seq, at = append_event_row(conn, type_, escrow_id, data, tenure, notify=EVENTS_CHANNEL)
    return EventRecord(seq, type_, escrow_id, timestamp(at), dict(data))


class PgStore:
    """Escrows, payout proofs and the event log in the cluster database, writes fenced."""

    def __init__(
        self,
        db: Database,
        leases: Leases,
        tenure_of: Callable[[str], Tenure | None],
        host_id: str,
    ) -> None:
        """`tenure_of(escrow_id)`: this host's current tenure of the escrow's lease, None if it
        holds none (then every write about the escrow is refused)."""
        self.db = db
        self.leases = leases
        self.tenure_of = tenure_of
        self.host_id = host_id
        self.errors = 0  # database errors since start
        self.failure: str | None = None  # the last error, until a write succeeds again
        self.on_error: Callable[[], None] = lambda: None  # the app counts them in /metrics

    async def aclose(self) -> None:
        """Nothing to close: the Database is shared with the leases, hosts and wallet files, and
        closed by whoever opened it."""

    # ---- running jobs ---------------------------------------------------------------------------

    async def _run(self, job: Callable[[Connection], T], *, write: bool) -> T:
        """Run one transaction; the database failing is a `ClusterUnavailable`, counted."""
        try:
            # Reads may be abandoned when cancelled (their outcome does not matter); a write's
            # caller must learn whether it committed.
            result = await self.db.run(job, abandon_on_cancel=not write)
        except ClusterUnavailable as exc:
            self._failed(exc)
            raise
        except psycopg.Error as exc:
            if isinstance(exc, _CALLER_ERRORS):
                raise
            # Named by its class, as Database names the ones it maps (no server text, no URL).
            failed = ClusterUnavailable(f"cluster database failed ({type(exc).__name__})")
            self._failed(failed)
            raise failed from exc
        if write:
            self.failure = None
        return result

    def _failed(self, exc: ClusterUnavailable) -> None:
        self.errors += 1
        self.failure = exc.message
        self.on_error()
        log.error("cluster database error", host_id=self.host_id, error=exc.message)

    async def _fenced(self, escrow_id: str, write: Callable[[Connection, Tenure], T]) -> T:
        """Run `write(conn, tenure)` under this host's lease of the escrow, or refuse it."""
        tenure = self.tenure_of(escrow_id)
        if tenure is None:
            log.warning("write refused: no lease", escrow_id=escrow_id, host_id=self.host_id)
            raise self.leases.refused(escrow_id)
        if tenure.escrow_id != escrow_id or tenure.host_id != self.host_id:
            raise ValueError(f"tenure {tenure} is not this host's lease of escrow {escrow_id}")

        def job(conn: Connection) -> T:
            return write(conn, tenure)

        try:
            return await self._run(self.leases.fenced_job(tenure, job), write=True)
        except Fenced:
            log.warning(
                "write refused: lease stale",
                escrow_id=escrow_id,
                host_id=self.host_id,
                epoch=tenure.epoch,
            )
            raise

    async def probe(self) -> bool:
        """Try a small real write: True (and `failure` cleared) if the database takes it.

        Taking a transaction id makes the commit write and flush a WAL record (a read-only
        standby refuses it), without touching any table another host is writing."""

        def write(conn: Connection) -> None:
            conn.execute("SELECT pg_current_xact_id()")

        try:
            await self._run(write, write=True)
        except ClusterUnavailable:
            return False
        return True

    # ---- escrows --------------------------------------------------------------------------------

    async def insert_escrow(
        self, rec: EscrowRecord, events: Sequence[NewEvent] = ()
    ) -> list[EventRecord]:
        """Record a new escrow and its events in one transaction: both or neither."""
        row = (
            rec.escrow_id,
            rec.state.value,
            rec.amount,
            rec.required_confirmations,
            rec.multisig_address,
            rec.origin,
            wallets_to_json(rec.wallets),
            rec.request_digest,
            funding_to_json(rec.funding),
            payout_to_json(rec.payout) if rec.payout is not None else None,
            rec.created_at,
            rec.updated_at,
        )

        def write(conn: Connection, tenure: Tenure) -> list[EventRecord]:
            conn.execute(
                "INSERT INTO escrows VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s::jsonb,"
                " %s::jsonb, %s::timestamptz, %s::timestamptz)",
                row,
            )
            return [_append(conn, t, rec.escrow_id, d, tenure) for t, d in events]

        return await self._fenced(rec.escrow_id, write)

    async def get_escrow(self, escrow_id: str) -> EscrowRecord | None:
        def read(conn: Connection) -> EscrowRecord | None:
            row = conn.execute(
                f"SELECT {_ESCROW_COLUMNS} FROM escrows WHERE escrow_id = %s",  # noqa: S608 - fixed columns
                (escrow_id,),
            ).fetchone()
            return _record(row) if row else None

        return await self._run(read, write=False)

    async def escrow_state(self, escrow_id: str) -> EscrowState | None:
        """The escrow's state alone (None if there is no such escrow): cheaper than the record."""

        def read(conn: Connection) -> EscrowState | None:
            row = conn.execute(
                "SELECT state FROM escrows WHERE escrow_id = %s", (escrow_id,)
            ).fetchone()
            return EscrowState(row[0]) if row else None

        return await self._run(read, write=False)

    async def list_escrows(self, state: EscrowState | None = None) -> list[EscrowRecord]:
        def read(conn: Connection) -> list[EscrowRecord]:
            order = 'ORDER BY created_at, escrow_id COLLATE "C"'
            if state is None:
                rows = conn.execute(f"SELECT {_ESCROW_COLUMNS} FROM escrows {order}")  # noqa: S608 - fixed text
            else:
                rows = conn.execute(
                    f"SELECT {_ESCROW_COLUMNS} FROM escrows WHERE state = %s {order}",  # noqa: S608 - fixed text
                    (state.value,),
                )
            return [_record(r) for r in rows]

        return await self._run(read, write=False)

    async def count_escrows(self) -> int:
        def read(conn: Connection) -> int:
            row = conn.execute("SELECT count(*) FROM escrows").fetchone()
            return int(row[0]) if row else 0

        return await self._run(read, write=False)

    async def wallet_files_in_use(self, *, except_escrow: str | None = None) -> set[str]:
        """The wallet files every recorded escrow (`creating` ones too) names, but
        `except_escrow`'s own."""

        def read(conn: Connection) -> set[str]:
            files: set[str] = set()
            rows = conn.execute(
                "SELECT wallets::text FROM escrows WHERE escrow_id IS DISTINCT FROM %s::text",
                (except_escrow,),
            )
            for (text,) in rows:
                files.update(w.file for w in wallets_from_json(text).values())
            return files

        return await self._run(read, write=False)

    async def escrow_with_address(self, address: str) -> str | None:
        """The escrow recorded with this multisig address, if any (a full scan, as in SQLite:
        it runs once per creation or adoption, never on the read path)."""

        def read(conn: Connection) -> str | None:
            row = conn.execute(
                "SELECT escrow_id FROM escrows WHERE multisig_address = %s LIMIT 1", (address,)
            ).fetchone()
            return str(row[0]) if row else None

        return await self._run(read, write=False)

    async def update_escrow(self, escrow_id: str, **changes: Unpack[EscrowChanges]) -> EscrowRecord:
        """Change some columns of one escrow in one transaction and return the new record."""
        return (await self.change_escrow(escrow_id, changes))[0]

    async def change_escrow(
        self, escrow_id: str, changes: EscrowChanges, events: Sequence[NewEvent] = ()
    ) -> tuple[EscrowRecord, list[EventRecord]]:
        """Change some columns of one escrow and append its events in one fenced transaction, so
        a crash can never keep a state change whose event the server would then never see, and a
        host that lost the escrow's lease changes nothing.

        A change of state must be one of `EscrowState`'s moves (`IllegalMove` otherwise), and a
        change with `expect_payout` finds the payout it expects (`PayoutChanged` otherwise), both
        checked on the row as locked in this transaction."""
        columns = changed_columns(changes)
        cols = [f"{name} = %s{_CASTS.get(name, '')}" for name in columns]
        values = list(columns.values())
        update = (
            f"UPDATE escrows SET {', '.join(cols)} WHERE escrow_id = %s"  # noqa: S608 - column names are fixed above
            f" RETURNING {_ESCROW_COLUMNS}"
        )

        def write(conn: Connection, tenure: Tenure) -> tuple[EscrowRecord, list[EventRecord]]:
            row = conn.execute(
                "SELECT state, payout::text FROM escrows WHERE escrow_id = %s FOR UPDATE",
                (escrow_id,),
            ).fetchone()
            if row is None:
                raise KeyError(escrow_id)
            if "expect_payout" in changes:
                recorded = payout_from_json(row[1]) if row[1] is not None else None
                changes["expect_payout"].check(escrow_id, recorded)
            if "state" in changes:
                EscrowState(row[0]).check_move(changes["state"])
            new = conn.execute(update, (*values, escrow_id)).fetchone()
            assert new is not None  # the row is locked above
            appended = [_append(conn, t, escrow_id, d, tenure) for t, d in events]
            return _record(new), appended

        return await self._fenced(escrow_id, write)

    async def delete_escrow(self, escrow_id: str) -> None:
        """Forget an abandoned creation: its record, and (in the same fenced transaction) its
        wallets' kept versions marked abandoned, so a later escrow with this id never gets the
        abandoned wallets restored over its own files."""

        def write(conn: Connection, tenure: Tenure) -> None:
            conn.execute("DELETE FROM escrows WHERE escrow_id = %s", (escrow_id,))
            abandon_wallet_files(conn, escrow_id)

        await self._fenced(escrow_id, write)

    # ---- payout proofs --------------------------------------------------------------------------

    async def put_payout_proof(self, escrow_id: str, proof: PayoutProof) -> None:
        """Keep the proof of the escrow's submitted payout (the same payout: same values)."""

        def write(conn: Connection, tenure: Tenure) -> None:
            conn.execute(
                """
                INSERT INTO payout_proofs VALUES (%s, %s, %s, %s, %s, cluster_now())
                ON CONFLICT (escrow_id) DO UPDATE SET txid = excluded.txid,
                    address = excluded.address, tx_key = excluded.tx_key,
                    proof = excluded.proof, stored_at = excluded.stored_at
                """,
                (escrow_id, proof.txid, proof.address, proof.tx_key, proof.proof),
            )

        await self._fenced(escrow_id, write)

    async def get_payout_proof(self, escrow_id: str) -> PayoutProof | None:
        def read(conn: Connection) -> PayoutProof | None:
            row = conn.execute(
                "SELECT txid, address, tx_key, proof FROM payout_proofs WHERE escrow_id = %s",
                (escrow_id,),
            ).fetchone()
            return PayoutProof(*row) if row else None

        return await self._run(read, write=False)

    # ---- events ---------------------------------------------------------------------------------

    async def append_event(
        self, type_: str, escrow_id: str | None, data: JsonMapping
    ) -> EventRecord:
        """Append one event: fenced by the escrow's lease if it names one."""
        if escrow_id is None:
            return await self._run(lambda conn: _append(conn, type_, None, data, None), write=True)

        def write(conn: Connection, tenure: Tenure) -> EventRecord:
            return _append(conn, type_, escrow_id, data, tenure)

        return await self._fenced(escrow_id, write)

    def escrow_state_nowait(self, escrow_id: str) -> EscrowState | None:
        raise trio.WouldBlock  # a round trip: the caller awaits `escrow_state`

    def append_event_nowait(
        self, type_: str, escrow_id: str | None, data: JsonMapping
    ) -> EventRecord:
        raise trio.WouldBlock  # a round trip: the caller queues it for `append_event`

    async def events_after(self, seq: int, limit: int = 500) -> list[EventRecord]:
        def read(conn: Connection) -> list[EventRecord]:
            rows = conn.execute(
                "SELECT seq, type, escrow_id, at, data FROM events WHERE seq > %s"
                " ORDER BY seq LIMIT %s",
                (seq, limit),
            )
            return [EventRecord(int(r[0]), r[1], r[2], timestamp(r[3]), r[4]) for r in rows]

        return await self._run(read, write=False)

    async def last_event_seq(self) -> int:
        """The last seq handed out (committed), from the counter row: like SQLite's
        AUTOINCREMENT counter it stays put when old events are pruned, even if none is left."""

        def read(conn: Connection) -> int:
            row = conn.execute("SELECT seq FROM event_counter").fetchone()
            return int(row[0]) if row else 0

        return await self._run(read, write=False)

    async def prune_events(self, before: str, limit: int) -> int:
        """Delete up to `limit` of the oldest events dated before `before` (a `utcnow()`
        string), never the newest event; returns how many went. Small batches keep each
        transaction short. Not fenced: retention is no escrow's write."""

        def write(conn: Connection) -> int:
            cur = conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE at < %s::timestamptz"
                " AND seq < (SELECT max(seq) FROM events) ORDER BY seq LIMIT %s)",
                (before, limit),
            )
            return int(cur.rowcount)

        return await self._run(write, write=True)
