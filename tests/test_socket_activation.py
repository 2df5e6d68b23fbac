"""systemd socket activation: walletd serves the listening socket systemd passes (LISTEN_FDS).

walletd runs as a real process started the way systemd starts it (the socket as fd 3,
LISTEN_FDS=1, LISTEN_PID its pid); no wallet-rpc child and no monerod are needed for /v1/stats.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from walletd.api.socket_file import listened_socket
from walletd.testing.walletd_process import WalletdProcess


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def walletd(tmp_path: Path) -> Iterator[WalletdProcess]:
    wd = WalletdProcess(
        tmp_path / "w",
        f"127.0.0.1:{_unused_port()}",
        monero={"spare_processes": 0},
        monitor={"enabled": False},
    )
    try:
        yield wd
    finally:
        wd.stop()


def _listen(path: Path, mode: int = 0o660) -> socket.socket:
    """What systemd does for `ListenStream=path` with `SocketMode=mode`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(path))
    os.chmod(path, mode)
    sock.listen(16)
    return sock


def _ask(path: Path) -> socket.socket:
    """A client that connects and sends GET /v1/stats (it is answered whenever walletd runs)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(120)  # a hang guard, not an assertion
    client.connect(os.fspath(path))
    client.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: walletd\r\nConnection: close\r\n\r\n")
    return client


def _answer(client: socket.socket) -> tuple[str, dict[str, object]]:
    data = b""
    with client:
        while chunk := client.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    answer: dict[str, object] = json.loads(body)
    return head.split(b"\r\n", 1)[0].decode(), answer


def test_clients_queue_while_walletd_is_down(walletd: WalletdProcess) -> None:
    """A client that connects before walletd runs, or while it restarts, gets its answer once
    walletd is up on the inherited socket; walletd leaves the socket file (systemd's) in place."""
    listener = _listen(walletd.socket)
    with listener:
        early = _ask(walletd.socket)  # connected and sent before walletd exists
        walletd.start(listen_socket=listener)
        status, body = _answer(early)
        assert status == "HTTP/1.1 200 OK"
        assert "max_sessions" in body

        walletd.signal(signal.SIGTERM)
        assert walletd.wait() == 0
        assert walletd.socket.is_socket()  # not unlinked: it belongs to systemd
        during = _ask(walletd.socket)  # walletd is down: the connection waits in the backlog
        walletd.start(listen_socket=listener)
        status, body = _answer(during)
        assert status == "HTTP/1.1 200 OK"
        assert "max_sessions" in body
    assert "inherited" in walletd.log_text()


def test_inherited_socket_with_another_mode_is_refused(walletd: WalletdProcess) -> None:
    """A socket whose file mode differs from daemon.socket_mode (SocketMode= and socket_mode
    disagree) stops start-up with one line naming both, exit 2, and nothing served."""
    listener = _listen(walletd.socket, mode=0o666)
    with listener, pytest.raises(RuntimeError, match="walletd exited 2"):
        walletd.start(listen_socket=listener)
    refusal = [line for line in walletd.log_text().splitlines() if "cannot start" in line]
    assert len(refusal) == 1, walletd.log_text()
    assert "SocketMode=" in refusal[0]
    assert "daemon.socket_mode" in refusal[0]
    assert "Traceback" not in walletd.log_text()


def test_listen_variables_for_another_process_are_ignored_and_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """LISTEN_PID naming another process (the variables were meant for a parent) means no
    socket was passed; the variables are unset either way, so no child inherits them."""
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "walletd.socket")
    assert listened_socket(tmp_path / "s.sock", 0o660) is None
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)


DEPLOY = Path(__file__).parent.parent / "deploy"


def _unit(name: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (every section; repeated keys keep every value)."""
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_socket_unit_matches_the_shipped_config() -> None:
    """deploy/walletd.socket binds where deploy/walletd.toml serves, with its mode, owned by
    walletd: walletd would refuse the inherited socket otherwise. The service keeps /run/walletd
    at stop, so the socket outlives walletd's restarts."""
    config = tomllib.loads((DEPLOY / "walletd.toml").read_text())["daemon"]
    socket_unit = _unit("walletd.socket")
    assert socket_unit["ListenStream"] == [config["socket_path"]]
    assert socket_unit["SocketMode"] == [config["socket_mode"]]
    assert socket_unit["SocketUser"] == _unit("walletd.service")["User"]
    assert _unit("walletd.service")["RuntimeDirectoryPreserve"] == ["yes"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_service_system_call_filter_leaves_nothing_flagged() -> None:
    """`systemd-analyze security --offline=yes` flags no system call group of walletd.service:
    @privileged and @resources are denied on top of @system-service."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", "walletd.service"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flagged = [line for line in out.splitlines() if line.startswith("✗")]
    assert flagged, out  # the report was read (some settings are absent on purpose)
    assert not [line for line in flagged if "SystemCallFilter" in line], out
