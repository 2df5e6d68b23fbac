"""walletd under systemd socket activation (`walletd.socket`), with the fds passed by hand."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from walletd.api.socket_file import inherited_unix
from walletd.testing.walletd_process import WalletdProcess

# What systemd does between fork and exec: the socket at fd 3, LISTEN_PID = the service's pid.
_SHIM = """
import os, sys
fd = int(os.environ.pop("SHIM_FD"))
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "walletd", "--config", sys.argv[1]])
"""


def test_client_connected_before_walletd_started_gets_its_answer(tmp_path: Path) -> None:
    """A client that connects to the socket (held by "systemd") before walletd runs is queued,
    not refused, and gets its GET /v1/escrows answer once walletd starts on the inherited fd 3; at
    exit walletd leaves the socket file, which belongs to the socket unit. No monerod, no
    wallet-rpc child (spare_processes 0)."""
    wd = WalletdProcess(
        tmp_path,
        "127.0.0.1:1",
        monero={"spare_processes": 0},
        monitor={"enabled": False},
    )
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(wd.socket))
    os.chmod(wd.socket, 0o660)
    listening.listen(16)
    early = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    early.connect(str(wd.socket))  # succeeds into the backlog: nobody accepts yet
    early.sendall(b"GET /v1/escrows HTTP/1.1\r\nHost: walletd\r\nConnection: close\r\n\r\n")
    with wd.log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SHIM, str(wd.config)],
            env={**os.environ, "SHIM_FD": str(listening.fileno())},
            pass_fds=(listening.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    wd.proc = proc  # so that stop() stops it
    try:
        early.settimeout(60)
        answer = b""
        while chunk := early.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), (answer, wd.log_tail())
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"escrows": []}
    finally:
        early.close()
        listening.close()
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0, wd.log_tail()
    assert wd.socket.exists()  # systemd's file: walletd did not unlink it
    wd.stop()


def test_stale_listen_variables_are_ignored_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LISTEN_* meant for another process (LISTEN_PID not ours) mean "not activated", and are
    removed from the environment so that no child inherits them."""
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert inherited_unix(tmp_path / "s.sock") is None
    assert "LISTEN_PID" not in os.environ
    assert "LISTEN_FDS" not in os.environ


def test_activated_socket_at_another_path_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inherited socket bound somewhere else than daemon.socket_path stops start-up with an
    error naming both paths, instead of serving the API where clients do not expect it."""
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(tmp_path / "other.sock"))
    other.listen(1)
    saved = os.dup(3) if _fd_open(3) else None
    try:
        os.dup2(other.fileno(), 3)
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        monkeypatch.setenv("LISTEN_FDS", "1")
        with pytest.raises(ValueError, match=r"other\.sock.*walletd\.sock"):
            inherited_unix(tmp_path / "walletd.sock")
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        other.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
