"""walletd as a real process (`python -m walletd --config ...`), as a deployment runs it.

The regtest tests use it to send walletd SIGTERM or SIGKILL and look at what it leaves behind
(children, locks, stored wallets); the benchmarks use it to measure walletd from outside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from walletd.testing.regtest import stop_process

__all__ = ["WalletdProcess", "children_of", "toml_value", "write_config"]

# sd_listen_fds' side of socket activation: the socket at fd 3, LISTEN_PID = the pid that execs.
_ACTIVATION_SHIM = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.argv[2], sys.argv[2:])
"""


def toml_value(value: Any) -> str:
    """`value` written as TOML (the few shapes a walletd config uses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, config: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write `config` (section -> key -> value) to `path` as a walletd TOML file; returns it."""
    lines: list[str] = []
    for name, values in config.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def children_of(pid: int) -> list[int]:
    """Direct child pids of `pid` that are not zombies, read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


class WalletdProcess:
    """One walletd process with its own config, socket, wallet dir and state dir under `root`.

    `sections` are config tables merged over the defaults (e.g. `sessions={"max_active": 3}`)."""

    def __init__(
        self,
        root: Path,
        daemon_address: str,
        *,
        log_level: str = "debug",
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
        **sections: Mapping[str, Any],
    ) -> None:
        self.root = root
        self.env = dict(env or {})
        self._preexec_fn = preexec_fn
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        # A short path (AF_UNIX limit) in a directory only we can write, as walletd demands.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="wd-", dir="/tmp"))
        self.socket = self._sock_dir / "walletd.sock"
        self.wallet_dir = root / "wallets"
        self.state_dir = root / "state"
        config: dict[str, dict[str, Any]] = {
            "daemon": {"socket_path": str(self.socket), "state_dir": str(self.state_dir)},
            "monero": {"daemon_address": daemon_address, "wallet_dir": str(self.wallet_dir)},
            "log": {"level": log_level, "format": "json"},
        }
        for name, values in sections.items():
            config.setdefault(name, {}).update(values)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config = write_config(root / "walletd.toml", config)
        self.log_path = root / "walletd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, listen_socket: socket.socket | None = None) -> WalletdProcess:
        """Start walletd and wait until /v1/health answers on its socket.

        With `listen_socket` (bound at `self.socket` and listening) walletd is started as
        systemd's socket activation starts it: that socket as fd 3, LISTEN_FDS=1 and LISTEN_PID
        its own pid (set by a shim that then execs walletd, as systemd does between fork and
        exec)."""
        argv = [sys.executable, "-m", "walletd", "--config", str(self.config)]
        pass_fds: tuple[int, ...] = ()
        if listen_socket is not None:
            fd = listen_socket.fileno()
            argv = [sys.executable, "-c", _ACTIVATION_SHIM, str(fd), *argv]
            pass_fds = (fd,)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                preexec_fn=self._preexec_fn,
                pass_fds=pass_fds,
            )
        deadline = time.monotonic() + self._start_timeout
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://walletd", timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"walletd exited {self.proc.returncode}: {self.log_tail()}")
                try:
                    client.get("/v1/health")
                    return self
                except httpx.TransportError:
                    time.sleep(0.1)
        raise RuntimeError(f"walletd did not answer in {self._start_timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (walletd stores and closes every wallet), SIGKILL if it hangs; then SIGKILL
        any wallet-rpc child it left, so no test or benchmark leaves a process behind."""
        if self.proc is not None and self.proc.poll() is None:
            kids = self.children()
            stop_process(self.proc, self._stop_timeout)
            for pid in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def client(self, timeout: float = 120.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            base_url="http://walletd",
            timeout=timeout,
        )

    def children(self) -> list[int]:
        return children_of(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 90.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def __enter__(self) -> WalletdProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
