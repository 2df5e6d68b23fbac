"""Durable state: the database, the vault key, and validated ids and file names."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import escrow_record
from walletd.errors import IllegalMove, InvalidRequest, VaultError
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    Funding,
    Payout,
    PayoutKind,
    PayoutPhase,
)
from walletd.ids import check_escrow_id, check_txid, check_wallet_file, wallet_file_for
from walletd.state.sqlite_store import SCHEMA_VERSION, Store
from walletd.state.vault import Vault


def _record(escrow_id: str = "e1") -> EscrowRecord:
    return escrow_record(escrow_id, multisig_address="4abc")


def test_event_sequence_survives_reopen(tmp_path: Path) -> None:
    """Event sequence numbers only grow, also across a restart (reopening the database)."""
    store = Store(tmp_path / "db")
    first = store.append_event("escrow_created", "e1", {"amount": 1})
    store.close()
    store = Store(tmp_path / "db")
    second = store.append_event("funded", "e1", {})
    assert second.seq > first.seq
    assert [e.type for e in store.events_after(0)] == ["escrow_created", "funded"]
    assert store.schema_version == SCHEMA_VERSION


def test_escrow_round_trip_and_update(tmp_path: Path) -> None:
    """An escrow comes back as it was stored; an update changes only what it names."""
    store = Store(tmp_path / "db")
    store.insert_escrow(_record())
    rec = store.update_escrow("e1", state=EscrowState.FUNDED, funding=Funding(balance=7))
    assert (rec.state, rec.funding.balance, rec.amount) == ("funded", 7, 5)
    assert store.wallet_files_in_use() == {"e1-buyer", "e1-vendor", "e1-arbiter"}
    assert [r.escrow_id for r in store.list_escrows(EscrowState.FUNDED)] == ["e1"]


def test_state_change_and_its_event_are_one_transaction(tmp_path: Path) -> None:
    """A state change and the event announcing it land together or not at all: an event that
    cannot be written leaves the escrow as it was, and a change to no escrow writes no event."""
    store = Store(tmp_path / "db")
    inserted = store.insert_escrow(_record(), [("escrow_created", {"amount": 5})])
    assert [e.type for e in inserted] == ["escrow_created"]
    with pytest.raises(TypeError):
        store.change_escrow("e1", {"state": EscrowState.FUNDED}, [("funded", {"bad": object()})])
    rec = store.get_escrow("e1")
    assert rec is not None
    assert rec.state == "awaiting_funding"
    with pytest.raises(KeyError):
        store.change_escrow("nobody", {"state": EscrowState.FUNDED}, [("funded", {})])
    rec, events = store.change_escrow(
        "e1", {"state": EscrowState.FUNDED}, [("funded", {"balance": 5})]
    )
    assert rec.state == "funded"
    store.close()
    store = Store(tmp_path / "db")  # what a restart reads back
    assert [(e.type, e.escrow_id, e.seq) for e in store.events_after(0)] == [
        ("escrow_created", "e1", inserted[0].seq),
        ("funded", "e1", events[0].seq),
    ]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database from a newer walletd is left untouched rather than misread."""
    store = Store(tmp_path / "db")
    store._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store.close()
    with pytest.raises(RuntimeError, match="newer"):
        Store(tmp_path / "db")


def test_vault_key_file_is_private_and_stable(tmp_path: Path) -> None:
    """The key file is created 0600 once; derived passwords are the same after a restart."""
    key = tmp_path / "walletd.key"
    pw = Vault.open(key).derived_password("e1", "buyer")
    assert os.stat(key).st_mode & 0o777 == 0o600
    again = Vault.open(key)
    assert again.derived_password("e1", "buyer") == pw
    assert again.derived_password("e1", "vendor") != pw
    assert pw not in repr(again)


def test_vault_refuses_an_open_key_file(tmp_path: Path) -> None:
    """A key file readable by others is refused, not silently used."""
    key = tmp_path / "walletd.key"
    Vault.open(key)
    key.chmod(0o644)
    with pytest.raises(VaultError, match="0600"):
        Vault.open(key)


def test_sealed_password_is_bound_to_its_wallet(tmp_path: Path) -> None:
    """An adopted wallet's password decrypts only for the escrow and role it was sealed for."""
    vault = Vault.open(tmp_path / "k")
    sealed = vault.seal("e1", "buyer", "hunter2")
    assert "hunter2" not in sealed
    assert vault.unseal("e1", "buyer", sealed) == "hunter2"
    with pytest.raises(VaultError):
        vault.unseal("e1", "vendor", sealed)


@pytest.mark.parametrize(
    "bad",
    ["", "-abc", "a" * 65, "../etc", "a/b", "a b", "é", "a\x00b", 5, None, ["a"], "\uff41"],
)
def test_hostile_escrow_ids_are_refused(bad: object) -> None:
    """Anything outside 1-64 of [A-Za-z0-9_-] starting alphanumeric is invalid_request."""
    with pytest.raises(InvalidRequest):
        check_escrow_id(bad)


def test_good_escrow_ids() -> None:
    """UUIDs and plain names are accepted, and file names are derived from them."""
    uid = "0b7c6f0e-6d1a-4c52-9b0e-7f1f2b3c4d5e"
    assert check_escrow_id(uid) == uid
    assert wallet_file_for("order_42", "vendor") == "escrow-order_42-vendor"


@pytest.mark.parametrize(
    "bad", ["../x", "/etc/passwd", "a/b", ".hidden", "w.keys", "..", "x" * 200]
)
def test_wallet_files_outside_the_wallet_dir_are_refused(tmp_path: Path, bad: str) -> None:
    """Adopted wallet files are plain names inside the wallet directory, nothing else."""
    with pytest.raises(InvalidRequest):
        check_wallet_file(bad, tmp_path)


def test_wallet_file_must_exist(tmp_path: Path) -> None:
    """A wallet file is accepted only when its .keys file is there."""
    with pytest.raises(InvalidRequest, match="no such wallet"):
        check_wallet_file("w1", tmp_path)
    (tmp_path / "w1.keys").write_bytes(b"k")
    assert check_wallet_file("w1", tmp_path) == "w1"


def test_txid_is_checked() -> None:
    """A txid is 64 hex characters; upper case is folded, anything else refused."""
    assert check_txid("AB" * 32) == "ab" * 32
    with pytest.raises(InvalidRequest):
        check_txid("zz" * 32)


class _FailingDb:
    """The store's connection, with chosen statements refused as a full disk refuses them."""

    def __init__(self, db: sqlite3.Connection, *prefixes: str) -> None:
        self.db = db
        self.prefixes = prefixes

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if sql.lstrip().upper().startswith(self.prefixes):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_failed_commit_leaves_no_half_transaction(tmp_path: Path) -> None:
    """A COMMIT that fails (disk full) is rolled back: nothing of that change is visible, the
    connection is not left inside a transaction, and the next write works."""
    store = Store(tmp_path / "db")
    store.insert_escrow(_record(), [("escrow_created", {"amount": 5})])
    real = store._db
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "_db", _FailingDb(real, "COMMIT"))
        with pytest.raises(Exception, match="disk is full"):
            store.change_escrow("e1", {"state": EscrowState.FUNDED}, [("funded", {"balance": 5})])
    assert store._db is real
    assert not real.in_transaction
    rec = store.get_escrow("e1")
    assert rec is not None
    assert rec.state == "awaiting_funding"
    assert [e.type for e in store.events_after(0)] == ["escrow_created"]
    store.append_event("session_opened", "e1", {})
    assert [e.type for e in store.events_after(0)] == ["escrow_created", "session_opened"]


def test_full_database_reports_itself_full(tmp_path: Path) -> None:
    """When SQLite itself finds the database full mid-transaction (and has already rolled it
    back), the caller is told the database is full, not a confusing rollback error; once there
    is room again writes work."""
    store = Store(tmp_path / "db")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(Exception, match="disk is full"):
        store.append_event("funded", "e1", {"pad": "x" * 100_000})
    assert not store._db.in_transaction
    store._db.execute(f"PRAGMA max_page_count = {pages * 1000}")
    store.append_event("funded", "e1", {})


def test_busy_database_fails_fast(tmp_path: Path) -> None:
    """Another process holding the database's write lock (an operator's sqlite3 shell, a
    backup) makes a write fail within a second instead of freezing every walletd task for
    seconds; the write works once the lock is gone."""
    store = Store(tmp_path / "db")
    other = sqlite3.connect(tmp_path / "db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(Exception, match="locked"):
        store.append_event("funded", "e1", {})
    assert time.monotonic() - started < 1.5
    other.execute("ROLLBACK")
    store.append_event("funded", "e1", {})


# JSON exactly as walletd wrote it before the payout and funding columns were typed.
_OLD_FUNDING = (
    '{"balance": 5, "unlocked_balance": 5, "confirmations": 12, '
    '"checked_at": "2026-01-01T00:00:00.000Z"}'
)
_OLD_PAYOUTS = {
    "intent": '{"kind": "refund", "address": "4abc", "phase": "intent", '
    '"created_at": "2026-01-02T00:00:00.000Z", "txid": null, "confirmations": 0, '
    '"submitted_at": null, "last_error": "wallet-rpc timed out"}',
    "submitted": '{"kind": "release", "address": "4abc", "phase": "submitted", '
    '"created_at": "2026-01-02T00:00:00.000Z", "txid": "aa", "confirmations": 3, '
    '"submitted_at": "2026-01-02T00:00:05.000Z", "txids": ["aa", "bb"], '
    '"signed_txset": "0011", "amount": 4, "fee": 1, "last_error": null}',
}


def test_records_written_by_an_older_walletd_read_back(tmp_path: Path) -> None:
    """Funding and payout columns as walletd always wrote them load into the typed record, and
    writing the record again keeps every key and value they had (a null last_error aside)."""
    store = Store(tmp_path / "db")
    store.insert_escrow(_record("e1"))
    store.insert_escrow(_record("e2"))
    for escrow_id, payout in zip(("e1", "e2"), _OLD_PAYOUTS.values(), strict=True):
        store._db.execute(
            "UPDATE escrows SET funding = ?, payout = ? WHERE escrow_id = ?",
            (_OLD_FUNDING, payout, escrow_id),
        )
    e1, e2 = store.get_escrow("e1"), store.get_escrow("e2")
    assert e1 is not None
    assert e2 is not None
    assert e1.funding == Funding(5, 5, 12, "2026-01-01T00:00:00.000Z")
    assert e1.payout == Payout(
        kind=PayoutKind.REFUND,
        address="4abc",
        phase=PayoutPhase.INTENT,
        created_at="2026-01-02T00:00:00.000Z",
        last_error="wallet-rpc timed out",
    )
    assert e2.payout == Payout(
        kind=PayoutKind.RELEASE,
        address="4abc",
        phase=PayoutPhase.SUBMITTED,
        created_at="2026-01-02T00:00:00.000Z",
        txid="aa",
        confirmations=3,
        submitted_at="2026-01-02T00:00:05.000Z",
        txids=("aa", "bb"),
        signed_txset="0011",
        amount=4,
        fee=1,
    )
    assert "0011" not in repr(e2)  # the blob is long: kept out of reprs and logs
    for escrow_id, rec in (("e1", e1), ("e2", e2)):
        assert rec.payout is not None
        store.update_escrow(escrow_id, funding=rec.funding, payout=rec.payout)
        row = store._db.execute(
            "SELECT funding, payout FROM escrows WHERE escrow_id = ?", (escrow_id,)
        ).fetchone()
        assert json.loads(row[0]) == json.loads(_OLD_FUNDING)
        old = {
            k: v
            for k, v in json.loads(_OLD_PAYOUTS[str(rec.payout.phase)]).items()
            if v is not None or k != "last_error"
        }
        assert json.loads(row[1]) == old


def test_states_only_move_forward(tmp_path: Path) -> None:
    """The store refuses a change of state that is not one of EscrowState's moves, and leaves
    the escrow and the event log as they were."""
    S = EscrowState
    assert S.AWAITING_FUNDING.can_move_to(S.READY)
    assert S.READY.can_move_to(S.READY)  # a change that keeps the state
    assert not S.FUNDED.can_move_to(S.AWAITING_FUNDING)
    assert not S.READY.can_move_to(S.COMPLETED)
    assert S.RELEASING.moves == {S.COMPLETED}
    assert [s.value for s in S] == [
        "creating",
        "awaiting_funding",
        "funded",
        "ready",
        "releasing",
        "refunding",
        "completed",
        "refunded",
    ]
    store = Store(tmp_path / "db")
    store.insert_escrow(_record())
    with pytest.raises(IllegalMove):
        store.change_escrow("e1", {"state": S.RELEASING}, [("payout_submitted", {})])
    rec = store.get_escrow("e1")
    assert rec is not None
    assert rec.state is S.AWAITING_FUNDING
    assert store.events_after(0) == []
    store.update_escrow("e1", state=S.READY)
    with pytest.raises(IllegalMove):
        store.update_escrow("e1", state=S.FUNDED)
