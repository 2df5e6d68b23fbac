"""Fixtures shared by many tests: a socket path AF_UNIX takes; for the cluster tests (marker
`pg`) a fresh database, it migrated, and a PostgreSQL server of a test's own.

The other shared set-ups are functions a test calls in its own nursery: `tests/harness.py` (an
app on fakes, a ready escrow, waiting for a state, cluster hosts on fakes) and, for the regtest
tests, `tests/regtest/harness.py` and the fixtures in `tests/regtest/conftest.py`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.postgres import PrivatePostgres, server_bin
from tests.pgtest import fresh_database
from walletd.cluster.db import Database
from walletd.cluster.migrations import migrate, migrations


@pytest.fixture
def db_url() -> Iterator[str]:
    """A new empty database on the test PostgreSQL (skips without WALLETD_TEST_PG_URL)."""
    # sync: a skip raised in an async fixture loses its reason under pytest-trio
    with fresh_database() as url:
        yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """`db_url` opened and migrated to this walletd's schema."""
    database = Database(db_url)
    await database.open()
    try:
        assert await migrate(database) == len(migrations())
        yield database
    finally:
        await database.close()


@pytest.fixture
def own_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test's own, which it may stop and start (never the shared
    test server); skips without PostgreSQL's initdb/pg_ctl."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    with PrivatePostgres(bin_dir) as pg:
        yield pg


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    """A socket path short enough for AF_UNIX (about 107 bytes at most)."""
    path = tmp_path / "w.sock"
    if len(os.fsencode(path)) < 100:
        yield path
        return
    short = tempfile.mkdtemp(prefix="wd-", dir="/tmp")
    try:
        yield Path(short) / "w.sock"
    finally:
        shutil.rmtree(short, ignore_errors=True)
