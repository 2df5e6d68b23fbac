"""Several walletd hosts on one PostgreSQL and one monerod, for the cluster regtest tests (#14).

Each host is its own walletd process (a `CrashableWalletd`: it can be killed and started again on
the same root) with its own state dir, wallet dir (hosts share no disk), socket and log, and the
same `[cluster] database_url` with its own `host_id`. Besides the database the hosts share one
secret: the vault key (`state_dir/walletd.key`), from which walletd derives the password of every
wallet it creates, so any host can open any escrow's wallets. A deployment provisions it on every
host like any other secret; the harness writes it before each start, also after a wiped disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import trio

from tests.regtest.crash_helpers import CrashableWalletd, keys_holders, stray_wallet_rpcs
from tests.regtest.harness import MONITOR
from tests.regtest.walletd_proc import WalletdProcess

__all__ = ["Cluster", "ClusterHost", "cluster_on", "metric_value", "wallets_held"]

VAULT_KEY_BYTES = 32


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text exposition (`labels` as written: 'direction="sent"');
    0 when the sample is absent (a counter never incremented may not be shown)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def wallets_held(wallet_dir: Path, escrow_id: str) -> dict[str, set[int]]:
    """Which processes hold the `.keys` files of `escrow_id`'s wallets in `wallet_dir` open."""
    prefix = f"escrow-{escrow_id}-"
    return {f: p for f, p in keys_holders(wallet_dir).items() if f.startswith(prefix)}


class ClusterHost(CrashableWalletd):
    """One host of the cluster: a walletd root started with `[cluster] host_id = <host_id>`."""

    def __init__(
        self, host_id: str, root: Path, daemon_address: str, vault_key: bytes, **sections: Any
    ) -> None:
        super().__init__(root, daemon_address, **sections)
        self.host_id = host_id
        self._vault_key = vault_key
        self.stopped = False  # SIGSTOPped and not yet continued

    async def start(self, failpoints: Sequence[str] = ()) -> WalletdProcess:
        """Provision the shared vault key (as a deployment would), then start walletd."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.state_dir / "walletd.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._vault_key)
        return await super().start(failpoints)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return (
            self.proc is not None and self.proc.proc is not None and self.proc.proc.poll() is None
        )

    def pause(self) -> None:
        """SIGSTOP: the process and its threads stop; its sockets still accept connections."""
        assert self.proc is not None
        self.proc.signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGCONT)
        self.stopped = False

    def wipe_disk(self) -> None:
        """The host's disk is lost: its whole wallet dir and state dir are gone."""
        assert not self.alive(), "wipe the disk of a stopped host"
        shutil.rmtree(self.wallet_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def log_size(self) -> int:
        assert self.proc is not None
        return self.proc.log_path.stat().st_size if self.proc.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        assert self.proc is not None
        with self.proc.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")

    async def metrics(self) -> str:
        async with self.client(timeout=30) as client:
            r = await client.get("/metrics")
            assert r.status_code == 200, r.text
            return r.text

    def close(self) -> None:
        if self.stopped and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.resume()
        super().close()


class Cluster:
    """Hosts h1..hN on one fresh cluster database and one monerod (not started: `start`)."""

    def __init__(
        self,
        root: Path,
        daemon_address: str,
        database_url: str,
        *,
        hosts: int = 3,
        lease_ttl: float = 5.0,
        **sections: dict[str, Any],
    ) -> None:
        self.database_url = database_url
        self.lease_ttl = lease_ttl
        vault_key = secrets.token_bytes(VAULT_KEY_BYTES)
        self.hosts: dict[str, ClusterHost] = {}
        for n in range(1, hosts + 1):
            host_id = f"h{n}"
            cluster = {"database_url": database_url, "host_id": host_id, "lease_ttl": lease_ttl}
            self.hosts[host_id] = ClusterHost(
                host_id,
                root / host_id,
                daemon_address,
                vault_key,
                cluster=cluster,
                **sections,
            )

    def __getitem__(self, host_id: str) -> ClusterHost:
        return self.hosts[host_id]

    async def start(self, *host_ids: str) -> None:
        """Start these hosts (all by default) at once and wait until each answers."""
        async with trio.open_nursery() as nursery:
            for host_id in host_ids or tuple(self.hosts):
                nursery.start_soon(self.hosts[host_id].start)

    async def query(self, sql: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read the cluster database directly, for what no host's API says (which host wrote
        an event, whether a wallet's files are stored)."""

        def run() -> list[tuple[Any, ...]]:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                return list(conn.execute(sql, params).fetchall())

        return await trio.to_thread.run_sync(run)

    def close(self) -> list[str]:
        """Stop every host; returns the problems left behind (wallet-rpc processes outliving
        their walletd), for the fixture to assert after cleaning up."""
        for host in self.hosts.values():
            host.close()
        deadline = time.monotonic() + 10
        left: list[str] = []
        while time.monotonic() < deadline:
            left = [
                f"{h}: {pids}"
                for h, host in self.hosts.items()
                if (pids := stray_wallet_rpcs(host.wallet_dir))
            ]
            if not left:
                break
            time.sleep(0.2)
        for host in self.hosts.values():
            for pid in stray_wallet_rpcs(host.wallet_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return left


@contextlib.contextmanager
def cluster_on(
    root: Path, daemon_address: str, database_url: str, *, hosts: int, lease_ttl: float
) -> Iterator[Cluster]:
    """`hosts` hosts h1.. on `database_url` (not started) as the cluster tests run them: the
    tests' monitor, 4 sessions, one spare wallet-rpc, a 60 s request timeout. Afterwards every
    host is stopped and no wallet-rpc of any host outlived its walletd (asserted)."""
    cluster = Cluster(
        root,
        daemon_address,
        database_url,
        hosts=hosts,
        lease_ttl=lease_ttl,
        monitor=MONITOR,
        sessions={"max_active": 4},
        monero={"spare_processes": 1},
        daemon={"request_timeout": 60},
    )
    try:
        yield cluster
    finally:
        left = cluster.close()
    assert left == [], f"wallet-rpc children outlived their walletd: {left}"
