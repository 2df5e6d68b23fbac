"""/metrics as Prometheus sees it: what each series means, the loopback TCP listener of
`daemon.metrics_address`, and the text checked by Debian's `promtool check metrics`."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from prometheus_client import generate_latest

from tests.fakes import FakeDaemon, call, fake_config, fake_pool, raw_call
from tests.harness import AMOUNT, app_on_fakes, run_monitor
from walletd import __version__
from walletd.app import App, prepare_dirs
from walletd.config import parse_config
from walletd.errors import ConfigError
from walletd.ops.metrics import Metrics
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool

# The autojump clock leaps while a thread works (backups): no session may expire meanwhile.
IDLE_TTL = 10**9


async def _metrics(app: App) -> str:
    response = await raw_call(app, "GET", "/metrics")
    assert response.status == 200
    return response.body.decode()


def _value(text: str, series: str) -> float | None:
    """The value of one series (`name{labels}` exactly as exposed), or None if absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_until(app: App, series: str, wanted: float, timeout: float = 300) -> None:
    with trio.fail_after(timeout):
        while True:
            if _value(await _metrics(app), series) == wanted:
                return
            await trio.sleep(1)


async def test_session_ages_are_a_snapshot_that_does_not_reset(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Session ages are a gauge histogram of the sessions open now: bucket counts and a
    `_gcount`/`_gsum` that follow the open sessions, and no `_count`, `_sum` or `_created`
    that a scrape would reset (which made rate() and dashboards wrong)."""
    async with trio.open_nursery() as nursery:
        app, _, _ = await app_on_fakes(nursery, tmp_path, idle_ttl=IDLE_TTL)
        for escrow_id in ("a1", "a2"):
            body = {"escrow_id": escrow_id, "amount": AMOUNT}
            assert (await call(app, "POST", "/v1/escrows", body))[0] == 201
        await trio.sleep(600)
        first = await _metrics(app)
        # Ages as the registry has them (virtual time leaps while threads work: not fixed).
        ages = [info.age_s for info in app.registry.sessions()]
        assert "# TYPE walletd_session_age_seconds histogram" in first
        assert _value(first, "walletd_session_age_seconds_gcount") == 2
        assert _value(first, "walletd_session_age_seconds_gsum") == pytest.approx(sum(ages))
        for bound in (300.0, 900.0, 86400.0):
            series = f'walletd_session_age_seconds_bucket{{le="{bound}"}}'
            assert _value(first, series) == sum(1 for age in ages if age <= bound), series
        for gone in ("_count", "_sum", "_created"):
            assert f"walletd_session_age_seconds{gone}" not in first, gone
        assert (await call(app, "DELETE", "/v1/escrows/a1/session"))[0] == 200
        second = await _metrics(app)
        assert _value(second, "walletd_session_age_seconds_gcount") == 1
        assert _value(second, 'walletd_session_age_seconds_bucket{le="+Inf"}') == 1
        nursery.cancel_scope.cancel()


async def test_api_requests_are_counted_by_route_template(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """API requests are counted by route template, method and status, with their latency;
    no escrow id ever becomes a label value, and unknown paths and methods share one label."""
    async with trio.open_nursery() as nursery:
        app, _, _ = await app_on_fakes(nursery, tmp_path, idle_ttl=IDLE_TTL)
        body = {"escrow_id": "order-77", "amount": AMOUNT}
        assert (await call(app, "POST", "/v1/escrows", body))[0] == 201
        assert (await call(app, "GET", "/v1/escrows/order-77"))[0] == 200
        assert (await call(app, "GET", "/v1/escrows/order-78"))[0] == 404
        assert (await call(app, "GET", "/v1/escrows/order-77/balance"))[0] == 200
        assert (await call(app, "GET", "/no/such/path"))[0] == 404
        assert (await call(app, "BREW", "/v1/escrows"))[0] == 405
        text = await _metrics(app)
        route = '{method="GET",route="/v1/escrows/{id}",status="%s"}'
        assert _value(text, "walletd_api_requests_total" + route % 200) == 1
        assert _value(text, "walletd_api_requests_total" + route % 404) == 1
        created = '{method="POST",route="/v1/escrows",status="201"}'
        assert _value(text, "walletd_api_requests_total" + created) == 1
        assert _value(
            text, 'walletd_api_requests_total{method="GET",route="unmatched",status="404"}'
        )
        assert _value(
            text, 'walletd_api_requests_total{method="other",route="/v1/escrows",status="405"}'
        )
        latency = 'walletd_api_request_seconds_count{method="GET",route="/v1/escrows/{id}/balance"}'
        assert _value(text, latency) == 1
        assert "order-7" not in text
        nursery.cancel_scope.cancel()


async def test_payouts_by_kind_and_outcome_and_monitor_lag(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A refund counts as submitted, then confirmed once the monitor sees it confirmed; the
    monitor's lag is the blocks monerod is ahead of the last finished cycle: it grows while a
    stuck wallet holds a cycle and is back to 0 once a cycle finishes."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path, idle_ttl=IDLE_TTL)
        await run_monitor(nursery, app)
        _, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "p1", "amount": AMOUNT})
        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        with trio.fail_after(300):
            while True:
                if (await call(app, "GET", "/v1/escrows/p1"))[1]["state"] == "ready":
                    break
                await trio.sleep(1)
        buyer = world.add_wallet("b1", "x")
        status, _ = await call(app, "POST", "/v1/escrows/p1/refund", {"address": buyer.address})
        assert status == 202
        text = await _metrics(app)
        refund = 'walletd_payouts_total{kind="refund",outcome="%s"}'
        assert _value(text, refund % "submitted") == 1
        assert _value(text, refund % "confirmed") == 0
        assert _value(text, 'walletd_payouts_total{kind="release",outcome="submitted"}') == 0
        world.mine(10)
        await _wait_until(app, refund % "confirmed", 1)
        await _wait_until(app, "walletd_monitor_lag_blocks", 0)

        # A second escrow whose wallet-rpc stops answering holds the next cycle up.
        _, stuck = await call(app, "POST", "/v1/escrows", {"escrow_id": "p2", "amount": AMOUNT})
        await _wait_until(app, "walletd_monitor_lag_blocks", 0)
        fake_pool(app).fake_of("escrow-p2-buyer").hang()
        cycles = app.monitor.statistics().cycles
        world.mine(3)
        with trio.fail_after(60):
            while True:
                # the cycle at the new height has begun
                if app.monitor.statistics().cycles > cycles:
                    break
                await trio.sleep(1)
        world.mine(4)
        await _wait_until(app, "walletd_monitor_lag_blocks", 7, timeout=60)
        assert stuck["state"] == "awaiting_funding"
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_promtool_finds_nothing_to_complain_about(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """`promtool check metrics` (Prometheus's own linter) passes the whole /metrics text, with
    every kind of series present: build info, sessions, rpc calls, API requests, payouts."""
    async with trio.open_nursery() as nursery:
        app, _, _ = await app_on_fakes(nursery, tmp_path, idle_ttl=IDLE_TTL)
        assert (await call(app, "POST", "/v1/escrows", {"escrow_id": "q1", "amount": AMOUNT}))[
            0
        ] == 201
        assert (await call(app, "GET", "/v1/escrows/q1/balance"))[0] == 200
        text = await _metrics(app)
        assert f'walletd_build_info{{version="{__version__}"}} 1.0' in text
        result = await trio.run_process(
            ["promtool", "check", "metrics"],
            stdin=text.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, (result.stdout + result.stderr).decode()
        assert result.stdout + result.stderr == b""
        nursery.cancel_scope.cancel()


def test_wallet_open_latency_has_buckets_past_ten_seconds() -> None:
    """wallet-rpc calls (open_wallet takes over 10 s on a loaded host) have buckets to 120 s."""
    metrics = Metrics()
    metrics.observe_rpc("open_wallet", 45.0)
    text = generate_latest(metrics.registry).decode()
    series = 'walletd_wallet_rpc_call_seconds_bucket{le="%s",method="open_wallet"}'
    assert _value(text, series % "30.0") == 0
    assert _value(text, series % "60.0") == 1
    assert _value(text, series % "120.0") == 1


# ---- daemon.metrics_address ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["0.0.0.0:9464", "192.168.1.5:9464", "[::]:9464", "example.org:9464", "9464"]
)
def test_metrics_address_must_be_loopback(address: str) -> None:
    """Anything but a loopback host:port is refused, the message naming the key."""
    with pytest.raises(ConfigError, match=r"^daemon\.metrics_address: .*(loopback|host:port)"):
        parse_config({"daemon": {"metrics_address": address}})


@pytest.mark.parametrize("address", ["", "127.0.0.1:9464", "[::1]:9464", "localhost:9464"])
def test_metrics_address_takes_loopback_or_nothing(address: str) -> None:
    """Off by default (""); a loopback host:port is taken as written."""
    assert parse_config({"daemon": {"metrics_address": address}}).daemon.metrics_address == address
    assert parse_config({}).daemon.metrics_address == ""


def _app_with_metrics(tmp_path: Path, address: str) -> App:
    world = FakeWalletWorld()
    config = fake_config(tmp_path)
    config = attrs.evolve(config, daemon=attrs.evolve(config.daemon, metrics_address=address))
    prepare_dirs(config)
    return App(config, pool=FakePool(world), chain=FakeDaemon(world))


async def test_metrics_address_serves_metrics_and_nothing_else(tmp_path: Path) -> None:
    """With `daemon.metrics_address` set, Prometheus can scrape walletd over loopback TCP:
    GET /metrics answers the Prometheus text; every other path is 404 (the socket API is not
    reachable over TCP) and another method on /metrics is 405 with Allow."""
    port = _unused_port()
    app = _app_with_metrics(tmp_path, f"127.0.0.1:{port}")
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            r = await client.get("/metrics")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/plain; version=")
            assert re.search(r"^walletd_build_info\{version=\S+\} 1\.0$", r.text, re.MULTILINE)
            for path in ("/v1/health", "/v1/escrows", "/", "/metrics/x"):
                r = await client.get(path)
                assert r.status_code == 404, path
                assert r.json()["error"]["code"] == "not_found"
            r = await client.post("/metrics", content=b"")
            assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
            r = await client.head("/metrics")
            assert (r.status_code, r.content) == (200, b"")
        app.request_stop()
    with pytest.raises(ConnectionRefusedError):  # closed at shutdown
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_metrics_address_taken_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    """A metrics port already in use stops start-up before anything starts, naming the key."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = _app_with_metrics(tmp_path, f"127.0.0.1:{port}")
        with pytest.raises(ConfigError, match=rf"^daemon\.metrics_address: .*127\.0\.0\.1:{port}"):
            await app.run()
    assert not app.config.daemon.socket_path.exists()


def test_a_taken_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """From the command line, a taken metrics port is one log line naming the key and exit
    code 2 (a configuration error), not a traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "walletd.toml"
        config.write_text(
            f'[daemon]\nsocket_path = "{tmp_path}/w.sock"\nstate_dir = "{tmp_path}/state"\n'
            f'metrics_address = "127.0.0.1:{port}"\n'
            f'[monero]\ndaemon_address = "127.0.0.1:1"\nwallet_dir = "{tmp_path}/wallets"\n'
            'wallet_rpc_path = "/bin/false"\n'
        )
        result = subprocess.run(
            [sys.executable, "-m", "walletd", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [json.loads(line) for line in result.stderr.splitlines() if '"error"' in line]
    assert [e["event"] for e in errors] == ["cannot start"], result.stderr
    assert errors[0]["error"].startswith(
        f"daemon.metrics_address: cannot listen on 127.0.0.1:{port}"
    )
