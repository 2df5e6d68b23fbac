"""What the wallets' incidents turn into: events on the feed, metrics, and restarted children.

The sessions, the registry, the repairs and the monerod failover report what happened to them
through callbacks; `Announcements` gives each one, so they know nothing of the event log or
the metrics (the figures of `/v1/stats` are the registry's and the pool's `statistics()`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
import trio

from walletd.ids import Role
from walletd.ops.metrics import Metrics
from walletd.sessions.registry import Registry
from walletd.state.events import EventLog
from walletd.wallets.children import ProcessPool
from walletd.wallets.keys_lock import lock_holders

__all__ = ["Announcements", "DaemonSwitch"]

log = structlog.get_logger(__name__)


class Announcements:
    def __init__(self, *, events: EventLog, metrics: Metrics, wallet_dir: Path) -> None:
        self._events = events
        self._metrics = metrics
        self._wallet_dir = wallet_dir

    def wallet_repaired(self, escrow_id: str, **data: Any) -> None:  # Any: event JSON
        self._metrics.wallet_repairs.labels(source=str(data.get("source", ""))).inc()
        self._events.emit_soon("wallet_repaired", escrow_id, **data)

    def wallet_damaged(self, escrow_id: str, role: Role, error: str) -> None:
        """A wallet in a session reported damage and was reopened from its files unsaved."""
        self.wallet_repaired(escrow_id, role=role, source="reopened", error=error)

    async def wallet_rpc_restarted(self, escrow_id: str, role: Role, why: str) -> None:
        self._metrics.wallet_rpc_restarts.inc()
        await self._events.emit("wallet_rpc_restarted", escrow_id, role=role, reason=why)

    def session_event(self, type_: str, escrow_id: str, **data: Any) -> None:  # Any: event JSON
        if type_ == "session_opened":
            self._metrics.session_opens.inc()
        elif type_ == "session_closed":
            self._metrics.session_closes.labels(reason=data.get("reason", "unknown")).inc()
        self._events.emit_soon(type_, escrow_id, session_announcement=True, **data)

    async def keys_lock_holders(self, file: str) -> frozenset[int] | None:
        """Who holds `file`'s keys-file lock (checked after every open: sessions.handles)."""
        path = self._wallet_dir / f"{file}.keys"
        try:
            return await trio.to_thread.run_sync(lock_holders, path)
        except FileNotFoundError:
            return None


class DaemonSwitch:
    """monerod switched (`DaemonFailover`): every wallet-rpc restarts against the new one."""

    def __init__(self, pool: ProcessPool, registry: Registry, events: EventLog) -> None:
        self._pool = pool
        self._registry = registry
        self._events = events

    async def __call__(self, old: str, new: str) -> None:
        """New children for new sessions, every open session closed and reopened on its next
        call. Payouts are safe across it: a signed blob is recorded before it is sent and only
        ever resubmitted as is."""
        self._pool.set_daemon_address(new)
        sessions = self._registry.restart_all("daemon_switched")
        await self._events.emit("daemon_switched", None, **{"from": old, "to": new})
        log.warning("monerod switched", from_=old, to=new, sessions_restarted=sessions)
        await trio.lowlevel.checkpoint()
