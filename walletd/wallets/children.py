"""The monero-wallet-rpc processes walletd talks to: its own supervised children or fixed endpoints.

Why walletd runs its own children (monero-facts.md): wallet-rpc holds one wallet per process and
serves one call at a time, so every open escrow wallet needs a process of its own; a process takes
~1 s to start (a fixed busy-wait) and gives no memory back on `close_wallet`. Hence a pool that
keeps `spares` started, idle processes ready (opening a session never waits for a start), hands
each process to exactly one owner from `acquire` to `release`/`discard` (the peer Rust manager
reused ports whose lock had expired while a wallet was still open there: never again), and
retires a process after `max_uses` wallets.

How a child is started and kept safe:

- The digest credentials are fresh random values per process, written to a 0600 `--config-file`
  in walletd's private run dir (never on the command line, so not in /proc/PID/cmdline) and
  deleted when the child stops. With a random password per process, a port taken over by another
  process answers HTTP 401 (RpcAuthError), never another escrow's wallet.
- Digest auth proves walletd to the child, not the child to walletd: a process that takes a
  child's port before the child binds it and answers without asking for credentials would look
  ready and then receive `open_wallet`, wallet password included. So before a child is handed
  out, walletd checks that every listening socket that can take a connection to 127.0.0.1:port
  is one of the child's own descriptors (inode from /proc/net/tcp{,6}, matched against the links
  in /proc/PID/fd; `listener_is_owned_by`). Once the child holds the port nobody else can bind
  it. On a mismatch that child is stopped and another started on a new port, with a warning.
- Loopback only, `--no-dns` plus `DNS_PUBLIC=tcp://127.0.0.1` in a minimal environment (OpenAlias
  look-ups otherwise leak to public resolvers), `--rpc-ssl disabled` (autodetect makes an RSA-4096
  certificate at every start), ring database and logs in the run dir.
- Unless `monero.fast_open = false`, each child preloads `fastopen`'s library (LD_PRELOAD, passed
  in `ChildSettings.extra_env`): the RSA-4096 key every wallet open makes for a TLS context walletd
  never uses is then a copy of one key from the state dir, not 1-2 s of CPU.
- Children must not outlive walletd, even after kill -9: each child asks the kernel for SIGTERM
  when its parent dies (PR_SET_PDEATHSIG; SIGTERM makes wallet-rpc store its wallet and exit).
  That signal follows the *thread* that forked, so children are forked from the trio thread
  itself, never through `trio.lowlevel.open_process` (which forks in a worker thread that trio
  retires after ~10 s idle, which would SIGTERM the child). A pid record per child
  (run_dir/children/PID.json with the /proc start time) lets `remove_orphans` find and stop what a
  dead walletd left behind, without ever signalling an unrelated process that reused the pid.
- Output is always drained (a full pipe would block the child) and logged at debug level.
- Log lines about a process name an escrow only while the process holds that escrow's wallet
  (`WalletProcess.wallet_of`, set by the session once the wallet is open, cleared once it is
  closed). A child is supervised by a task of the pool, but trio copies the context of the task
  that started it, so a spare started while a session acquired a process would otherwise carry
  that session's `escrow_id` for life: the pool's own tasks and starts run unlabelled.
- Each child writes its own log, run_dir/logs/wallet-rpc-PORT.log (a new child on a port first
  removes what an earlier one left there), capped at LOG_FILE_MAX_BYTES with LOG_FILES_ROTATED
  rotated file. Ports are random, so without pruning every child ever started would leave a log
  behind: at pool start and whenever a child exits, the logs of children that are gone are
  pruned to the KEEP_EXITED_LOGS newest (kept for post-mortems). Disk use is therefore at most
  (running children + KEEP_EXITED_LOGS) x (1 + LOG_FILES_ROTATED) x LOG_FILE_MAX_BYTES.
- Every stop is bounded: `store` (2 s) if a wallet may be open, SIGTERM, `stop_timeout`, SIGKILL,
  always reaped, and shielded so that it completes during cancellation. Each child is supervised
  by a task in the pool's nursery; an unexpected exit sets `exited` and is logged, and a dead spare
  is replaced.

`orphans` stops what a dead walletd left behind; `endpoints` is the alternative
for externally run wallet-rpc processes.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import subprocess
from typing import Protocol

import attrs
import structlog
import trio

from walletd.errors import ChildStartError
from walletd.ops.logs import unlabelled
from walletd.wallets import spawning
from walletd.wallets.child_control import (
    KILL_WAIT,
    STORE_TIMEOUT,
    drain,
    terminate,
    wait_exit,
    wait_ready,
)
from walletd.wallets.process import ManagedChild, WalletProcess, managed
from walletd.wallets.rpc import WalletRpc
from walletd.wallets.spawning import ChildSettings, LiveChildren, listener_is_owned_by

__all__ = [
    "ChildPool",
    "ChildSettings",
    "ProcessPool",
    "WalletProcess",
]

log = structlog.get_logger(__name__)

START_ATTEMPTS = 3  # a child that exits before it is ready (port taken) is retried on a new port
DRAIN_GRACE = 1.0  # how long to read a dead child's last output
MAX_START_BACKOFF = 30.0


# ---- the pool's interface ------------------------------------------------------------------------


@attrs.frozen
class PoolStatistics:
    """A pool's figures now (`ProcessPool.statistics()`, as trio's statistics() give them)."""

    idle: int  # ready processes owned by nobody
    busy: int  # processes handed out (acquired, not yet released or discarded)
    restarts: int  # processes that died (idle or in use) and were replaced since start


class ProcessPool(Protocol):
    capacity: int | None

    def statistics(self) -> PoolStatistics: ...

    async def acquire(self) -> WalletProcess: ...

    async def release(self, proc: WalletProcess) -> None: ...

    async def discard(self, proc: WalletProcess, *, damaged: bool = False) -> None: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def set_daemon_address(self, address: str) -> None:
        """Processes handed out from now on use monerod at `address` (a daemon switch)."""
        ...


# ---- managed children ----------------------------------------------------------------------------


class ChildPool:
    """walletd's own monero-wallet-rpc children, with `spares` idle ones kept ready."""

    def __init__(self, settings: ChildSettings) -> None:
        self.settings = settings
        self.live = LiveChildren()
        self._restarts = 0
        self.capacity: int | None = None
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._idle: list[WalletProcess] = []
        self._busy: set[WalletProcess] = set()
        self._live: dict[int, WalletProcess] = {}
        self._starting = 0
        self._start_failures = 0

    @property
    def idle(self) -> tuple[WalletProcess, ...]:
        """The ready spares (started, no wallet, owned by nobody)."""
        return tuple(self._idle)

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(idle=len(self._idle), busy=len(self._busy), restarts=self._restarts)

    @property
    def pids(self) -> list[int]:
        """The pids of every child still running, idle, busy or starting."""
        return sorted(self._live)

    # ---- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the spares, report started, supervise until cancelled, then stop every child."""
        spawning.prepare_run_dir(self.settings.run_dir)
        spawning.prune_logs(self.settings.run_dir / "logs", self.live)
        self._closing = False
        error: ChildStartError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                error = await self._warm_up()
                if error is None:
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:
                        self._closing = True  # no new children while the old ones stop
                nursery.cancel_scope.cancel()
        finally:
            # Every child task has stopped its child (shielded) by the time the nursery exits.
            self._closing = True
            self._nursery = None
            self._idle.clear()
        if error is not None:
            raise error

    async def _warm_up(self) -> ChildStartError | None:
        """Start the spares together; fail only if none could be started."""
        errors: list[ChildStartError] = []

        async def one() -> None:
            try:
                self._idle.append(await self._start())
            except ChildStartError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(self.settings.spares):
                nursery.start_soon(one)
        if errors and not self._idle:
            log.error("no wallet-rpc child could be started", error=str(errors[0]))
            return errors[0]
        for exc in errors:
            log.warning("a spare wallet-rpc did not start", error=str(exc))
        self._top_up()
        return None

    # ---- the pool's interface --------------------------------------------------------------------

    def set_daemon_address(self, address: str) -> None:
        """A daemon switch: new children get `--daemon-address address`; spares started against
        the old daemon are stopped (never re-pointed with `set_daemon`: monero issue 10246), and
        busy ones are retired when released."""
        if address == self.settings.daemon_address:
            return
        self.settings = attrs.evolve(self.settings, daemon_address=address)
        stale = [p for p in self._idle if p.daemon_address != address]
        for proc in stale:
            self._idle.remove(proc)
            if self._nursery is not None:
                self._nursery.start_soon(functools.partial(self._stop, proc, store=False))
        self._top_up()

    async def acquire(self) -> WalletProcess:
        """A ready process with no wallet open, owned by the caller until release/discard."""
        await trio.lowlevel.checkpoint()
        proc: WalletProcess | None = None
        while self._idle:
            candidate = self._idle.pop(0)
            if candidate.daemon_address != self.settings.daemon_address:
                await self._stop(candidate, store=False)  # left from before a daemon switch
                continue
            if candidate.alive():
                proc = candidate
                break
            self._restarts += 1  # a spare that died while idle: replaced below
        self._top_up()
        if proc is None:
            proc = await self._start()
        proc.uses += 1
        self._busy.add(proc)
        return proc

    async def release(self, proc: WalletProcess) -> None:
        """The caller closed its wallet cleanly: keep the process as a spare or retire it."""
        if proc not in self._busy:
            raise ValueError(f"{proc!r} is not held by anyone")
        proc.wallet_of = None  # its wallet is closed: what follows is about no escrow
        if not proc.alive():
            await self.discard(proc)
            return
        self._busy.discard(proc)
        if self._closing or self._nursery is None:
            reason = "pool closing"
        elif proc.uses >= self.settings.max_uses:
            reason = "served max_uses wallets"
        elif proc.daemon_address != self.settings.daemon_address:
            reason = "started against another monerod"
        elif len(self._idle) >= self.settings.spares:
            reason = "enough spares"
        else:
            self._idle.append(proc)
            await trio.lowlevel.checkpoint()
            return
        with unlabelled():
            log.debug("retiring wallet-rpc", ident=proc.ident, pid=proc.pid, reason=reason)
            await self._stop(proc, store=False)

    async def discard(self, proc: WalletProcess, *, damaged: bool = False) -> None:
        """Dead, hung or unknown state: stop it with escalation; count a restart if it died.

        `damaged`: the wallet it holds is damaged, so nothing of it may reach the disk: no
        store and straight to SIGKILL (wallet-rpc stores its wallet on SIGTERM)."""
        self._busy.discard(proc)
        if proc in self._idle:
            self._idle.remove(proc)
        child = managed(proc)
        died = child.died
        await self._stop(proc, store=proc.alive() and not damaged, kill=damaged)
        if died:
            self._restarts += 1
            log.info("dead wallet-rpc discarded", ident=proc.ident, pid=proc.pid, **proc.labels())
        proc.wallet_of = None
        self._top_up()

    # ---- starting --------------------------------------------------------------------------------

    def _top_up(self) -> None:
        """Start spares in the background until idle + starting reaches `spares`."""
        nursery = self._nursery
        if nursery is None or self._closing:
            return
        while len(self._idle) + self._starting < self.settings.spares:
            self._starting += 1
            nursery.start_soon(self._start_spare)

    async def _start_spare(self) -> None:
        structlog.contextvars.clear_contextvars()  # a task of its own: a spare is no escrow's
        proc: WalletProcess | None = None
        try:
            proc = await self._start()
        except ChildStartError as exc:
            # Back off (holding this spare's slot) so a broken binary is not restarted in a loop.
            self._start_failures += 1
            delay = min(MAX_START_BACKOFF, 0.5 * 2**self._start_failures)
            log.error("could not start a spare wallet-rpc", error=str(exc), retry_in=delay)
            await trio.sleep(delay)
        finally:
            self._starting -= 1
        if proc is not None:
            self._start_failures = 0
            if len(self._idle) >= self.settings.spares or self._closing:
                await self._stop(proc, store=False)
            else:
                self._idle.append(proc)
        self._top_up()

    async def _start(self) -> WalletProcess:
        """Start one child in the pool's nursery and return it once it answers `get_version`."""
        with unlabelled():  # also when a session waits for it: it holds no wallet yet
            return await self._start_unlabelled()

    async def _start_unlabelled(self) -> WalletProcess:
        nursery = self._nursery
        if nursery is None or self._closing:
            raise ChildStartError("the process pool is not running")
        reason = "not tried"
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                proc: WalletProcess = await nursery.start(self._run_child)
            except _ExitedEarly as exc:
                reason = str(exc)
                log.info("wallet-rpc exited before it was ready", attempt=attempt, reason=reason)
                continue
            except _ForeignListener as exc:
                reason = str(exc)
                log.warning(
                    "another process answers on a wallet-rpc child's port; child discarded",
                    attempt=attempt,
                    reason=reason,
                )
                continue
            return proc
        raise ChildStartError(f"{START_ATTEMPTS} attempts failed; last: {reason}")

    async def _run_child(self, *, task_status: trio.TaskStatus[WalletProcess]) -> None:
        """One child's whole life: spawn, wait until ready, supervise, stop (shielded), clean up."""
        structlog.contextvars.clear_contextvars()  # labelled by `wallet_of` alone (module doc)
        spawned_at = trio.current_time()
        try:
            port = spawning.free_port(self.live)
        except OSError as exc:
            raise ChildStartError(f"no free loopback port: {exc}") from exc
        user, password = secrets.token_hex(8), secrets.token_hex(32)
        # httpx builds an SSL context per client (~15-30 ms): not on the trio thread.
        rpc = await trio.to_thread.run_sync(
            functools.partial(
                WalletRpc,
                f"http://127.0.0.1:{port}",
                user=user,
                password=password,
                timeout=self.settings.call_timeout,
            )
        )
        try:
            spawned = spawning.spawn(self.settings, port, self.live, user=user, password=password)
        except (OSError, subprocess.SubprocessError) as exc:
            with trio.CancelScope(shield=True):
                await rpc.aclose()
            raise ChildStartError(f"cannot run {self.settings.wallet_rpc_path}: {exc}") from exc
        child = ManagedChild(spawned)
        proc = WalletProcess(
            f"wallet-rpc:127.0.0.1:{port}", rpc, pid=spawned.popen.pid, child=child
        )
        proc.daemon_address = self.settings.daemon_address
        assert proc.pid is not None
        self._live[proc.pid] = proc
        failure: str | None = None
        foreign = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, proc)
                nursery.start_soon(wait_exit, proc)
                failure = await wait_ready(proc, self.settings)
                if failure is None and not await trio.to_thread.run_sync(
                    listener_is_owned_by, port, proc.pid
                ):
                    foreign = True
                    failure = f"127.0.0.1:{port} is not (only) served by the child, pid {proc.pid}"
                if failure is None:
                    proc.start_seconds = trio.current_time() - spawned_at
                    log.info(
                        "wallet-rpc started",
                        ident=proc.ident,
                        pid=proc.pid,
                        seconds=round(proc.start_seconds, 3),
                    )
                    task_status.started(proc)
                    await proc.exited.wait()
                    self._after_exit(proc)
                if proc.exited.is_set():
                    with trio.move_on_after(DRAIN_GRACE):
                        await child.drained.wait()
                nursery.cancel_scope.cancel()
        finally:
            try:
                bound = STORE_TIMEOUT + self.settings.stop_timeout + KILL_WAIT
                with trio.move_on_after(bound) as cs:
                    cs.shield = True
                    await terminate(
                        proc,
                        stop_timeout=self.settings.stop_timeout,
                        store=proc in self._busy,
                        reap=True,
                    )
                if not proc.exited.is_set():
                    log.error(
                        "wallet-rpc could not be stopped or reaped", pid=proc.pid, **proc.labels()
                    )
                self._forget(proc)
                if proc not in self._busy:  # an owner keeps its client until release/discard
                    with trio.move_on_after(1.0) as cs:
                        cs.shield = True
                        await proc.rpc.aclose()
            finally:
                child.gone.set()
        if failure is not None:
            detail = f"{failure}; last output: {' | '.join(child.tail) or '(none)'}"
            if foreign:
                raise _ForeignListener(detail)
            if proc.exited.is_set():
                raise _ExitedEarly(detail)
            raise ChildStartError(detail)

    # ---- supervising -----------------------------------------------------------------------------

    def _after_exit(self, proc: WalletProcess) -> None:
        child = managed(proc)
        if not child.died:
            return
        log.warning(
            "wallet-rpc exited unexpectedly",
            ident=proc.ident,
            pid=proc.pid,
            returncode=proc.returncode,
            last_output=list(child.tail)[-3:],
            **proc.labels(),
        )
        if proc in self._idle:
            self._idle.remove(proc)
            self._restarts += 1
            self._top_up()

    # ---- stopping --------------------------------------------------------------------------------

    async def _stop(self, proc: WalletProcess, *, store: bool, kill: bool = False) -> None:
        """Stop a child from the owner's task; its supervisor reaps it and cleans up."""
        bound = STORE_TIMEOUT + self.settings.stop_timeout + KILL_WAIT
        with trio.move_on_after(bound) as cs:
            cs.shield = True
            await terminate(
                proc, stop_timeout=self.settings.stop_timeout, store=store, reap=False, kill=kill
            )
            await managed(proc).gone.wait()
            await proc.rpc.aclose()
        if not proc.exited.is_set():
            log.error("wallet-rpc did not stop", ident=proc.ident, pid=proc.pid, **proc.labels())

    def _forget(self, proc: WalletProcess) -> None:
        child = managed(proc)
        if proc.pid is not None:
            self._live.pop(proc.pid, None)
        if proc in self._idle:
            self._idle.remove(proc)
        child.output.close()
        with contextlib.suppress(OSError):
            child.config_file.unlink(missing_ok=True)
        if proc.exited.is_set():  # keep the record of a child we could not stop: remove_orphans
            with contextlib.suppress(OSError):
                child.record_file.unlink(missing_ok=True)
            if proc.pid is not None:
                self.live.pids.discard(proc.pid)
            self.live.ports.discard(child.port)
            spawning.prune_logs(self.settings.run_dir / "logs", self.live)


# Private to this module: `_start_unlabelled` turns both into a retry on a new port, and the
# last one into a `ChildStartError`; they never leave the pool (see walletd.errors).
class _ExitedEarly(Exception):
    """The child exited before it was ready (most often: its port was taken meanwhile)."""


class _ForeignListener(Exception):
    """Something other than the child answers on the child's port: never hand it out."""
