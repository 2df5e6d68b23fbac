"""The bench's cluster item on a machine without PostgreSQL: one row saying so, no failure."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from bench.items import cluster
from bench.plan import Plan
from bench.report import render


def test_without_postgresql_the_cluster_row_says_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no initdb/pg_ctl found, the item starts nothing and reports a single row
    "skipped: no PostgreSQL ..." that the table prints."""
    monkeypatch.setattr(cluster, "server_bin", lambda: None)
    with contextlib.ExitStack() as stack:
        items = cluster.run_cluster(stack, tmp_path, "127.0.0.1:1", Plan.for_run(quick=True))
    assert [item.key for item in items] == ["8_cluster"]
    assert "skipped: no PostgreSQL" in render(items)
    assert list(tmp_path.iterdir()) == []
