"""Fixtures shared by the cluster tests (marker `pg`): a fresh database, and it migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

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
