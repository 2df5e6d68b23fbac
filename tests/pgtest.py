"""Test helpers for the cluster tests: a fresh database on the test PostgreSQL per test.

scripts/test.sh starts a private PostgreSQL and sets WALLETD_TEST_PG_URL; without it the tests
marked `pg` skip, saying so.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from walletd.app import App
from walletd.deployment.cluster import Cluster

ENV = "WALLETD_TEST_PG_URL"


def admin_url() -> str:
    url = os.environ.get(ENV)
    if not url:
        pytest.skip(f"{ENV} not set: run scripts/test.sh, which starts a private PostgreSQL")
    return url


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database on the test server (dropped afterwards); yields its URL."""
    url = admin_url()
    name = f"walletd_test_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(url, dbname=name)
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def advance_db_clock(url: str, seconds: float) -> None:
    """Move the cluster database's clock (cluster_now()) forward: leases expire without waiting."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE cluster_clock SET offset_seconds = offset_seconds + %s", (seconds,))


def url_of(conninfo: str) -> str:
    """The postgresql:// URL (what `[cluster] database_url` takes) of a `fresh_database()`."""
    dbname = str(conninfo_to_dict(conninfo)["dbname"])
    return urlunsplit(urlsplit(admin_url())._replace(path=f"/{dbname}"))


def cluster_of(app: App) -> Cluster:
    """The app's cluster deployment (a cluster test builds its app with `[cluster]`)."""
    assert isinstance(app.deployment, Cluster), app.deployment
    return app.deployment


async def start_cluster(nursery: trio.Nursery, app: App) -> None:
    """What `App.run` does for the cluster before its other parts: connect, then run the
    cluster's background parts (heartbeat, renewals, forwarded requests)."""
    cluster = cluster_of(app)
    await cluster.start(app.vault.fingerprint())
    await nursery.start(cluster.run)
