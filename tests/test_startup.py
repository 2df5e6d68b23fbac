"""walletd as a process, as systemd runs it: `--check-config`, the exit code and the one line of a
start-up failure, and SIGHUP. No monerod and no wallet-rpc child is needed (spare_processes = 0)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from tests.fakes import fake_app
from tests.harness import run_walletd
from walletd.daemon import reload as reload_module
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool
from walletd.testing.walletd_process import WalletdProcess, toml_value, write_config

EXIT_RUNTIME, EXIT_CONFIG = 1, 2


def _good(tmp_path: Path) -> dict[str, dict[str, Any]]:
    sock_dir = tmp_path / "run"
    sock_dir.mkdir(mode=0o750)
    return {
        "daemon": {"socket_path": str(sock_dir / "w.sock"), "state_dir": str(tmp_path / "state")},
        "monero": {"daemon_address": "127.0.0.1:1", "wallet_dir": str(tmp_path / "wallets")},
        "monitor": {"enabled": False},
    }


def _with(config: dict[str, dict[str, Any]], section: str, **values: Any) -> dict[str, Any]:
    return {**config, section: {**config.get(section, {}), **values}}


def test_check_config_says_ok_for_a_good_config(tmp_path: Path) -> None:
    """`walletd --check-config` on a usable config prints OK and exits 0, creating nothing."""
    path = write_config(tmp_path / "w.toml", _good(tmp_path))
    done = run_walletd("--config", str(path), "--check-config")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "OK", "")
    assert not (tmp_path / "state").exists()


def test_check_config_lists_every_problem_by_key(tmp_path: Path) -> None:
    """Each check start-up runs without the daemon is run: a missing wallet-rpc binary, a socket
    directory others may write, a state dir that is a file: one line each, naming the key;
    exit 2."""
    config = _good(tmp_path)
    os.chmod(tmp_path / "run", 0o770)  # noqa: S103 (the unsafe socket directory under test)
    (tmp_path / "a-file").write_text("")
    config = _with(config, "monero", wallet_rpc_path=str(tmp_path / "no-such-wallet-rpc"))
    config = _with(config, "daemon", state_dir=str(tmp_path / "a-file"))
    done = run_walletd("--config", str(write_config(tmp_path / "w.toml", config)), "--check-config")
    assert done.returncode == EXIT_CONFIG, done
    lines = done.stderr.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("walletd: monero.wallet_rpc_path: ")
    assert lines[0].endswith("not found")
    assert lines[1].startswith("walletd: daemon.state_dir: ")
    assert lines[1].endswith("is not a directory")
    assert lines[2].startswith("walletd: daemon.socket_path: ")
    assert lines[2].endswith("writable by nobody else")
    assert done.stdout == ""


def test_check_config_finds_a_binary_that_is_not_executable(tmp_path: Path) -> None:
    """A wallet-rpc path that is a file without the execute bit is named as such."""
    binary = tmp_path / "monero-wallet-rpc"
    binary.write_text("")
    config = _with(_good(tmp_path), "monero", wallet_rpc_path=str(binary))
    done = run_walletd("--config", str(write_config(tmp_path / "w.toml", config)), "--check-config")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip().endswith(f"monero.wallet_rpc_path: {binary} is not executable")


BAD_CONFIGS: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
    ("missing file", lambda c: "", "not found"),
    ("bad TOML", lambda c: "[daemon\n", "not valid TOML"),
    ("wrong type", lambda c: '[sessions]\nmax_active = "ten"\n', "sessions.max_active"),
    ("unknown key", lambda c: "[sessions]\nmax_actve = 3\n", "sessions.max_actve: unknown key"),
    ("bad address", lambda c: '[monero]\ndaemon_address = "10.1.2.3:18081"\n', "daemon_address"),
    (
        "missing binary",
        lambda c: "\n".join(
            [
                f"[daemon]\nsocket_path = {toml_value(c['daemon']['socket_path'])}",
                f"state_dir = {toml_value(c['daemon']['state_dir'])}",
                f"[monero]\nwallet_dir = {toml_value(c['monero']['wallet_dir'])}",
                'wallet_rpc_path = "/nonexistent/monero-wallet-rpc"\n',
            ]
        ),
        "monero.wallet_rpc_path: /nonexistent/monero-wallet-rpc not found",
    ),
]


@pytest.mark.parametrize(("case", "text", "named"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_stops_start_up_with_one_line_and_exit_2(
    tmp_path: Path, case: str, text: Callable[[dict[str, Any]], str], named: str
) -> None:
    """Started as systemd starts it, walletd with a bad config exits 2 (the code the unit's
    RestartPreventExitStatus= names, so it does not restart in a loop) and writes one line on
    stderr that names the key or the file, no traceback."""
    path = tmp_path / "w.toml"
    if case != "missing file":
        path.write_text(text(_good(tmp_path)))
    done = run_walletd("--config", str(path))
    assert done.returncode == EXIT_CONFIG, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()  # it touched nothing


def test_the_unit_does_not_restart_on_the_config_exit_code() -> None:
    """deploy/walletd.service restarts on failure but not on exit 2 (bad config)."""
    unit = (Path(__file__).parent.parent / "deploy" / "walletd.service").read_text()
    assert "Restart=on-failure" in unit.splitlines()
    assert f"RestartPreventExitStatus={EXIT_CONFIG}" in unit.splitlines()


def _log_lines(proc: WalletdProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]


def _wait_for(proc: WalletdProcess, event: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in _log_lines(proc):
            if line.get("event") == event:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} line in: {proc.log_tail()}")


def test_sighup_applies_log_level_and_names_keys_needing_a_restart(tmp_path: Path) -> None:
    """SIGHUP to a running walletd: a changed log.level applies at once (debug lines appear), a
    changed session cap applies, and the one reload line lists both changes with their old and
    new values and names the changed key that needs a restart."""
    sections: dict[str, Any] = {"monero": {"spare_processes": 0}, "monitor": {"enabled": False}}
    with WalletdProcess(tmp_path / "w", "127.0.0.1:1", log_level="info", **sections) as proc:
        transport = httpx.HTTPTransport(uds=str(proc.socket))
        with httpx.Client(transport=transport, base_url="http://walletd", timeout=10) as c:
            assert c.get("/v1/stats").json()["max_sessions"] == 10
            assert not [x for x in _log_lines(proc) if x["level"] == "debug"]
            text = proc.config.read_text()
            text = text.replace('level = "info"', 'level = "debug"')
            text = text.replace("spare_processes = 0", "spare_processes = 0\ncall_timeout = 9.5")
            proc.config.write_text(text + "[sessions]\nmax_active = 4\n")
            proc.signal(signal.SIGHUP)
            reloaded = _wait_for(proc, "config reloaded")
            assert reloaded["changed"] == {
                "log.level": ["info", "debug"],
                "sessions.max_active": [10, 4],
            }
            assert reloaded["restart_needed"] == ["monero.call_timeout"]
            assert c.get("/v1/stats").json()["max_sessions"] == 4
            _wait_for(proc, "http request")  # the stats call, logged at debug level


def test_sighup_with_no_change_says_so(tmp_path: Path) -> None:
    """A reload of an unchanged file still logs its line, with nothing changed."""
    sections: dict[str, Any] = {"monero": {"spare_processes": 0}, "monitor": {"enabled": False}}
    with WalletdProcess(tmp_path / "w", "127.0.0.1:1", log_level="info", **sections) as proc:
        proc.signal(signal.SIGHUP)
        reloaded = _wait_for(proc, "config reloaded")
        assert (reloaded["changed"], reloaded["restart_needed"]) == ({}, [])


def test_sighup_under_walletd_dev_says_it_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`walletd dev` builds its App without a config file (as here): SIGHUP's reload says so in
    a warning instead of silently doing nothing."""
    world = FakeWalletWorld()
    app = fake_app(tmp_path, world, FakePool(world))
    assert app.reloader.path is None  # as in walletd.cli.dev
    monkeypatch.setattr(reload_module, "log", structlog.get_logger(reload_module.__name__))
    with structlog.testing.capture_logs() as logs:
        app.reloader.reload()
    assert [(e["log_level"], e["event"], e["reason"]) for e in logs] == [
        ("warning", "reload ignored", "no config file to re-read (walletd dev); restart")
    ]


def test_a_vault_key_others_may_read_is_named_by_check_and_start(tmp_path: Path) -> None:
    """A state dir whose key file others may read: --check-config names it, and start-up stops
    with exit 2 and one line naming it (before: a traceback)."""
    config = _good(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    key = tmp_path / "state" / "walletd.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    path = write_config(tmp_path / "w.toml", config)
    checked = run_walletd("--config", str(path), "--check-config")
    assert checked.returncode == EXIT_CONFIG
    assert checked.stderr.splitlines() == [
        f"walletd: daemon.state_dir: {key}: key file must be mode 0600, is 0644"
    ]
    done = run_walletd("--config", str(path))
    assert done.returncode == EXIT_CONFIG, done
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert str(key) in done.stderr
    assert "Traceback" not in done.stderr


def test_a_file_in_the_socket_path_is_a_config_problem(tmp_path: Path) -> None:
    """A regular file where the socket goes: --check-config names daemon.socket_path, exit 2."""
    config = _good(tmp_path)
    Path(config["daemon"]["socket_path"]).write_text("")
    path = write_config(tmp_path / "w.toml", config)
    done = run_walletd("--config", str(path), "--check-config")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines() == [
        f"walletd: daemon.socket_path: {config['daemon']['socket_path']} exists and is not a socket"
    ]


def test_a_socket_another_server_listens_on_stops_start_up_in_one_line(tmp_path: Path) -> None:
    """Another server listening on the socket path (found only when binding): walletd exits 1
    (systemd may retry: it may be an old walletd going away) with one line, no traceback."""
    config = _good(tmp_path)
    config = _with(config, "monero", spare_processes=0)
    path = write_config(tmp_path / "w.toml", config)
    assert run_walletd("--config", str(path), "--check-config").returncode == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(config["daemon"]["socket_path"])
        other.listen(8)
        done = run_walletd("--config", str(path))
    assert done.returncode == EXIT_RUNTIME, done
    lines = [line for line in done.stderr.splitlines() if '"error"' in line]
    assert len(lines) == 1, done.stderr
    cannot = json.loads(lines[0])
    assert cannot["event"] == "cannot start"
    assert "another server is listening" in cannot["error"]
    assert config["daemon"]["socket_path"] in cannot["error"]
    assert "Traceback" not in done.stderr
