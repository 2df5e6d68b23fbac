"""SIGHUP: re-read the config file and apply the keys that can change live (session limits,
monitor intervals, confirmations default, log.level); name those that need a restart.

A file that no longer parses is refused as a whole and the running config kept. Changed keys
that need a restart are named, never shown: their values may be secrets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import structlog

from walletd.config import Config, SessionsConfig, load_config
from walletd.errors import ConfigError
from walletd.escrows.service import EscrowService
from walletd.monitor import Monitor
from walletd.ops.logs import set_level as set_log_level
from walletd.sessions.registry import Limits, Registry

__all__ = ["Reloader", "limits_from", "reloaded"]

log = structlog.get_logger(__name__)

# Keys SIGHUP applies; any other changed key keeps its running value until a restart.
_RELOADABLE = frozenset(
    {f"sessions.{name}" for name in attrs.fields_dict(SessionsConfig)}
    | {"monitor.poll_interval", "monitor.cold_interval", "monitor.required_confirmations"}
    | {"log.level"}
)


def limits_from(config: Config) -> Limits:
    """The session registry's limits, as `config` sets them."""
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


class Reloader:
    """Applies a reloaded config to the parts that take it live; `config` is the running one."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        registry: Registry,
        monitor: Monitor,
        escrows: EscrowService,
    ) -> None:
        self.config = config
        self.path = config_path  # the file SIGHUP re-reads (None: `walletd dev`, nothing to read)
        self._registry = registry
        self._monitor = monitor
        self._escrows = escrows

    def reload(self) -> None:
        if self.path is None:
            log.warning("reload ignored", reason="no config file to re-read (walletd dev); restart")
            return
        try:
            fresh = load_config(self.path)
        except ConfigError as exc:
            log.error("reload refused; keeping the running config", error=str(exc))
            return
        self.config, changed, restart = reloaded(self.config, fresh)
        self._registry.set_limits(limits_from(self.config))
        self._monitor.set_interval(self.config.monitor.poll_interval)
        # The default for new escrows, created or adopted (one value: the escrow service's).
        self._escrows.required_confirmations = self.config.monitor.required_confirmations
        # One line, logged before a new level applies so it shows whatever the level becomes.
        (log.warning if restart else log.info)(
            "config reloaded",
            changed=changed,
            restart_needed=restart,
            max_active=self.config.effective_max_active,
        )
        set_log_level(self.config.log.level)


def reloaded(running: Config, fresh: Config) -> tuple[Config, dict[str, list[Any]], list[str]]:
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
