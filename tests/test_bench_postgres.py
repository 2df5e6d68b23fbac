"""The benchmark's private PostgreSQL: it answers while running and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from bench.postgres import PrivatePostgres, server_bin


def test_the_bench_postgres_answers_and_is_gone_afterwards() -> None:
    """Inside the `with`, the server answers on its loopback URL with fsync off; after it, the
    server process has stopped and its temporary directory is removed."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server is not installed (initdb/pg_ctl)")
    with PrivatePostgres(bin_dir) as pg:
        assert pg.url.startswith("postgresql://walletd@127.0.0.1:")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            row = conn.execute("SHOW fsync").fetchone()
        assert row is not None
        assert row[0] == "off"
        (postmaster,) = pg.pids()
        directory = pg.dir
        assert directory is not None
    assert not directory.exists()
    assert not _running(postmaster)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may be slow to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_failed_start_leaves_no_directory() -> None:
    """When initdb cannot run (here: no binaries where it is told to look), the start fails
    and the temporary directory it made is removed."""
    made: list[Path] = []

    class Spy(PrivatePostgres):
        def _run(self, argv: list[str], log: Path) -> None:
            made.append(log.parent)
            super()._run(argv, log)

    pg = Spy(Path("/nonexistent-pg-bin"))
    with pytest.raises((RuntimeError, OSError)), pg:
        pass
    assert made, "the start never got to initdb"
    assert not made[0].exists()
    assert pg.dir is None
