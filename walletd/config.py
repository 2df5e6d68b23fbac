"""walletd's configuration: a TOML file read into frozen attrs classes.

A missing file, an unknown key or a bad value stops start-up with a `ConfigError` whose message
names the key (`sessions.max_active: must be an integer >= 1, got 0`). Every key and its default is
documented in config.example.toml; `tests/test_config.py` checks the two stay in step.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from walletd.errors import ConfigError

__all__ = [
    "Config",
    "DaemonConfig",
    "EndpointConfig",
    "LogConfig",
    "MoneroConfig",
    "MonitorConfig",
    "SessionsConfig",
    "load_config",
    "parse_config",
]

T = TypeVar("T")


@attrs.frozen
class EndpointConfig:
    """An externally run monero-wallet-rpc that walletd uses instead of its own children."""

    url: str
    user: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class DaemonConfig:
    socket_path: Path = Path("/run/walletd/walletd.sock")
    socket_mode: int = 0o660
    state_dir: Path = Path("/var/lib/walletd")
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    shutdown_timeout: float = 30.0
    max_body_bytes: int = 1_048_576
    max_connections: int = 64
    request_timeout: float = 90.0
    events_retention_days: int = 90


@attrs.frozen
class MoneroConfig:
    daemon_address: str = "127.0.0.1:18081"
    wallet_dir: Path = Path("/var/lib/walletd/wallets")
    wallet_rpc_path: str = "monero-wallet-rpc"
    wallet_rpc_endpoints: tuple[EndpointConfig, ...] = ()
    spare_processes: int = 3
    call_timeout: float = 30.0
    open_timeout: float = 120.0
    fast_open: bool = True


@attrs.frozen
class SessionsConfig:
    max_active: int = 10
    idle_ttl: float = 7200.0
    sweep_interval: float = 600.0
    capacity_wait: float = 30.0
    evict_grace: float = 60.0
    restart_intensity: int = 3
    restart_period: float = 60.0
    store_interval: float = 300.0


@attrs.frozen
class MonitorConfig:
    enabled: bool = True
    poll_interval: float = 30.0
    required_confirmations: int = 10
    cold_interval: float = 300.0
    height_check: float = 2.0


@attrs.frozen
class LogConfig:
    level: str = "info"
    format: str = "json"


@attrs.frozen
class Config:
    daemon: DaemonConfig = DaemonConfig()
    monero: MoneroConfig = MoneroConfig()
    sessions: SessionsConfig = SessionsConfig()
    monitor: MonitorConfig = MonitorConfig()
    log: LogConfig = LogConfig()

    @property
    def effective_max_active(self) -> int:
        """The session cap: with external endpoints each session needs three of them."""
        endpoints = len(self.monero.wallet_rpc_endpoints)
        if endpoints:
            return min(self.sessions.max_active, endpoints // 3)
        return self.sessions.max_active


# ---- value parsers: each takes (key, raw value) and returns the typed value or raises ------------


def _int(low: int, high: int | None = None) -> Callable[[str, object], int]:
    def parse(key: str, value: object) -> int:
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise ConfigError(f"{key}: must be an integer {bound}, got {value!r}")
        return value

    return parse


def _seconds(low: float) -> Callable[[str, object], float]:
    def parse(key: str, value: object) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool) or float(value) < low:
            raise ConfigError(f"{key}: must be a number of seconds >= {low}, got {value!r}")
        return float(value)

    return parse


def _path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(f"{key}: must be a non-empty path string, got {value!r}")
    return Path(value)


def _string(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
    return value


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


def _one_of(*choices: str) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return parse


def _mode(key: str, value: object) -> int:
    # A string of octal digits: "0660". An integer would be read as decimal 660 by mistake.
    if not isinstance(value, str) or not value.isdigit() or any(c > "7" for c in value):
        raise ConfigError(f'{key}: must be an octal string such as "0660", got {value!r}')
    mode = int(value, 8)
    if mode & ~0o777 or mode & 0o007:
        raise ConfigError(f"{key}: must give no permission to others (like 0660), got {value!r}")
    return mode


def _loopback_host_port(key: str, value: object) -> str:
    text = _string(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: must be host:port, got {value!r}")
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        raise ConfigError(f"{key}: walletd talks to loopback only, got host {host!r}")
    return text


def _ids(key: str, value: object) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ConfigError(f"{key}: must be a list of non-negative integers, got {value!r}")
    return frozenset(value)


def _endpoints(key: str, value: object) -> tuple[EndpointConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of {{url, user, password}} tables")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a table with url, user, password")
        unknown = set(item) - {"url", "user", "password"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
        missing = {"url", "user", "password"} - set(item)
        if missing:
            raise ConfigError(f"{where}.{sorted(missing)[0]}: missing")
        url = _string(f"{where}.url", item["url"])
        if not (url.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:"))):
            raise ConfigError(f"{where}.url: must be http:// on loopback, got {url!r}")
        out.append(
            EndpointConfig(
                url=url.rstrip("/"),
                user=_string(f"{where}.user", item["user"]),
                password=_string(f"{where}.password", item["password"]),
            )
        )
    if len(out) % 3:
        raise ConfigError(f"{key}: needs a multiple of 3 endpoints (3 per session), got {len(out)}")
    return tuple(out)


_SCHEMA: dict[str, tuple[type[Any], dict[str, Callable[[str, object], Any]]]] = {
    "daemon": (
        DaemonConfig,
        {
            "socket_path": _path,
            "socket_mode": _mode,
            "state_dir": _path,
            "allow_uids": _ids,
            "allow_gids": _ids,
            "shutdown_timeout": _seconds(1),
            "max_body_bytes": _int(1024, 64 * 1024 * 1024),
            "max_connections": _int(1, 10_000),
            "request_timeout": _seconds(1),
            "events_retention_days": _int(0, 36500),
        },
    ),
    "monero": (
        MoneroConfig,
        {
            "daemon_address": _loopback_host_port,
            "wallet_dir": _path,
            "wallet_rpc_path": _string,
            "wallet_rpc_endpoints": _endpoints,
            "spare_processes": _int(0, 30),
            "call_timeout": _seconds(0.1),
            "open_timeout": _seconds(1),
            "fast_open": _bool,
        },
    ),
    "sessions": (
        SessionsConfig,
        {
            "max_active": _int(1, 1000),
            "idle_ttl": _seconds(1),
            "sweep_interval": _seconds(0.1),
            "capacity_wait": _seconds(0),
            "evict_grace": _seconds(1),
            "restart_intensity": _int(0, 100),
            "restart_period": _seconds(1),
            "store_interval": _seconds(1),
        },
    ),
    "monitor": (
        MonitorConfig,
        {
            "enabled": _bool,
            "poll_interval": _seconds(0.1),
            "required_confirmations": _int(1, 1000),
            "cold_interval": _seconds(0.1),
            "height_check": _seconds(0.05),
        },
    ),
    "log": (
        LogConfig,
        {
            "level": _one_of("debug", "info", "warning", "error"),
            "format": _one_of("json", "console"),
        },
    ),
}


def _section(name: str, raw: object) -> Any:
    cls, parsers = _SCHEMA[name]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: must be a table")
    values = {}
    for key, value in raw.items():
        if key not in parsers:
            raise ConfigError(f"{name}.{key}: unknown key")
        values[key] = parsers[key](f"{name}.{key}", value)
    return cls(**values)


def parse_config(raw: Mapping[str, object]) -> Config:
    """Build a `Config` from parsed TOML, rejecting unknown sections and keys."""
    sections = {}
    for name, table in raw.items():
        if name not in _SCHEMA:
            raise ConfigError(f"{name}: unknown section")
        sections[name] = _section(name, table)
    config = Config(**sections)
    if config.monero.wallet_rpc_endpoints and len(config.monero.wallet_rpc_endpoints) < 3:
        raise ConfigError("monero.wallet_rpc_endpoints: needs at least 3 endpoints")
    return config


def load_config(path: Path) -> Config:
    """Read and check the TOML file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
    return parse_config(raw)
