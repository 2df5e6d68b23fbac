"""monero-wallet-rpc child processes and multisig wallet sets for the regtest fixtures.

`WalletRpcProcess` is a synchronous context manager (session fixtures cannot be async under
pytest-trio); `MultisigSetFactory` makes ready 2-of-3 wallet sets with `multisig` across a
pool of such processes and leaves the files closed (no lock held) for walletd to adopt.

The command line follows monero-facts.md with the rules walletd itself keeps: loopback only, a
port that was free, `--no-dns` plus `DNS_PUBLIC=tcp://127.0.0.1` (OpenAlias look-ups otherwise leak
to public resolvers), the digest credentials in a 0600 `--config-file` (never on the command
line), and the log file, ring database and console output in a work directory of ours.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import attrs
import httpx
import trio

from walletd.errors import NoWalletFile
from walletd.testing.regtest import free_port, stop_process
from walletd.wallets.multisig import ROLES, Role, create_wallets, make_multisig
from walletd.wallets.rpc import WalletRpc

__all__ = [
    "Miner",
    "MultisigSet",
    "MultisigSetFactory",
    "WalletRpcProcess",
    "WalletRpcProcessError",
    "close_wallets",
    "create_plain_wallet",
    "fund",
    "run_trio",
    "wallet_rpc_argv",
]

T = TypeVar("T")

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class WalletRpcProcessError(Exception):
    """monero-wallet-rpc did not start."""


def wallet_rpc_argv(
    *,
    wallet_dir: Path,
    work_dir: Path,
    rpc_port: int,
    daemon_address: str,
    config_file: Path,
    binary: str = "monero-wallet-rpc",
) -> list[str]:
    """The command line; credentials come from `config_file` (`rpc-login=USER:PASS`)."""
    return [
        binary,
        "--wallet-dir",
        str(wallet_dir),
        "--rpc-bind-ip",
        "127.0.0.1",
        "--rpc-bind-port",
        str(rpc_port),
        "--daemon-address",
        daemon_address,
        "--trusted-daemon",
        "--non-interactive",
        "--no-dns",
        "--shared-ringdb-dir",
        str(work_dir / "ringdb"),
        "--rpc-ssl",
        "disabled",  # autodetect makes an RSA-4096 certificate at every start (~1.3 s)
        "--daemon-ssl",
        "disabled",
        "--log-file",
        str(work_dir / "wallet-rpc.log"),
        "--config-file",
        str(config_file),
    ]


class WalletRpcProcess:
    """One monero-wallet-rpc serving `wallet_dir`, with fresh random digest credentials."""

    def __init__(
        self,
        *,
        wallet_dir: Path,
        work_dir: Path,
        daemon_address: str,
        binary: str = "monero-wallet-rpc",
        extra_env: Sequence[tuple[str, str]] = (),
    ) -> None:
        """`extra_env`: added to the process's environment (e.g. `FastOpen.env()`)."""
        self.wallet_dir = wallet_dir
        self._extra_env = dict(extra_env)
        self.work_dir = work_dir
        self.port = free_port()
        self.user = "walletd"
        self.password = secrets.token_urlsafe(24)
        self._config_file = work_dir / "wallet-rpc.conf"
        self._argv = wallet_rpc_argv(
            wallet_dir=wallet_dir,
            work_dir=work_dir,
            rpc_port=self.port,
            daemon_address=daemon_address,
            config_file=self._config_file,
            binary=binary,
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def client(self, *, timeout: float = 180.0) -> WalletRpc:
        """A new async client for this process (the caller closes it, in its own trio run).

        The timeout guards a hang, not a speed: a create_wallet took over 60 s on a 2-core
        machine running two other suites."""
        return WalletRpc(self.url, user=self.user, password=self.password, timeout=timeout)

    def __repr__(self) -> str:  # never show the credentials
        return f"WalletRpcProcess(port={self.port}, pid={self.pid})"

    def __enter__(self) -> WalletRpcProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the process without waiting for it (see `wait_ready`): starts overlap."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as walletd demands
        self._write_config()
        env = {**os.environ, "DNS_PUBLIC": "tcp://127.0.0.1", **self._extra_env}
        with open(self.work_dir / "wallet-rpc.out", "ab") as output:
            self._process = subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work_dir,
            )

    def _write_config(self) -> None:
        """Create the config file 0600 from the start, so the secret is never world-readable."""
        fd = os.open(self._config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"rpc-login={self.user}:{self.password}\n")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until `get_version` answers with our credentials; stop the process on failure."""
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None, "start() first"
        body = {"jsonrpc": "2.0", "id": 0, "method": "get_version", "params": {}}
        auth = httpx.DigestAuth(self.user, self.password)
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, auth=auth, timeout=5.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise WalletRpcProcessError(
                        f"wallet-rpc exited with {self._process.returncode}; see {self.work_dir}"
                    )
                try:
                    http.post("/json_rpc", json=body).raise_for_status()
                    return
                except httpx.TransportError:
                    time.sleep(0.1)  # not listening yet
        raise WalletRpcProcessError(f"wallet-rpc not ready within {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM (wallet-rpc stores the open wallet and exits), SIGKILL after 10 s."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, STOP_TIMEOUT)


def run_trio(fn: Callable[[], Awaitable[T]]) -> T:
    """Run `fn` under `trio.run` in a fresh thread: works from sync fixtures and from inside a
    running trio test alike (trio.run cannot nest in one thread)."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(trio.run, fn).result()


async def close_wallets(rpcs: Sequence[WalletRpc]) -> None:
    """`close_wallet` (stores, releases the lock) on each process that has a wallet open."""

    async def close(rpc: WalletRpc) -> None:
        try:
            await rpc.call("close_wallet")
        except NoWalletFile:
            pass  # nothing open there: already in the state we want

    with trio.CancelScope(shield=True):  # runs in cleanup paths too
        async with trio.open_nursery() as nursery:
            for rpc in rpcs:
                nursery.start_soon(close, rpc)


async def create_plain_wallet(rpc: WalletRpc, name: str, password: str = "") -> str:
    """Create an ordinary wallet (auto-refresh off) and return its primary address."""
    await rpc.call("create_wallet", {"filename": name, "password": password, "language": "English"})
    await rpc.call("auto_refresh", {"enable": False})
    return str((await rpc.call("get_address"))["address"])


async def fund(payer: WalletRpc, address: str, amount: int) -> str:
    """Pay `amount` atomic units to `address` from `payer`; returns the txid (unconfirmed)."""
    answer = await payer.call(
        "transfer", {"destinations": [{"amount": amount, "address": address}]}
    )
    return str(answer["tx_hash"])


@attrs.frozen
class Miner:
    """A plain wallet that mined enough blocks to have unlocked coinbase outputs to spend."""

    process: WalletRpcProcess
    address: str


@attrs.frozen
class MultisigSet:
    """A ready 2-of-3 multisig: three closed wallet files (names relative to the wallet dir)."""

    files: dict[Role, str]
    password: str = attrs.field(repr=False)
    address: str


class MultisigSetFactory:
    """Makes ready 2-of-3 sets, one set per three pool processes at a time.

    The pool processes serve their own wallet dir (wallet-rpc refuses file names with "/"), so the
    closed files are moved into the caller's `wallet_dir` afterwards.
    """

    def __init__(self, pool: Sequence[WalletRpcProcess]) -> None:
        if len(pool) < len(ROLES):
            raise ValueError("a multisig set needs three wallet-rpc processes")
        self._triples = [tuple(pool[i : i + 3]) for i in range(0, len(pool) - 2, 3)]
        self._pool_dir = pool[0].wallet_dir

    def __call__(self, wallet_dir: Path, n: int, password: str) -> list[MultisigSet]:
        """Make `n` sets in `wallet_dir` (blocking; see `acreate` inside a trio test)."""
        wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return run_trio(functools.partial(self._make_sets, wallet_dir, n, password))

    async def acreate(self, wallet_dir: Path, n: int, password: str) -> list[MultisigSet]:
        """`__call__` without blocking the caller's trio loop."""
        return await trio.to_thread.run_sync(self, wallet_dir, n, password)

    async def _make_sets(self, wallet_dir: Path, n: int, password: str) -> list[MultisigSet]:
        made: dict[int, MultisigSet] = {}
        todo = iter(range(n))  # shared by the workers: each takes the next index
        async with trio.open_nursery() as nursery:
            for triple in self._triples:
                nursery.start_soon(self._worker, triple, todo, wallet_dir, password, made)
        return [made[i] for i in range(n)]

    async def _worker(
        self,
        triple: Sequence[WalletRpcProcess],
        todo: Iterator[int],
        wallet_dir: Path,
        password: str,
        made: dict[int, MultisigSet],
    ) -> None:
        rpcs: dict[Role, WalletRpc] = {
            role: proc.client() for role, proc in zip(ROLES, triple, strict=True)
        }
        try:
            for index in todo:
                made[index] = await self._make_one(rpcs, wallet_dir, password)
        finally:
            with trio.CancelScope(shield=True):
                for rpc in rpcs.values():
                    await rpc.aclose()

    async def _make_one(
        self, rpcs: dict[Role, WalletRpc], wallet_dir: Path, password: str
    ) -> MultisigSet:
        token = secrets.token_hex(6)
        names: dict[Role, str] = {role: f"ms-{token}-{role}" for role in ROLES}
        passwords: dict[Role, str] = dict.fromkeys(ROLES, password)
        try:
            await create_wallets(rpcs, names, passwords)
            address = await make_multisig(rpcs, passwords)
        finally:
            await close_wallets(list(rpcs.values()))
        await trio.to_thread.run_sync(self._move_files, list(names.values()), wallet_dir)
        return MultisigSet(files=names, password=password, address=address)

    def _move_files(self, names: Sequence[str], wallet_dir: Path) -> None:
        """Move each wallet's cache and .keys file from the pool's dir to `wallet_dir`."""
        if wallet_dir.resolve() == self._pool_dir.resolve():
            return
        for name in names:
            for path in self._pool_dir.glob(f"{name}*"):
                shutil.move(path, wallet_dir / path.name)
