"""walletd as a real process (`python -m walletd --config ...`), as a deployment runs it.

Like tests/regtest/walletd_proc.py, plus what the benchmark needs: external wallet-rpc endpoints
in the config (a list of tables), info-level logs (debug logging would be measured too), and
helpers to wait for escrow states over the socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import trio

from bench.procs import children_of, die_with_parent
from walletd.ids import Role

__all__ = ["BenchWalletd", "adopt_body", "wait_escrows"]

START_TIMEOUT = 90.0
STOP_TIMEOUT = 90.0
XMR = 10**12


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class BenchWalletd:
    def __init__(self, root: Path, daemon_address: str, **sections: Mapping[str, Any]) -> None:
        self.root = root
        # AF_UNIX paths are short: the socket lives in a private directory under /tmp.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="wdb-", dir="/tmp"))
        self.socket = self._sock_dir / "walletd.sock"
        self.wallet_dir = root / "wallets"
        self.state_dir = root / "state"
        config: dict[str, dict[str, Any]] = {
            "daemon": {"socket_path": str(self.socket), "state_dir": str(self.state_dir)},
            "monero": {"daemon_address": daemon_address, "wallet_dir": str(self.wallet_dir)},
            "log": {"level": "info", "format": "json"},
        }
        for name, values in sections.items():
            config.setdefault(name, {}).update(values)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config = root / "walletd.toml"
        lines: list[str] = []
        for name, values in config.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = root / "walletd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> BenchWalletd:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "walletd", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://walletd", timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"walletd exited {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    client.get("/v1/health")
                    return self
                except httpx.TransportError:
                    time.sleep(0.1)
        raise RuntimeError(f"walletd did not answer within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """SIGTERM (walletd stores and closes every wallet); SIGKILL whatever is left."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            kids = children_of(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in kids:  # never leave a wallet-rpc behind, even if walletd failed to
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    def client(self, timeout: float = 180.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            base_url="http://walletd",
            timeout=timeout,
        )

    def children(self) -> list[int]:
        return children_of(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> BenchWalletd:
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


def adopt_body(
    escrow_id: str, files: Mapping[Role, str], password: str, amount: int = XMR
) -> dict[str, Any]:
    return {
        "escrow_id": escrow_id,
        "amount": amount,
        "wallets": {role: {"file": f, "password": password} for role, f in files.items()},
    }


async def wait_escrows(
    client: httpx.AsyncClient, ids: list[str], *, state: str | None = None, timeout: float = 180
) -> None:
    """Until every escrow is in `state`, or (without one) has been checked by the monitor."""
    with trio.fail_after(timeout):
        pending = list(ids)
        while pending:
            body = (await client.get(f"/v1/escrows/{pending[0]}")).json()
            done = body["state"] == state if state else body["funding"]["checked_at"] is not None
            if done:
                pending.pop(0)
            else:
                await trio.sleep(0.25)
