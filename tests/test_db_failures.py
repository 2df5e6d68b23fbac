"""A database that refuses writes (disk full) fails operations, never the daemon.

The store's connection is wrapped so that chosen statements raise what SQLite raises on a full
disk; walletd must keep answering, say so in /v1/health and /metrics, and catch up once the
database takes writes again.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fakes import call, raw_call, sqlite
from tests.harness import AMOUNT, app_on_fakes, run_monitor, wait_state
from tests.test_lifecycle import _received
from walletd.app import App


class FailingWrites:
    """The store's connection; while `failing`, every write transaction is refused."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.failing = True
        self.allow = 0  # write transactions still let through before refusing

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if self.failing and sql.lstrip().upper().startswith("BEGIN"):
            if self.allow <= 0:
                raise sqlite3.OperationalError("database or disk is full")
            self.allow -= 1
        return self.db.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def _break_writes(app: App, monkeypatch: pytest.MonkeyPatch) -> FailingWrites:
    failing = FailingWrites(sqlite(app)._db)
    monkeypatch.setattr(sqlite(app), "_db", failing)
    return failing


async def _db_errors(app: App) -> float:
    response = await raw_call(app, "GET", "/metrics")
    match = re.search(rb"^walletd_db_errors_total (\S+)$", response.body, re.MULTILINE)
    assert match, response.body[:2000]
    return float(match.group(1))


async def test_monitor_and_session_hook_survive_a_full_disk(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the disk full, the monitor's funding update and the session_closed event fail but
    walletd stays up and answers; /v1/health is 503 degraded naming the database and /metrics
    counts the errors. Once writes work again the escrow becomes funded and health is ok."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        status, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "f1", "amount": AMOUNT})
        assert status == 201, esc
        failing = _break_writes(app, monkeypatch)
        world.credit(esc["multisig_address"], AMOUNT, unlocked=False)
        await trio.sleep(30)  # several monitor cycles, each failing to record the funding
        status, body = await call(app, "DELETE", "/v1/escrows/f1/session")
        assert (status, body["closed"]) == (200, True)  # its session_closed could not be stored
        await trio.sleep(10)
        assert (await call(app, "GET", "/v1/stats"))[0] == 200
        status, esc = await call(app, "GET", "/v1/escrows/f1")
        assert (status, esc["state"]) == (200, "awaiting_funding")
        status, health = await call(app, "GET", "/v1/health")
        assert (status, health["status"]) == (503, "degraded"), health
        assert "database" in health["reason"], health
        assert await _db_errors(app) >= 2

        failing.failing = False
        await wait_state(app, "f1", "funded")
        status, health = await call(app, "GET", "/v1/health")
        assert (status, health["status"]) == (200, "ok"), health
        nursery.cancel_scope.cancel()


async def test_payout_whose_record_cannot_be_written_fails_only_itself(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payout whose signed blob cannot be recorded (disk full) is not submitted, the caller
    gets 503 and walletd stays up; repeating the call once writes work pays out exactly once."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        status, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "p1", "amount": AMOUNT})
        assert status == 201, esc
        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        await wait_state(app, "p1", "ready")
        vendor = world.add_wallet("vendor-payout", "x")
        release = {"address": vendor.address}
        failing = _break_writes(app, monkeypatch)
        failing.allow = 1  # the payout intent is recorded; the signed blob is not
        status, body = await call(app, "POST", "/v1/escrows/p1/release", release)
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        assert (await call(app, "GET", "/v1/stats"))[0] == 200
        assert _received(world, vendor.address) == []

        failing.failing = False
        status, body = await call(app, "POST", "/v1/escrows/p1/release", release)
        assert status == 202, body
        world.mine(10)
        await wait_state(app, "p1", "completed")
        assert len(_received(world, vendor.address)) == 1
        nursery.cancel_scope.cancel()
