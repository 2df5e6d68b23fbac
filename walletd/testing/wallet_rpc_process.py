"""monero-wallet-rpc processes of our own beside a regtest monerod (`regtest`): plain wallets,
a miner, a private chain, and ready 2-of-3 multisig sets, for the regtest tests and the bench.

`WalletRpcProcess` is a synchronous context manager (session fixtures cannot be async under
pytest-trio), a `regtest.ChildProcess` as monerod is. `started_wallet_rpcs` starts several at once,
`plain_wallet_process` runs one with one plain wallet, `mining_wallet` makes that wallet a
`Miner` with spendable coinbase outputs, and `private_chain` is a monerod of its own with such
a miner. `MultisigSetFactory` makes ready 2-of-3 wallet sets with `multisig` across a pool
of such processes and leaves the files closed (no lock held) for walletd to adopt.

The command line follows monero-facts.md with the rules walletd itself keeps: loopback only, a
port that was free, `--no-dns` plus `DNS_PUBLIC=tcp://127.0.0.1` (OpenAlias look-ups otherwise leak
to public resolvers), the digest credentials in a 0600 `--config-file` (never on the command
line), and the log file, ring database and console output in a work directory of ours.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import attrs
import httpx
import trio

from walletd.errors import NoWalletFile
from walletd.testing.regtest import (
    COINBASE_UNLOCK_BLOCKS,
    ChildProcess,
    MonerodProcess,
    free_port,
    wait_answering,
)
from walletd.wallets.multisig import ROLES, Role, create_wallets, make_multisig
from walletd.wallets.rpc import WalletRpc

__all__ = [
    "MINER_BLOCKS",
    "Miner",
    "MultisigSet",
    "MultisigSetFactory",
    "WalletRpcProcess",
    "WalletRpcProcessError",
    "close_wallets",
    "create_plain_wallet",
    "fund",
    "mining_wallet",
    "plain_wallet_process",
    "private_chain",
    "run_trio",
    "started_wallet_rpcs",
    "wallet_rpc_argv",
]

T = TypeVar("T")

READY_TIMEOUT = 30.0
MINER_BLOCKS = COINBASE_UNLOCK_BLOCKS + 40  # leaves 40 unlocked coinbase outputs to spend


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


class WalletRpcProcess(ChildProcess):
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, *, timeout: float = 180.0) -> WalletRpc:
        """A new async client for this process (the caller closes it, in its own trio run).

        The timeout guards a hang, not a speed: a create_wallet took over 60 s on a 2-core
        machine running two other suites."""
        return WalletRpc(self.url, user=self.user, password=self.password, timeout=timeout)

    def __repr__(self) -> str:  # never show the credentials
        return f"WalletRpcProcess(port={self.port}, pid={self.pid})"

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
        with httpx.Client(base_url=self.url, auth=auth, timeout=5.0, trust_env=False) as http:
            wait_answering(
                self._process,
                lambda: http.post("/json_rpc", json=body).raise_for_status(),
                timeout=timeout,
                what="wallet-rpc get_version",
                where=self.work_dir,
                error=WalletRpcProcessError,
                interval=0.1,
            )


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


@contextlib.contextmanager
def started_wallet_rpcs(
    root: Path, wallet_dir: Path, daemon_address: str, size: int
) -> Iterator[list[WalletRpcProcess]]:
    """`size` processes serving one `wallet_dir` (work dirs `root/wallet-rpc-<i>`), started
    together so that their starts overlap, then waited for; stopped afterwards."""
    with contextlib.ExitStack() as stack:
        pool = [
            stack.enter_context(
                WalletRpcProcess(
                    wallet_dir=wallet_dir,
                    work_dir=root / f"wallet-rpc-{index}",
                    daemon_address=daemon_address,
                )
            )
            for index in range(size)
        ]
        for proc in pool:
            proc.wait_ready()
        yield pool


@contextlib.contextmanager
def plain_wallet_process(
    root: Path, name: str, daemon_address: str
) -> Iterator[tuple[WalletRpcProcess, str]]:
    """A wallet-rpc of its own (wallet dir `root/<name>-wallets`, work dir
    `root/wallet-rpc-<name>`) serving one new plain wallet `name`, left open; yields the
    process and the wallet's address, and stops the process afterwards."""
    with WalletRpcProcess(
        wallet_dir=root / f"{name}-wallets",
        work_dir=root / f"wallet-rpc-{name}",
        daemon_address=daemon_address,
    ) as proc:
        proc.wait_ready()
        address = run_trio(functools.partial(_create_plain, proc, name))
        yield proc, address


async def _create_plain(proc: WalletRpcProcess, name: str) -> str:
    rpc = proc.client()
    try:
        return await create_plain_wallet(rpc, name)
    finally:
        await rpc.aclose()


@attrs.frozen
class Miner:
    """A plain wallet that mined enough blocks to have unlocked coinbase outputs to spend."""

    process: WalletRpcProcess
    address: str


@contextlib.contextmanager
def mining_wallet(
    root: Path,
    monerod: MonerodProcess,
    *,
    blocks: int = MINER_BLOCKS,
    daemon_address: str | None = None,
) -> Iterator[Miner]:
    """A plain wallet `miner` in a wallet-rpc of its own that mined `blocks` blocks on `monerod`
    (by default 40 coinbase outputs past the unlock). `daemon_address`: the daemon its wallet-rpc
    follows, if not `monerod` (another node of the same chain)."""
    follows = monerod.daemon_address if daemon_address is None else daemon_address
    with plain_wallet_process(root, "miner", follows) as (proc, address):
        monerod.mine(blocks, address)
        yield Miner(process=proc, address=address)


@contextlib.contextmanager
def private_chain(root: Path) -> Iterator[tuple[MonerodProcess, Miner]]:
    """A regtest monerod of its own (`root/monerod`) and a `mining_wallet` on it: a chain a test
    may reorganise or stop without reaching into anyone else's."""
    with MonerodProcess(root / "monerod") as node, mining_wallet(root, node) as miner:
        yield node, miner


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
