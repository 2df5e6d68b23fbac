"""When the cluster database itself fails: calls answer at once, the host comes back by itself,
and start-up or `--check-config --check-database` say in one line which database and why.

The outage test runs its own private PostgreSQL (it stops it: never the shared test server).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from bench.postgres import PrivatePostgres
from tests.harness import run_walletd
from tests.pgtest import admin_url
from walletd.cluster.db import CONNECT_TIMEOUT, Connection, Database, bounds_for
from walletd.cluster.leases import Leases
from walletd.cluster.migrations import migrate
from walletd.errors import ClusterUnavailable
from walletd.testing.walletd_process import write_config

pytestmark = pytest.mark.pg

TTL = 5.0
EXIT_RUNTIME = 1


def _select_one(conn: Connection) -> int:
    row = conn.execute("SELECT 1").fetchone()
    return int(row[0]) if row else 0


async def test_database_down_fails_calls_at_once_and_comes_back_by_itself(
    own_pg: PrivatePostgres,
) -> None:
    """Once the database is known down (the server stopped as a crash stops it), every call
    fails with ClusterUnavailable (a 503) at once instead of waiting for a pooled connection, on
    the pool and on the renewals' connections alike; once the server is back, calls succeed
    again by themselves (a background probe), without any call having to wait it out."""
    db = Database(own_pg.url, max_size=8, lease_ttl=TTL)
    await db.open()
    await migrate(db)
    leases = Leases(db, TTL)
    tenure = await leases.acquire("e1", "A")
    assert tenure is not None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.watch)
            await trio.to_thread.run_sync(own_pg.halt)
            failed: list[float] = []
            for n in range(12):
                started = trio.current_time()
                call = leases.renew(tenure) if n % 2 else db.run(_select_one)
                with pytest.raises(ClusterUnavailable):
                    await call
                failed.append(trio.current_time() - started)
            print(f"\ncalls while the database is down failed after: {_figures(failed)}")
            # The first call may meet the broken connection; none waits for a pooled one.
            assert max(failed) < CONNECT_TIMEOUT / 2, failed

            await trio.to_thread.run_sync(own_pg.resume)
            back = trio.current_time()
            while True:
                try:
                    assert await db.run(_select_one) == 1
                    break
                except ClusterUnavailable:
                    assert trio.current_time() - back < 60, "the database never came back"
                    await trio.sleep(0.05)
            print(f"calls succeed again {trio.current_time() - back:.2f} s after the restart")
            assert await leases.acquire("e2", "A") is not None
            nursery.cancel_scope.cancel()
    finally:
        await db.close()


def _figures(times: list[float]) -> str:
    return ", ".join(f"{t:.3f}" for t in times) + " s"


# ---- start-up and --check-config ----------------------------------------------------------------


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nobody listens there


def _config(tmp_path: Path, database_url: str) -> Path:
    sock_dir = tmp_path / "run"
    sock_dir.mkdir(mode=0o750, exist_ok=True)
    config: dict[str, dict[str, Any]] = {
        "daemon": {"socket_path": str(sock_dir / "w.sock"), "state_dir": str(tmp_path / "state")},
        "monero": {
            "daemon_address": "127.0.0.1:1",
            "wallet_dir": str(tmp_path / "wallets"),
            "spare_processes": 0,
        },
        "monitor": {"enabled": False},
        "cluster": {"database_url": database_url, "host_id": "h1", "lease_ttl": TTL},
    }
    return write_config(tmp_path / "w.toml", config)


def test_start_with_the_database_down_says_which_and_why_in_one_json_line(
    tmp_path: Path,
) -> None:
    """walletd started while its cluster database cannot be reached exits 1 (systemd retries: it
    may come up) with one JSON line naming `cluster.database_url`'s host and port and libpq's
    reason; no driver lines (every line is JSON), no traceback, never the password."""
    port = _dead_port()
    path = _config(tmp_path, f"postgresql://walletd:hunter2pw@127.0.0.1:{port}/walletd")
    done = run_walletd("--config", str(path))
    assert done.returncode == EXIT_RUNTIME, done
    lines = [json.loads(x) for x in done.stderr.splitlines()]  # JSON only: no driver lines
    errors = [x for x in lines if x["level"] == "error"]
    assert len(errors) == 1, done.stderr
    line = errors[0]
    assert line["event"] == "cannot start"
    assert f"cluster.database_url (127.0.0.1:{port})" in line["error"], line
    assert "refused" in line["error"].lower(), line
    assert "hunter2pw" not in done.stderr + done.stdout


def test_check_config_probes_the_database_when_asked(tmp_path: Path) -> None:
    """`--check-config` stays offline (what `systemctl reload` runs); `--check-database` adds a
    connection to the cluster database: a line naming the key, host and port when it cannot be
    reached (exit 1, as at start-up), OK when it can."""
    port = _dead_port()
    path = _config(tmp_path, f"postgresql://walletd:hunter2pw@127.0.0.1:{port}/walletd")
    offline = run_walletd("--config", str(path), "--check-config")
    assert (offline.returncode, offline.stdout.strip()) == (0, "OK"), offline
    down = run_walletd("--config", str(path), "--check-config", "--check-database")
    assert down.returncode == EXIT_RUNTIME, down
    assert f"cluster.database_url (127.0.0.1:{port})" in down.stderr, down.stderr
    assert len(down.stderr.splitlines()) == 1, down.stderr
    assert "hunter2pw" not in down.stderr + down.stdout
    good = _config(tmp_path, admin_url())
    up = run_walletd("--config", str(good), "--check-config", "--check-database")
    assert (up.returncode, up.stdout.strip()) == (0, "OK"), up


async def test_a_job_on_a_server_that_stopped_answering_is_cut(db_url: str) -> None:
    """A server process that stops answering on a live socket (here: the job's own backend
    SIGSTOPped) runs none of its own timeouts; walletd cuts the job's connection once it has run
    past its bound, so the job fails (503) and frees its slot instead of hanging for ever."""
    if os.geteuid() != 0:
        pytest.skip("signalling the server's backend needs root (it runs as postgres)")
    bounds = attrs.evolve(bounds_for(TTL), job=1.0)
    db = Database(db_url, max_size=2, bounds=bounds)
    await db.open()
    stopped: list[int] = []

    def hang(conn: Connection) -> None:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        stopped.append(int(row[0]))
        os.kill(stopped[0], signal.SIGSTOP)
        conn.execute("SELECT 1")  # no answer: the backend is stopped

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.watch)
            started = trio.current_time()
            # abandon_on_cancel: only so that the test itself fails (not hangs) without a bound
            with trio.fail_after(30), pytest.raises(ClusterUnavailable):
                await db.run(hang, abandon_on_cancel=True)
            took = trio.current_time() - started
            print(f"\nthe hung job failed after {took:.2f} s (bound {bounds.job:g} s)")
            assert db.cut == 1
            os.kill(stopped[0], signal.SIGCONT)
            while True:  # the watch probe lets calls through again
                try:
                    assert await db.run(_select_one) == 1
                    break
                except ClusterUnavailable:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await db.close()
