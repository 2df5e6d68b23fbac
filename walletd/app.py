"""The daemon: builds every part from the config, runs them in one nursery, stops them in order.

Start-up: state directories (0700) and the vault key; children left by a walletd that died are
removed (they hold the wallets' locks); the process pool, the registry, the monitor and the socket
server start in that order. The server binds last, so a client never reaches a half-started daemon.

Shutdown (SIGTERM/SIGINT), bounded by `daemon.shutdown_timeout`: the server stops accepting and lets
calls in flight finish (in a cluster the host also leaves the host list and claims no more
forwarded calls, so the other hosts wait for its leases instead of getting its 503); every session
stores and closes its wallets; in a cluster the leases are handed back then, so another host
serves those escrows at once; the pool stops every child (store, SIGTERM, SIGKILL). Nothing is
left running.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from walletd.api.connection import ServerLimits
from walletd.api.forward import ClusterForwarding, Forwarding, SingleHost
from walletd.api.routes import Api, MetricsOnly
from walletd.api.server import serve_tcp, serve_unix
from walletd.api.socket_file import listened_socket
from walletd.api.status import Status
from walletd.cluster.metrics import register as register_cluster_metrics
from walletd.cluster.node import ClusterNode
from walletd.config import Config, SessionsConfig, load_config
from walletd.errors import ConfigError, InheritedSocketError
from walletd.escrows.lifecycle import Lifecycle
from walletd.escrows.service import EscrowService
from walletd.ids import Role
from walletd.monitor import Monitor
from walletd.ops import notify
from walletd.ops.logs import set_level as set_log_level
from walletd.ops.metrics import Metrics
from walletd.ops.preflight import socket_dir_problem, wallet_dir_problem
from walletd.sessions.handles import LockProbe
from walletd.sessions.leased import LeasedSession
from walletd.sessions.registry import Limits, Registry
from walletd.sessions.session import EscrowSession, SessionSpec
from walletd.state.backups import Backups
from walletd.state.events import EventLog
from walletd.state.ownership import LocalOwnership, Ownership
from walletd.state.seam import LocalState, StateStore
from walletd.state.store import Store
from walletd.state.vault import Vault
from walletd.wallets.chain import Chain
from walletd.wallets.children import (
    ChildPool,
    ChildSettings,
    ProcessPool,
)
from walletd.wallets.endpoints import Endpoint, EndpointPool
from walletd.wallets.failover import DaemonFailover
from walletd.wallets.fastopen import FastOpen
from walletd.wallets.fastopen import prepare as prepare_fast_open
from walletd.wallets.keys_lock import lock_holders
from walletd.wallets.orphans import remove_orphans
from walletd.wallets.repair import WalletRepair
from walletd.wallets.rpc import DaemonRpc

__all__ = ["App", "limits_from", "prepare_dirs"]

log = structlog.get_logger(__name__)


def limits_from(config: Config) -> Limits:
    s = config.sessions
    return Limits(
        max_active=config.effective_max_active,
        idle_ttl=s.idle_ttl,
        sweep_interval=s.sweep_interval,
        capacity_wait=s.capacity_wait,
        payout_wait=config.daemon.request_timeout,  # a payout waits for a slot as long as its call
        evict_grace=s.evict_grace,
        monitor_evict_after=config.monitor.cold_interval,
    )


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, walletd runs as {os.getuid()}")
    if st.st_mode & 0o077:
        path.chmod(0o700)


def prepare_dirs(config: Config) -> None:
    """Create walletd's directories: private state, a wallet directory nobody else can reach
    (made 0700; an existing wider one is a `ConfigError`, see `wallet_dir_problem`), and a
    socket directory only we can write."""
    _private_dir(config.daemon.state_dir)
    config.monero.wallet_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = wallet_dir_problem(config.monero.wallet_dir)
    if problem:
        raise ConfigError(problem)
    _private_dir(config.daemon.state_dir / "run")
    sock_dir = config.daemon.socket_path.parent
    sock_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    problem = socket_dir_problem(sock_dir)
    if problem:
        raise ConfigError(problem)


class App:
    """Every long-lived part of the daemon, and the operations that span them."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        *,
        pool: ProcessPool | None = None,
        chain: Chain | None = None,
        connect: Callable[[str], Chain] | None = None,
        lock_probe: LockProbe | None = None,
    ) -> None:
        """`lock_probe`: who holds a wallet's keys-file lock (tests: the fake world's locks);
        by default /proc/locks for walletd's own children, none for a pool given by a test."""
        self.config = config
        self.config_path = config_path
        state = config.daemon.state_dir
        self.run_dir = state / "run"
        # One host: SQLite in the state directory. A cluster: PostgreSQL, every write about an
        # escrow fenced by the lease this host holds on it (walletd.cluster).
        self.cluster: ClusterNode | None = None
        self.ownership: Ownership = LocalOwnership()
        self.store: StateStore
        if config.cluster is not None:
            self.cluster = ClusterNode(config.cluster, config.monero.wallet_dir)
            self.ownership = self.cluster.ownership
            self.store = self.cluster.store
        else:
            self.store = LocalState(Store(state / "walletd.sqlite3"))
        self.vault = Vault.open(state / "walletd.key")
        self.events = EventLog(self.store)
        self.metrics = Metrics()
        self.store.on_error = self.metrics.db_errors.inc
        self.backups = Backups(config.monero.wallet_dir, state / "backups")
        self.repairs = WalletRepair(
            config.monero.wallet_dir,
            self.backups,
            self._wallet_repaired,
            kept=self.cluster.wallet_files if self.cluster is not None else None,
        )
        # Tests and the dev sandbox pass a fake chain (and fake wallet-rpc processes, `pool`).
        # Without `chain`: every configured monerod (`connect` makes each one's client; tests
        # pass fakes), the one in use chosen by health checks. The monitor, the payout steps and
        # /v1/health all ask whichever that is.
        m = config.monero
        self.daemons: DaemonFailover | None = None
        if chain is None:
            make = connect or (lambda address: DaemonRpc(f"http://{address}", timeout=10.0))
            self.daemons = DaemonFailover(
                [(address, make(address)) for address in m.daemons],
                on_switch=self._daemon_switched,
            )
            chain = self.daemons
        self.chain: Chain = chain
        own_children = pool is None and not m.wallet_rpc_endpoints
        self.fast_open = (
            prepare_fast_open(state, wanted=m.fast_open)
            if own_children
            else FastOpen(False, "walletd does not start the wallet-rpc processes")
        )
        self.child_settings = ChildSettings(
            wallet_rpc_path=m.wallet_rpc_path,
            wallet_dir=m.wallet_dir,
            daemon_address=m.daemons[0],
            run_dir=self.run_dir,
            spares=m.spare_processes,
            call_timeout=m.call_timeout,
            extra_env=self.fast_open.env(),
        )
        self.lock_probe = lock_probe
        if lock_probe is None and pool is None:
            self.lock_probe = self._keys_lock_holders
        self.pool: ProcessPool
        if pool is not None:
            self.pool = pool  # tests: fake wallet-rpc processes
        elif m.wallet_rpc_endpoints:
            self.pool = EndpointPool(
                [Endpoint(e.url, e.user, e.password) for e in m.wallet_rpc_endpoints],
                call_timeout=m.call_timeout,
            )
        else:
            self.pool = ChildPool(self.child_settings)
        self.escrows: EscrowService
        self.registry = Registry(
            lookup=lambda escrow_id: self.escrows.spec_for(escrow_id),
            new_session=self._new_session,
            limits=limits_from(config),
            on_event=self._session_event,
        )
        self.escrows = EscrowService(
            self.store,
            self.vault,
            self.registry,
            self.events,
            wallet_dir=m.wallet_dir,
            required_confirmations=config.monitor.required_confirmations,
            ownership=self.ownership,
        )
        self.lifecycle = Lifecycle(
            store=self.store,
            escrows=self.escrows,
            registry=self.registry,
            events=self.events,
            vault=self.vault,
            chain=self.chain,
            wallet_dir=m.wallet_dir,
            state_dir=state,
            metrics=self.metrics,
            daemon_check=config.monitor.height_check,
            fee_priority=m.fee_priority,
            fee_tolerance=m.payout_fee_tolerance,
            ownership=self.ownership,
        )
        self.monitor = Monitor(
            config.monitor,
            store=self.store,
            registry=self.registry,
            events=self.events,
            chain=self.chain,
            metrics=self.metrics,
            ownership=self.ownership,
        )
        self.status = Status(
            registry=self.registry, store=self.store, chain=self.chain, metrics=self.metrics
        )
        self.status.fast_open = self.fast_open
        self.status.daemons = self.daemons
        self.forwarding: Forwarding = SingleHost()
        if self.cluster is not None:
            self.forwarding = ClusterForwarding(
                self.cluster,
                open_here=self.registry.is_open,
                timeout=config.daemon.request_timeout,
            )
            self.status.cluster = self.cluster
            self.status.host_id = self.cluster.host_id
            register_cluster_metrics(self.metrics.registry, self.cluster.figures)
        self.api = Api(
            escrows=self.escrows,
            lifecycle=self.lifecycle,
            registry=self.registry,
            events=self.events,
            status=self.status,
            metrics=self.metrics,
            forwarding=self.forwarding,
        )
        self._scopes: dict[str, trio.CancelScope] = {}
        self._done: dict[str, trio.Event] = {}
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self.exit_backstop: float | None = None  # set by the CLI: seconds after a stop request

    # ---- wiring ----------------------------------------------------------------------------------

    def _new_session(self, spec: SessionSpec) -> EscrowSession | LeasedSession:
        s = self.config.sessions
        session = EscrowSession(
            spec,
            self.pool,
            open_timeout=self.config.monero.open_timeout,
            restart_intensity=s.restart_intensity,
            restart_period=s.restart_period,
            on_restart=self._wallet_rpc_restarted,
            on_backup=self.backups.take,
            on_call=self.metrics.observe_rpc,
            store_interval=s.store_interval,
            daemon_address=self.daemons.current if self.daemons else self.config.monero.daemons[0],
            repair=self.repairs.repair,
            lock_probe=self.lock_probe,
            on_damage=self._wallet_damaged,
            close_timeout=min(30.0, self.config.daemon.shutdown_timeout / 3),
            on_stored=self._wallet_stored if self.cluster is not None else None,
        )
        # A cluster: only while this host holds the escrow's lease, its files from the database.
        return session if self.cluster is None else LeasedSession(session, self.ownership)

    async def _wallet_stored(self, escrow_id: str, role: Role, file: str) -> None:
        await self.ownership.wallets_stored(escrow_id, {role: file})

    async def run_cluster(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The cluster's background parts (after `cluster.start`), wired to this daemon."""
        assert self.cluster is not None
        assert isinstance(self.forwarding, ClusterForwarding)
        await self.cluster.run(
            serve=self.forwarding.incoming(self.api),
            sessions=self._sessions_now,
            on_events=self.events.wake,
            task_status=task_status,
        )

    def _sessions_now(self) -> tuple[int, int]:
        stats = self.registry.statistics()
        return stats.active_sessions, stats.max_sessions

    async def _daemon_switched(self, old: str, new: str) -> None:
        """Restart every wallet-rpc against the new daemon: new children for new sessions, every
        open session closed and reopened on its next call. Payouts are safe across it: a signed
        blob is recorded before it is sent and only ever resubmitted as is."""
        self.pool.set_daemon_address(new)
        sessions = self.registry.restart_all("daemon_switched")
        await self.events.emit("daemon_switched", None, **{"from": old, "to": new})
        log.warning("monerod switched", from_=old, to=new, sessions_restarted=sessions)
        await trio.lowlevel.checkpoint()

    async def _keys_lock_holders(self, file: str) -> frozenset[int] | None:
        """Who holds `file`'s keys-file lock (checked after every open: sessions.handles)."""
        path = self.config.monero.wallet_dir / f"{file}.keys"
        try:
            return await trio.to_thread.run_sync(lock_holders, path)
        except FileNotFoundError:
            return None

    def _wallet_repaired(self, escrow_id: str, **data: Any) -> None:  # Any: event JSON
        self.metrics.wallet_repairs.labels(source=str(data.get("source", ""))).inc()
        self.events.emit_soon("wallet_repaired", escrow_id, **data)

    def _wallet_damaged(self, escrow_id: str, role: Role, error: str) -> None:
        """A wallet in a session reported damage and was reopened from its files unsaved."""
        self._wallet_repaired(escrow_id, role=role, source="reopened", error=error)

    async def _wallet_rpc_restarted(self, escrow_id: str, role: Role, why: str) -> None:
        self.metrics.wallet_rpc_restarts.inc()
        await self.events.emit("wallet_rpc_restarted", escrow_id, role=role, reason=why)

    def _session_event(self, type_: str, escrow_id: str, **data: Any) -> None:  # Any: event JSON
        if type_ == "session_opened":
            self.metrics.session_opens.inc()
        elif type_ == "session_closed":
            self.metrics.session_closes.labels(reason=data.get("reason", "unknown")).inc()
        self.events.emit_soon(type_, escrow_id, session_announcement=True, **data)

    def reload(self) -> None:
        """SIGHUP: re-read the config file; apply the keys that can change live (session limits,
        monitor intervals, confirmations default, log.level), name those that need a restart."""
        if self.config_path is None:
            log.warning("reload ignored", reason="no config file to re-read (walletd dev); restart")
            return
        try:
            fresh = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused; keeping the running config", error=str(exc))
            return
        self.config, changed, restart = _reloaded(self.config, fresh)
        self.registry.set_limits(limits_from(self.config))
        self.monitor.set_interval(self.config.monitor.poll_interval)
        # The default for new escrows, created or adopted (one value: the escrow service's).
        self.escrows.required_confirmations = self.config.monitor.required_confirmations
        # One line, logged before a new level applies so it shows whatever the level becomes.
        (log.warning if restart else log.info)(
            "config reloaded",
            changed=changed,
            restart_needed=restart,
            max_active=self.config.effective_max_active,
        )
        set_log_level(self.config.log.level)

    def request_stop(self) -> None:
        self._stop.set()

    # ---- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        try:  # first: LISTEN_* are unset before anything else runs
            inherited = listened_socket(cfg.daemon.socket_path, cfg.daemon.socket_mode)
        except InheritedSocketError as exc:
            raise ConfigError(f"daemon.socket_path: {exc}") from None
        if cfg.monero.wallet_rpc_endpoints:
            log.warning(
                "using external wallet-rpc endpoints: session cap limited to endpoints/3",
                endpoints=len(cfg.monero.wallet_rpc_endpoints),
                max_active=cfg.effective_max_active,
                configured_max_active=cfg.sessions.max_active,
            )
        elif isinstance(self.pool, ChildPool):
            stopped = await trio.to_thread.run_sync(remove_orphans, self.child_settings)
            if stopped:
                log.warning("stopped wallet-rpc children left by a previous walletd", count=stopped)
            if self.fast_open.enabled:
                log.info("fast wallet opens on", library=str(self.fast_open.library))
            else:
                log.warning("fast wallet opens off", reason=self.fast_open.reason)
        limits = ServerLimits(
            max_body_bytes=cfg.daemon.max_body_bytes,
            max_connections=cfg.daemon.max_connections,
            handler_timeout=cfg.daemon.request_timeout,
        )
        metrics_listeners: list[trio.SocketListener] = []
        try:
            # Bound before anything starts: a taken port stops start-up with the key's name.
            metrics_listeners = await self._metrics_listeners()
            if self.cluster is not None:
                # Unreachable, or another vault key: start-up stops here, saying so.
                await self.cluster.start(self.vault.fingerprint())
            async with trio.open_nursery() as nursery:
                watchdog = notify.watchdog_interval()
                if watchdog:  # systemd counts the pings from READY=1 on
                    nursery.start_soon(notify.watchdog_loop, watchdog)
                await nursery.start(self._scoped, "events", self.events.run)
                if self.cluster is not None:
                    await nursery.start(self._scoped, "cluster", self.run_cluster)
                await nursery.start(self._scoped, "pool", self.pool.run)
                await nursery.start(self._scoped, "registry", self.registry.run)
                if self.daemons is not None:
                    await nursery.start(self._scoped, "daemons", self.daemons.run)
                await nursery.start(self._scoped, "lifecycle", self.lifecycle.run)
                await nursery.start(self._scoped, "monitor", self.monitor.run)
                if metrics_listeners:
                    await nursery.start(
                        self._scoped,
                        "metrics",
                        lambda task_status: serve_tcp(
                            metrics_listeners, MetricsOnly(self.status), task_status=task_status
                        ),
                    )
                await nursery.start(
                    self._scoped,
                    "server",
                    lambda task_status: serve_unix(
                        cfg.daemon.socket_path,
                        self.api,
                        mode=cfg.daemon.socket_mode,
                        limits=limits,
                        allow_uids=cfg.daemon.allow_uids or None,
                        allow_gids=cfg.daemon.allow_gids or None,
                        inherited=inherited,
                        task_status=task_status,
                    ),
                )
                nursery.start_soon(self._signals)
                nursery.start_soon(self.events.prune_forever, cfg.daemon.events_retention_days)
                nursery.start_soon(self._notify_ready)
                log.info(
                    "walletd ready",
                    socket=str(cfg.daemon.socket_path),
                    max_active=self.registry.limits.max_active,
                    escrows=await self.store.count_escrows(),
                )
                task_status.started(self)
                await self._stop.wait()
                await self._shutdown()
                nursery.cancel_scope.cancel()
        finally:
            for listener in metrics_listeners:  # closed by serve_tcp, unless it never started
                listener.socket.close()
            if inherited is not None:  # closed by serve_unix, unless it never started
                inherited.close()
            with trio.CancelScope(shield=True):
                await self.chain.aclose()
            await self.store.aclose()
            self.stopped.set()
            log.info("walletd stopped")

    async def _metrics_listeners(self) -> list[trio.SocketListener]:
        """The listening sockets of `daemon.metrics_address` (none when it is empty)."""
        address = self.config.daemon.metrics_address
        if not address:
            return []
        host, _, port = address.rpartition(":")
        try:
            return await trio.open_tcp_listeners(
                int(port), host=host.removeprefix("[").removesuffix("]")
            )
        except OSError as exc:
            raise ConfigError(
                f"daemon.metrics_address: cannot listen on {address}: {exc.strerror or exc}"
            ) from None

    async def _scoped(
        self, name: str, fn: Callable[..., Awaitable[None]], *, task_status: trio.TaskStatus[None]
    ) -> None:
        done = self._done[name] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scopes[name] = scope
                await fn(task_status=task_status)
        finally:
            done.set()

    async def _notify_ready(self) -> None:
        """READY=1 for systemd once the socket is bound and start-up recovery has finished."""
        await self.lifecycle.recovered.wait()
        if not self._stop.is_set():
            path = self.config.daemon.socket_path
            notify.ready(f"serving {path}, {await self.store.count_escrows()} escrows")

    async def _shutdown(self) -> None:
        notify.stopping()
        if self.exit_backstop is not None:
            # Last resort if something ignores every bound below: the process exits anyway
            # (children get SIGTERM through PDEATHSIG and store their wallets).
            timer = threading.Timer(self.exit_backstop, _hard_exit, args=(self.exit_backstop,))
            timer.daemon = True
            timer.start()
        total = self.config.daemon.shutdown_timeout
        deadline = trio.current_time() + total
        log.info("shutting down", timeout_s=total)
        with trio.CancelScope(shield=True):
            self._scopes["monitor"].cancel()
            if "daemons" in self._scopes:
                self._scopes["daemons"].cancel()  # no daemon switch while sessions close
            self._scopes["server"].cancel()  # stops accepting; calls in flight get a grace
            with trio.move_on_after(max(0.0, deadline - trio.current_time())):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._done["server"].wait)
                    if self.cluster is not None:
                        # Forwarded calls too: none claimed from now on (the other hosts
                        # serve them once our leases are back), those claimed get the grace.
                        nursery.start_soon(self.cluster.stop_serving)
            await self.registry.shutdown(timeout=max(1.0, (deadline - trio.current_time()) * 0.7))
            # What the sessions announced while closing is written before the end.
            self.events.close_queue()
            with trio.move_on_after(max(0.5, deadline - trio.current_time())):
                await self._done["events"].wait()
            if self.cluster is not None:
                # Stored and closed: hand the leases back now, so the others serve at once.
                with trio.move_on_after(max(0.5, deadline - trio.current_time())):
                    await self.cluster.ownership.release_unused()
            self._scopes["lifecycle"].cancel()
            self._scopes["registry"].cancel()
            self._scopes["pool"].cancel()  # stores, SIGTERM, SIGKILL every child (bounded)
            if "cluster" in self._scopes:
                # After the sessions: each released its lease as it closed.
                self._scopes["cluster"].cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    notify.reloading()
                    self.reload()
                    notify.ready()
                else:
                    log.info("stop requested", signal=signal.Signals(signum).name)
                    self.request_stop()


# Keys SIGHUP applies; any other changed key keeps its running value until a restart.
_RELOADABLE = frozenset(
    {f"sessions.{name}" for name in attrs.fields_dict(SessionsConfig)}
    | {"monitor.poll_interval", "monitor.cold_interval", "monitor.required_confirmations"}
    | {"log.level"}
)


def _reloaded(running: Config, fresh: Config) -> tuple[Config, dict[str, list[Any]], list[str]]:
    """The config to run with after a reload, the applied changes ({key: [old, new]}) and the
    changed keys that need a restart (named only: their values may be secrets)."""
    changed: dict[str, list[Any]] = {}  # Any: config values, logged as JSON
    restart: list[str] = []
    sections: dict[str, Any] = {}  # Any: one attrs class per section
    for section in attrs.fields(Config):
        old, new = getattr(running, section.name), getattr(fresh, section.name)
        if old is None or new is None:  # an optional section ([cluster]): never applied live
            if old != new:
                restart.append(section.name)
            continue
        applied: dict[str, Any] = {}
        for field in attrs.fields(type(old)):
            before, after = getattr(old, field.name), getattr(new, field.name)
            if before == after:
                continue
            key = f"{section.name}.{field.name}"
            if key in _RELOADABLE:
                applied[field.name] = after
                changed[key] = [before, after]
            else:
                restart.append(key)
        sections[section.name] = attrs.evolve(old, **applied)
    return attrs.evolve(running, **sections), changed, restart


def _hard_exit(after: float) -> None:
    log.critical("shutdown overran its bound; exiting now", after_s=after)
    os._exit(70)
