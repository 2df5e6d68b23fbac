"""The daemon: builds every part from the config and wires them together.

Start-up: state directories (0700) and the vault key; children left by a walletd that died are
removed (they hold the wallets' locks); the deployment starts (a cluster connects to its
database); then the services in the order `_services` lists them, the socket server last, so a
client never reaches a half-started daemon. SIGTERM/SIGINT stops them in the stages each one's
entry names (`walletd.daemon.services`), within `daemon.shutdown_timeout`: nothing is left
running. What differs between one host and a cluster is the `Deployment`'s
(`walletd.deployment`): App never asks which it runs on.
"""

from __future__ import annotations

import functools
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from walletd.api.connection import ServerLimits
from walletd.api.messages import Request, Response
from walletd.api.routes import Api, MetricsOnly
from walletd.api.server import serve_tcp, serve_unix
from walletd.api.socket_file import listened_socket
from walletd.api.status import Status
from walletd.config import Config
from walletd.daemon.announcements import Announcements, DaemonSwitch
from walletd.daemon.reload import Reloader, limits_from
from walletd.daemon.services import Service, ServiceGroup, Stage, arm_exit_backstop
from walletd.daemon.startup import (
    metrics_listeners,
    prepare_children,
    prepare_dirs,
    wallet_rpc_pool,
)
from walletd.deployment.choose import deployment_for
from walletd.errors import ConfigError, InheritedSocketError
from walletd.escrows.lifecycle import Lifecycle
from walletd.escrows.service import EscrowService
from walletd.monitor import Monitor
from walletd.ops import notify
from walletd.ops.metrics import Metrics
from walletd.sessions.handles import LockProbe
from walletd.sessions.registry import Registry, RunnableSession
from walletd.sessions.session import EscrowSession, SessionSpec
from walletd.state.backups import Backups
from walletd.state.events import EventLog
from walletd.state.vault import Vault
from walletd.wallets.chain import Chain
from walletd.wallets.children import ChildSettings, ProcessPool
from walletd.wallets.failover import DaemonFailover
from walletd.wallets.fastopen import FastOpen
from walletd.wallets.fastopen import prepare as prepare_fast_open
from walletd.wallets.repair import WalletRepair
from walletd.wallets.rpc import DaemonRpc

__all__ = ["App", "prepare_dirs"]

log = structlog.get_logger(__name__)


class App:
    """Every long-lived part of the daemon, wired together."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        *,
        pool: ProcessPool | None = None,
        chain: Chain | None = None,
        connect: Callable[[str], Chain] | None = None,
        lock_probe: LockProbe | None = None,
        exit_backstop: float | None = None,
    ) -> None:
        """`lock_probe`: who holds a wallet's keys-file lock (tests: the fake world's locks);
        by default /proc/locks for walletd's own children, none for a pool given by a test.
        `exit_backstop`: seconds after a stop request the process exits anyway (the CLI's)."""
        state = config.daemon.state_dir
        m = config.monero
        self.run_dir = state / "run"
        # One host: SQLite in the state directory. A cluster: PostgreSQL, every write about an
        # escrow fenced by the lease this host holds on it. This App is its `Wiring`.
        self.deployment = deployment_for(config, self)
        self.store = self.deployment.store
        self.ownership = self.deployment.ownership
        self.vault = Vault.open(state / "walletd.key")
        self.events = EventLog(self.store)
        self.metrics = Metrics()
        self.store.on_error = self.metrics.db_errors.inc
        self.announcements = Announcements(
            events=self.events, metrics=self.metrics, wallet_dir=m.wallet_dir
        )
        self.backups = Backups(m.wallet_dir, state / "backups")
        self.repairs = WalletRepair(
            m.wallet_dir,
            self.backups,
            self.announcements.wallet_repaired,
            kept=self.deployment.kept_versions,
        )
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
            self.lock_probe = self.announcements.keys_lock_holders
        # Tests: fake wallet-rpc processes. Else external endpoints, or our own children.
        self.pool = pool if pool is not None else wallet_rpc_pool(config, self.child_settings)
        self.escrows: EscrowService
        self.registry = Registry(
            lookup=lambda escrow_id: self.escrows.spec_for(escrow_id),
            new_session=self._new_session,
            limits=limits_from(config),
            on_event=self.announcements.session_event,
        )
        # Tests and the dev sandbox pass a fake chain (and fake wallet-rpc processes, `pool`).
        # Without `chain`: every configured monerod (`connect` makes each one's client; tests
        # pass fakes), the one in use chosen by health checks. The monitor, the payout steps and
        # /v1/health all ask whichever that is.
        self.daemons: DaemonFailover | None = None
        if chain is None:
            make = connect or (lambda address: DaemonRpc(f"http://{address}", timeout=10.0))
            self.daemons = DaemonFailover(
                [(address, make(address)) for address in m.daemons],
                on_switch=DaemonSwitch(self.pool, self.registry, self.events),
            )
            chain = self.daemons
        self.chain: Chain = chain
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
            registry=self.registry,
            store=self.store,
            chain=self.chain,
            metrics=self.metrics,
            hosts=self.deployment,
            fast_open=self.fast_open,
            daemons=self.daemons,
        )
        self.deployment.register_metrics(self.metrics.registry)
        self.api = Api(
            escrows=self.escrows,
            lifecycle=self.lifecycle,
            registry=self.registry,
            events=self.events,
            status=self.status,
            metrics=self.metrics,
            forwarding=self.deployment.forwarding,
        )
        self.reloader = Reloader(
            config, config_path, registry=self.registry, monitor=self.monitor, escrows=self.escrows
        )
        self.exit_backstop = exit_backstop
        self._stop = trio.Event()
        self.stopped = trio.Event()

    @property
    def config(self) -> Config:
        """The running config (a SIGHUP may have changed some of its keys)."""
        return self.reloader.config

    def _new_session(self, spec: SessionSpec) -> RunnableSession:
        s = self.config.sessions
        session = EscrowSession(
            spec,
            self.pool,
            open_timeout=self.config.monero.open_timeout,
            restart_intensity=s.restart_intensity,
            restart_period=s.restart_period,
            on_restart=self.announcements.wallet_rpc_restarted,
            on_backup=self.backups.take,
            on_call=self.metrics.observe_rpc,
            store_interval=s.store_interval,
            daemon_address=self.daemons.current if self.daemons else self.config.monero.daemons[0],
            repair=self.repairs.repair,
            lock_probe=self.lock_probe,
            on_damage=self.announcements.wallet_damaged,
            close_timeout=min(30.0, self.config.daemon.shutdown_timeout / 3),
            on_stored=self.deployment.on_stored,
        )
        return self.deployment.session(session)

    # ---- what the deployment asks of the daemon (`walletd.deployment.Wiring`) -------------------

    async def serve(self, request: Request) -> Response:
        return await self.api(request)

    def is_open(self, escrow_id: str) -> bool:
        return self.registry.is_open(escrow_id)

    def sessions_now(self) -> tuple[int, int]:
        stats = self.registry.statistics()
        return stats.active_sessions, stats.max_sessions

    def events_written(self) -> None:
        self.events.wake()

    def request_stop(self) -> None:
        self._stop.set()

    def _services(
        self, inherited: socket.socket | None, metrics: list[trio.SocketListener]
    ) -> list[Service]:
        """Every service, in start order, each with the stage at which it stops."""
        d = self.config.daemon
        serve_api = functools.partial(
            serve_unix,
            d.socket_path,
            self.api,
            mode=d.socket_mode,
            limits=ServerLimits(
                max_body_bytes=d.max_body_bytes,
                max_connections=d.max_connections,
                handler_timeout=d.request_timeout,
            ),
            allow_uids=d.allow_uids or None,
            allow_gids=d.allow_gids or None,
            inherited=inherited,
        )
        serve_metrics = functools.partial(serve_tcp, metrics, MetricsOnly(self.status))

        async def close_sessions(left: float) -> None:
            await self.registry.shutdown(timeout=max(1.0, left * 0.7))

        daemons = self.daemons
        return [
            Service("events", self.events.run, Stage.EVENTS, drain=self.events.close_queue),
            *self.deployment.services(),
            Service("pool", self.pool.run, Stage.LAST),
            Service(
                "registry", self.registry.run, Stage.LAST, steps=((Stage.SESSIONS, close_sessions),)
            ),
            *([Service("daemons", daemons.run, Stage.INTAKE)] if daemons is not None else []),
            Service("lifecycle", self.lifecycle.run, Stage.LAST),
            Service("monitor", self.monitor.run, Stage.INTAKE),
            *([Service("metrics", serve_metrics, stop=None)] if metrics else []),
            Service("server", serve_api, Stage.INTAKE, wait=True),
        ]

    async def run(self, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        try:  # first: LISTEN_* are unset before anything else runs
            inherited = listened_socket(cfg.daemon.socket_path, cfg.daemon.socket_mode)
        except InheritedSocketError as exc:
            raise ConfigError(f"daemon.socket_path: {exc}") from None
        await prepare_children(cfg, self.pool, self.child_settings, self.fast_open)
        metrics: list[trio.SocketListener] = []
        try:
            metrics = await metrics_listeners(cfg.daemon.metrics_address)
            # A cluster unreachable, or another vault key: start-up stops here, saying so.
            await self.deployment.start(self.vault.fingerprint())
            group = ServiceGroup(self._services(inherited, metrics))
            async with trio.open_nursery() as nursery:
                watchdog = notify.watchdog_interval()
                if watchdog:  # systemd counts the pings from READY=1 on
                    nursery.start_soon(notify.watchdog_loop, watchdog)
                await group.start(nursery)
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
                notify.stopping()
                if self.exit_backstop is not None:
                    arm_exit_backstop(self.exit_backstop)
                total = self.config.daemon.shutdown_timeout
                log.info("shutting down", timeout_s=total)
                await group.stop(trio.current_time() + total)
                nursery.cancel_scope.cancel()
        finally:
            for listener in metrics:  # closed by serve_tcp, unless it never started
                listener.socket.close()
            if inherited is not None:  # closed by serve_unix, unless it never started
                inherited.close()
            with trio.CancelScope(shield=True):
                await self.chain.aclose()
            await self.store.aclose()
            self.stopped.set()
            log.info("walletd stopped")

    async def _notify_ready(self) -> None:
        """READY=1 for systemd once the socket is bound and start-up recovery has finished."""
        await self.lifecycle.recovered.wait()
        if not self._stop.is_set():
            path = self.config.daemon.socket_path
            notify.ready(f"serving {path}, {await self.store.count_escrows()} escrows")

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    notify.reloading()
                    self.reloader.reload()
                    notify.ready()
                else:
                    log.info("stop requested", signal=signal.Signals(signum).name)
                    self.request_stop()
