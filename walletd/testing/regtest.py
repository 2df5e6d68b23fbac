"""A private monerod in regtest mode, for `walletd dev` and the regtest tests.

Two ways to run it, same command line (monero-facts.md, "Starting the pieces"):

- `start_monerod`: a trio task for `nursery.start`; it hands back a `Monerod` once `get_info`
  answers and stops the process when its scope is cancelled.
- `MonerodProcess`: a synchronous context manager (subprocess + sync httpx) for pytest session
  fixtures, which cannot be async under pytest-trio.

Mining needs a valid address (there is no burn address constant): create a plain wallet and mine
to its address. Coinbase outputs unlock after 60 blocks.
"""

from __future__ import annotations

import functools
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import attrs
import httpx
import structlog
import trio

from walletd.errors import RpcError
from walletd.wallets.rpc import DaemonRpc

__all__ = [
    "COINBASE_UNLOCK_BLOCKS",
    "ChildProcess",
    "Monerod",
    "MonerodError",
    "MonerodProcess",
    "free_port",
    "mine",
    "mine_until_confirmed",
    "monerod_argv",
    "start_monerod",
    "stop_process",
    "wait_answering",
]

log = structlog.get_logger(__name__)

COINBASE_UNLOCK_BLOCKS = 60
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.2
_LOG_NAME = "monerod.log"
_OUTPUT_NAME = "monerod.out"


class MonerodError(Exception):
    """monerod did not start, or exited while we relied on it."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the kernel picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


RPC_CONNECTIONS = 1000


def monerod_argv(
    data_dir: Path,
    rpc_port: int,
    p2p_port: int,
    *,
    keep_chain: bool = False,
    binary: str = "monerod",
    peers: Sequence[int] = (),
) -> list[str]:
    """The command line of a private regtest monerod bound to loopback only.

    With `peers` (p2p ports of other regtest nodes on loopback) it is not `--offline` but talks
    to those nodes alone (`--add-exclusive-node`, no seed nodes), so they share one chain: the
    failover tests' second daemon.

    `--offline` and `--disable-dns-checkpoints` keep it off the network; `--fixed-difficulty 1`
    makes `generateblocks` fast. Without `keep_chain` regtest wipes the chain at start.
    Our clients speak plain HTTP on loopback (wallet-rpc with `--daemon-ssl disabled`).
    """
    argv = [
        binary,
        "--regtest",
        *(["--allow-local-ip"] if peers else ["--offline"]),
        *[arg for port in peers for arg in ("--add-exclusive-node", f"127.0.0.1:{port}")],
        "--fixed-difficulty",
        "1",
        "--no-igd",
        "--data-dir",
        str(data_dir),
        "--log-file",
        str(data_dir / _LOG_NAME),
        "--rpc-bind-ip",
        "127.0.0.1",
        "--rpc-bind-port",
        str(rpc_port),
        "--rpc-ssl",
        "disabled",  # autodetect makes an RSA-4096 certificate at every start (~2 s)
        "--p2p-bind-ip",
        "127.0.0.1",
        "--p2p-bind-port",
        str(p2p_port),
        "--no-zmq",
        "--non-interactive",
        "--check-updates",
        "disabled",
        "--disable-dns-checkpoints",
        # Every wallet-rpc child keeps an RPC connection to monerod, and monerod allows only 25
        # from a private (loopback) address by default: with 10 sessions walletd runs 33
        # children, and those past the limit answer -38 "no connection to daemon".
        "--rpc-max-connections-per-private-ip",
        str(RPC_CONNECTIONS),
        "--rpc-max-connections",
        str(RPC_CONNECTIONS),
    ]
    if keep_chain:
        argv.append("--keep-fakechain")
    return argv


@attrs.define(repr=False)
class Monerod:
    """A running regtest monerod started by `start_monerod`."""

    process: trio.Process
    rpc_port: int
    p2p_port: int
    data_dir: Path
    rpc: DaemonRpc

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def daemon_address(self) -> str:
        """`host:port` as monero-wallet-rpc's `--daemon-address` wants it."""
        return f"127.0.0.1:{self.rpc_port}"

    def __repr__(self) -> str:
        return f"Monerod(pid={self.process.pid}, rpc_port={self.rpc_port})"


async def mine(daemon: DaemonRpc, blocks: int, address: str) -> int:
    """Mine `blocks` blocks paying `address` and return the new chain height."""
    await daemon.generate_blocks(blocks, address)
    return await daemon.height()


async def mine_until_confirmed(
    daemon: DaemonRpc, txid: str, confirmations: int, address: str, *, appear_within: float = 30.0
) -> int:
    """Mine until `txid` has `confirmations` blocks (its own included); return the new height.

    A relayed transaction is normally in the very next block, but a test that mines exactly N
    blocks after a transfer and then expects N confirmations fails the odd time it is not (seen
    once in four runs on a loaded machine). So: wait for the daemon to know the transaction, mine
    one block at a time until it is in one, then the rest at once."""
    with trio.fail_after(appear_within):
        status = await daemon.tx_status(txid)
        while status is None:  # a poll: monerod has nothing to wait on
            await trio.sleep(_POLL_INTERVAL)
            status = await daemon.tx_status(txid)
    for _ in range(confirmations + 10):
        if not status.in_pool:
            break
        await daemon.generate_blocks(1, address)
        status = await daemon.tx_status(txid) or status
    else:
        raise MonerodError(
            f"transaction {txid} still in the pool after {confirmations + 10} blocks"
        )
    if not status.in_pool and status.block_height is not None:
        missing = confirmations - status.confirmations(await daemon.height())
        if missing > 0:
            await daemon.generate_blocks(missing, address)
    return await daemon.height()


async def start_monerod(
    data_dir: Path,
    *,
    keep_chain: bool = False,
    binary: str = "monerod",
    ready_timeout: float = READY_TIMEOUT,
    task_status: trio.TaskStatus[Monerod] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a regtest monerod until cancelled; use with `await nursery.start(start_monerod, ...)`.

    Its stdout/stderr go to `data_dir/monerod.out` (a file, so the pipe can never fill up).
    Reports the `Monerod` once `get_info` answers. Raises `MonerodError` if it exits on its own.
    """
    await trio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    rpc_port, p2p_port = free_port(), free_port()
    argv = monerod_argv(data_dir, rpc_port, p2p_port, keep_chain=keep_chain, binary=binary)
    output = await trio.open_file(data_dir / _OUTPUT_NAME, "ab")
    try:
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=output.fileno(), stderr=subprocess.STDOUT
        )
    finally:
        await output.aclose()  # the child holds its own copy of the descriptor
    log.info("monerod started", pid=process.pid, rpc_port=rpc_port, data_dir=str(data_dir))
    daemon = DaemonRpc(f"http://127.0.0.1:{rpc_port}", timeout=30.0)
    try:
        with trio.move_on_after(ready_timeout) as waiting:
            await _wait_ready(daemon, process)
        if waiting.cancelled_caught:
            raise MonerodError(f"monerod did not answer get_info within {ready_timeout:.0f} s")
        task_status.started(Monerod(process, rpc_port, p2p_port, data_dir, daemon))
        await process.wait()
        raise MonerodError(f"monerod exited with status {process.returncode}; see {data_dir}")
    finally:
        with trio.CancelScope(shield=True):
            await daemon.aclose()
            await _stop_process(process)


async def _wait_ready(daemon: DaemonRpc, process: trio.Process) -> None:
    """Poll `get_info` until it answers; fail early if the process exits."""
    while process.returncode is None:
        try:
            await daemon.call("get_info", timeout=5.0)
            return
        except RpcError:
            await trio.sleep(_POLL_INTERVAL)  # not listening yet
    raise MonerodError(f"monerod exited with status {process.returncode} before answering")


async def _stop_process(process: trio.Process) -> None:
    """SIGTERM (monerod saves and exits), then SIGKILL if it is still running after 10 s."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_TIMEOUT):
        await process.wait()
        log.info("monerod stopped", pid=process.pid, status=process.returncode)
        return
    log.warning("monerod killed", pid=process.pid, after_s=STOP_TIMEOUT)
    process.kill()
    await process.wait()


class ChildProcess:
    """A process of ours as a synchronous context manager: `start` on entering, `stop` (SIGTERM,
    then SIGKILL) on leaving, however the block ends. What `MonerodProcess` and the wallet-rpc
    processes (`wallet_rpc_process.WalletRpcProcess`) have in common."""

    _process: subprocess.Popen[bytes] | None = None
    stop_timeout = STOP_TIMEOUT

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> Self:
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
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM (monerod and wallet-rpc store and exit), SIGKILL after `stop_timeout`
        seconds; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, self.stop_timeout)


class MonerodProcess(ChildProcess):
    """A regtest monerod as a synchronous context manager, for pytest session fixtures.

    >>> with MonerodProcess(tmp_path / "monerod") as node:  # doctest: +SKIP
    ...     node.mine(80, address)
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        keep_chain: bool = False,
        binary: str = "monerod",
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.data_dir = data_dir
        self.rpc_port = free_port()
        self.p2p_port = free_port()
        self._keep_chain = keep_chain
        self._binary = binary
        self.peers: list[int] = []  # p2p ports of nodes to share a chain with (set before start)
        self._ready_timeout = ready_timeout
        self._client = httpx.Client(base_url=self.rpc_url, timeout=30.0, trust_env=False)

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def daemon_address(self) -> str:
        """`host:port` as monero-wallet-rpc's `--daemon-address` wants it."""
        return f"127.0.0.1:{self.rpc_port}"

    def start(self) -> None:
        """Start monerod and wait until `get_info` answers; stops it again if that fails."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._client.is_closed:  # started again after a stop
            self._client = httpx.Client(base_url=self.rpc_url, timeout=30.0, trust_env=False)
        with open(self.data_dir / _OUTPUT_NAME, "ab") as output:
            argv = monerod_argv(
                self.data_dir,
                self.rpc_port,
                self.p2p_port,
                keep_chain=self._keep_chain,
                binary=self._binary,
                peers=self.peers,
            )
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        wait_answering(
            self._process,
            functools.partial(self.call, "get_info", timeout=5.0),
            timeout=self._ready_timeout,
            what="monerod get_info",
            where=self.data_dir,
            error=MonerodError,
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; safe to call twice."""
        self._client.close()
        super().stop()

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """A monerod JSON-RPC call; raises `MonerodError` on a JSON-RPC error object."""
        body = {"jsonrpc": "2.0", "id": 0, "method": method, "params": params or {}}
        resp = self._client.post("/json_rpc", json=body, timeout=timeout)
        resp.raise_for_status()
        payload = resp.json()
        if "error" in payload:
            raise MonerodError(f"{method}: {payload['error']}")
        result: dict[str, Any] = payload["result"]
        return result

    def height(self) -> int:
        return int(self.call("get_info")["height"])

    def mine(self, blocks: int, address: str) -> int:
        """Mine `blocks` blocks paying `address`; returns the new chain height."""
        params = {"amount_of_blocks": blocks, "wallet_address": address, "starting_nonce": 0}
        self.call("generateblocks", params, timeout=max(60.0, blocks * 2.0))
        return self.height()


def wait_answering(
    process: subprocess.Popen[bytes],
    probe: Callable[[], object],
    *,
    timeout: float,
    what: str,
    where: Path,
    error: type[Exception],
    interval: float = _POLL_INTERVAL,
) -> None:
    """Call `probe` until it answers (no `httpx.TransportError`: the port is not listening
    yet) or `timeout` seconds passed; raise `error` at once if `process` exits meanwhile.
    The readiness wait of every process the regtest harness starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{what}: exited with status {process.returncode}; see {where}")
        try:
            probe()
            return
        except httpx.TransportError:
            time.sleep(interval)  # not listening yet
    raise error(f"{what}: no answer within {timeout:.0f} s; see {where}")


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (monerod and wallet-rpc store and exit), SIGKILL after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
