"""walletd itself as a real process (`python -m walletd --config ...`), for the regtest tests.

Running the daemon as a process, not in the test's trio loop, is what lets the tests send it
SIGTERM or SIGKILL and look at what it leaves behind: child processes, locks, stored wallets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

START_TIMEOUT = 60.0


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def children_of(pid: int) -> list[int]:
    """Direct child pids of `pid`, read from /proc."""
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


def wallet_rpc_pids() -> list[int]:
    """Every monero-wallet-rpc process on the machine."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("monero-wallet-r"):
                pids.append(int(entry))
    return pids


class WalletdProcess:
    def __init__(
        self,
        root: Path,
        daemon_address: str,
        *,
        env: dict[str, str] | None = None,
        **sections: dict[str, Any],
    ) -> None:
        self.root = root
        self.env = env or {}
        # A short path (AF_UNIX limit) in a directory only we can write, as walletd demands.
        self.socket = Path(tempfile.mkdtemp(prefix="wd-", dir="/tmp")) / "walletd.sock"
        self.wallet_dir = root / "wallets"
        self.state_dir = root / "state"
        base: dict[str, dict[str, Any]] = {
            "daemon": {"socket_path": str(self.socket), "state_dir": str(self.state_dir)},
            "monero": {"daemon_address": daemon_address, "wallet_dir": str(self.wallet_dir)},
            "log": {"level": "debug", "format": "json"},
        }
        for name, values in sections.items():
            base.setdefault(name, {}).update(values)
        self.config = root / "walletd.toml"
        root.mkdir(parents=True, exist_ok=True)
        self.wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lines = []
        for name, values in base.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = root / "walletd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WalletdProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "walletd", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"walletd exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket))) as c:
                    c.get("http://walletd/v1/health", timeout=5)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"walletd did not answer in {START_TIMEOUT} s: {self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
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
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kids = self.children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in kids:  # never leave a wallet-rpc behind, even if walletd failed to
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


async def events_of(client: httpx.AsyncClient, type_: str) -> list[dict[str, Any]]:
    """Every event of `type_` so far."""
    body = (await client.get("/v1/events", params={"after": 0})).json()
    return [e for e in body["events"] if e["type"] == type_]


async def wait_event(
    client: httpx.AsyncClient, type_: str, escrow_id: str | None = None
) -> dict[str, Any]:
    """Long-poll /v1/events until an event of `type_` (for `escrow_id`) arrives."""
    after = 0
    while True:
        body = (await client.get("/v1/events", params={"after": after, "timeout": 30})).json()
        for event in body["events"]:
            if event["type"] == type_ and escrow_id in (None, event["escrow_id"]):
                return dict(event)
        after = body["next"]
