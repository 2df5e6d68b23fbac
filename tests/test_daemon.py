"""The whole daemon in-process (App.run) on fake wallet-rpc processes: signals, reload,
bounded shutdown, metrics. The socket is bound for real; requests go through `Api` directly."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.fakes import FakeDaemon, call, fake_app, make_fake_multisig, raw_call
from walletd.app import App
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool
from walletd.testing.walletd_process import WalletdProcess


async def _running(
    nursery: trio.Nursery, tmp_path: Path, n: int, **sessions: Any
) -> tuple[App, FakeWalletWorld, FakePool]:
    world = FakeWalletWorld()
    sets = [await make_fake_multisig(world, f"d{i}") for i in range(n)]
    pool = FakePool(world)
    app = fake_app(tmp_path, world, pool, chain=FakeDaemon(world), **sessions)
    await nursery.start(app.run)
    for i, s in enumerate(sets):
        status, body = await call(app, "POST", "/v1/escrows", s.adopt_body(f"d{i}"))
        assert status == 201, body
    return app, world, pool


async def test_sighup_reloads_limits(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """SIGHUP re-reads the config file: a lower cap evicts down to it, sessions stay otherwise;
    escrows made afterwards, created or adopted, default to the new required confirmations."""
    async with trio.open_nursery() as nursery:
        app, _, _ = await _running(nursery, tmp_path, 3, max_active=3)
        config = tmp_path / "walletd.toml"
        cfg = app.config
        config.write_text(
            f'[daemon]\nsocket_path = "{cfg.daemon.socket_path}"\n'
            f'state_dir = "{cfg.daemon.state_dir}"\n'
            f'[monero]\ndaemon_address = "127.0.0.1:1"\nwallet_dir = "{cfg.monero.wallet_dir}"\n'
            "[sessions]\nmax_active = 2\n[monitor]\nenabled = false\nrequired_confirmations = 7\n"
        )
        app.reloader.path = config
        os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(5)
        assert app.registry.limits.max_active == 2
        assert [s.escrow_id for s in app.registry.sessions()] == ["d2", "d1"]
        assert (await call(app, "GET", "/v1/stats"))[1]["max_sessions"] == 2
        status, body = await call(app, "POST", "/v1/escrows", {"escrow_id": "n1", "amount": 5})
        assert (status, body["required_confirmations"]) == (201, 7), body
        assert app.escrows.required_confirmations == 7  # what an adoption defaults to
        # A bad file is refused and the running limits stay.
        config.write_text("[sessions]\nmax_active = 0\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(5)
        assert app.registry.limits.max_active == 2
        app.request_stop()


async def test_shutdown_is_bounded_with_a_hung_wallet_rpc(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A wallet-rpc that never answers cannot hold shutdown past its bound."""
    async with trio.open_nursery() as nursery:
        app, _, pool = await _running(nursery, tmp_path, 2)
        for proc in pool.in_use.values():
            proc.fake.hang()
        started = trio.current_time()
        app.request_stop()
        await app.stopped.wait()
        assert trio.current_time() - started <= app.config.daemon.shutdown_timeout + 1


async def test_metrics_expose_the_operational_figures(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """/metrics is Prometheus text with sessions, opens/closes by reason, latency, escrows."""
    async with trio.open_nursery() as nursery:
        app, _, _ = await _running(nursery, tmp_path, 2, max_active=1)
        await call(app, "GET", "/v1/escrows/d0/balance")
        metrics = await raw_call(app, "GET", "/metrics")
        text = metrics.body.decode()
        assert metrics.content_type.startswith("text/plain")
        for needle in (
            "walletd_sessions_active 1.0",
            "walletd_sessions_max 1.0",
            'walletd_session_closes_total{reason="evicted"}',
            'walletd_wallet_rpc_call_seconds_count{method="get_balance"}',
            'walletd_escrows{state="awaiting_funding"} 2.0',
            "walletd_session_age_seconds_gcount 1.0",
            "walletd_wallet_rpc_restarts_total 0.0",
            "walletd_monitor_cycle_seconds",
        ):
            assert needle in text, needle
        app.request_stop()


async def test_encoded_slash_in_an_escrow_id_is_an_invalid_id(tmp_path: Path) -> None:
    """`GET /v1/escrows/d0%2Fbalance` through the socket is a bad escrow id (400), never a balance
    read: a percent-encoded `/` stays inside its path segment and cannot re-route a request."""
    async with trio.open_nursery() as nursery:
        app, _, _ = await _running(nursery, tmp_path, 1)
        transport = httpx.AsyncHTTPTransport(uds=str(app.config.daemon.socket_path))
        with trio.fail_after(20):
            async with httpx.AsyncClient(transport=transport, base_url="http://walletd") as c:
                for target in ("/v1/escrows/d0%2Fbalance", "/v1/escrows/d0%2fbalance"):
                    r = await c.get(target)
                    assert r.status_code == 400, (target, r.text)
                    assert r.json()["error"]["code"] == "invalid_request"
                    assert "balance" not in r.json()
                # Percent-encoding of ordinary characters still decodes, segment by segment.
                r = await c.get("/v1/escrows/%64%30/balance")
                assert r.status_code == 200, r.text
                assert "unlocked_balance" in r.json()
                r = await c.get("/v1/escrows/d0")
                assert r.status_code == 200, r.text
        app.request_stop()


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_second_walletd_on_the_same_state_dir_touches_nothing(tmp_path: Path) -> None:
    """A second walletd started on a state dir in use exits at once (non-zero, one line naming
    the state dir and the running walletd's pid); the first keeps its wallet-rpc children and
    keeps answering. Real processes and real monero-wallet-rpc children, no monerod."""
    daemon_address = f"127.0.0.1:{_unused_port()}"
    sections: dict[str, Any] = {
        "monero": {"spare_processes": 1},
        "monitor": {"enabled": False},
    }
    with WalletdProcess(tmp_path / "first", daemon_address, **sections) as first:
        children = first.children()
        assert children, "the first walletd started no wallet-rpc child"
        lock = str(first.state_dir / "walletd.lock")
        for pid in children:  # an orphaned child must never keep the next walletd out
            fds = Path(f"/proc/{pid}/fd")
            assert lock not in {os.readlink(fds / fd) for fd in os.listdir(fds)}
        second = WalletdProcess(
            tmp_path / "second",
            daemon_address,
            daemon={"state_dir": str(first.state_dir), "socket_path": str(first.socket)},
            monero={"spare_processes": 1, "wallet_dir": str(first.wallet_dir)},
            monitor={"enabled": False},
        )
        try:
            began = time.monotonic()
            with pytest.raises(RuntimeError, match="walletd exited"):
                second.start()
            assert time.monotonic() - began < 15
            assert second.proc is not None
            assert second.proc.returncode not in (0, None)
            refusal = [line for line in second.log_text().splitlines() if "cannot start" in line]
            assert len(refusal) == 1, second.log_text()
            assert str(first.state_dir) in refusal[0]
            assert str(first.pid) in refusal[0]
            assert "wallet-rpc" not in second.log_text()  # it started and stopped nothing
        finally:
            second.stop()
        assert all(_alive(pid) for pid in children)
        assert first.children() == children
        transport = httpx.HTTPTransport(uds=str(first.socket))
        with httpx.Client(transport=transport, base_url="http://walletd", timeout=10) as c:
            assert c.get("/v1/escrows").status_code == 200
