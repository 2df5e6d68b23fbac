"""walletd's configuration: a TOML file read into frozen attrs classes.

A missing file, an unknown key or a bad value stops start-up with a `ConfigError` whose message
names the key (`sessions.max_active: must be an integer >= 1, got 0`). Every key and its default is
documented in config.example.toml; `tests/test_config.py` checks the two stay in step.

Each key is declared once, as a field made by `_key(default, parser)`: the parser rides on the
field's metadata, and parsing walks `attrs.fields` of the section class, so there is no separate
schema to keep in step with the classes.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import attrs
from attrs import AttrsInstance

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
A = TypeVar("A", bound=AttrsInstance)
Parser = Callable[[str, object], T]  # (key as named in messages, raw TOML value) -> typed value


@attrs.frozen
class EndpointConfig:
    """An externally run monero-wallet-rpc that walletd uses instead of its own children."""

    url: str
    user: str
    password: str = attrs.field(repr=False)


# ---- value parsers: each takes (key, raw value) and returns the typed value or raises ------------


def _int(low: int, high: int | None = None) -> Parser[int]:
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


def _seconds(low: float) -> Parser[float]:
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


def _one_of(*choices: str) -> Parser[str]:
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


def _trusted_host_port(key: str, value: object) -> str:
    """host:port of a monerod walletd may trust: loopback, or an IP in a private range (a daemon
    on the operator's own network). No other host names: a name is a DNS look-up away from
    someone else's daemon."""
    text = _string(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: must be host:port, got {value!r}")
    if host == "localhost":
        return text
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        ip = None
    private = (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("172.16.0.0/12"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("fc00::/7"),
    )
    if ip is None or not (ip.is_loopback or any(ip in net for net in private)):
        raise ConfigError(
            f"{key}: monerod must be on loopback or a private address "
            f"(10/8, 172.16/12, 192.168/16, fc00::/7), got host {host!r}"
        )
    return text


def _metrics_address(key: str, value: object) -> str:
    """Empty (off) or host:port on loopback: the metrics listener has no authentication."""
    if value == "":
        return ""
    text = _string(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f'{key}: must be "" (off) or host:port such as 127.0.0.1:9464, got {value!r}'
        )
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        loopback = literal == "localhost" or ipaddress.ip_address(literal).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"{key}: metrics are served on loopback only (127.0.0.1, [::1] or localhost), "
            f"got host {host!r}"
        )
    return text


def _daemon_list(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of host:port strings, got {value!r}")
    out = tuple(_trusted_host_port(f"{key}[{i}]", item) for i, item in enumerate(value))
    if len(set(out)) != len(out):
        raise ConfigError(f"{key}: lists a daemon twice")
    return out


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


# ---- each key is declared once: a typed field with its default and its parser ------------------

_PARSE = "walletd.config.parse"


def _key(default: T, parse: Parser[T]) -> T:
    """A config key: its default, and the parser that checks a value given in the file."""
    return attrs.field(default=default, metadata={_PARSE: parse})


@attrs.frozen
class DaemonConfig:
    socket_path: Path = _key(Path("/run/walletd/walletd.sock"), _path)
    socket_mode: int = _key(0o660, _mode)
    state_dir: Path = _key(Path("/var/lib/walletd"), _path)
    allow_uids: frozenset[int] = _key(frozenset(), _ids)
    allow_gids: frozenset[int] = _key(frozenset(), _ids)
    shutdown_timeout: float = _key(30.0, _seconds(1))
    max_body_bytes: int = _key(1_048_576, _int(1024, 64 * 1024 * 1024))
    max_connections: int = _key(64, _int(1, 10_000))
    request_timeout: float = _key(90.0, _seconds(1))
    events_retention_days: int = _key(90, _int(0, 36500))
    metrics_address: str = _key("", _metrics_address)


@attrs.frozen
class MoneroConfig:
    daemon_address: str = _key("127.0.0.1:18081", _loopback_host_port)
    daemon_addresses: tuple[str, ...] = _key((), _daemon_list)
    wallet_dir: Path = _key(Path("/var/lib/walletd/wallets"), _path)
    wallet_rpc_path: str = _key("monero-wallet-rpc", _string)
    wallet_rpc_endpoints: tuple[EndpointConfig, ...] = _key((), _endpoints)
    spare_processes: int = _key(3, _int(0, 30))
    call_timeout: float = _key(30.0, _seconds(0.1))
    open_timeout: float = _key(120.0, _seconds(1))
    fast_open: bool = _key(True, _bool)

    @property
    def daemons(self) -> tuple[str, ...]:
        """The monerod walletd may use, in order of preference."""
        return self.daemon_addresses or (self.daemon_address,)


@attrs.frozen
class SessionsConfig:
    max_active: int = _key(10, _int(1, 1000))
    idle_ttl: float = _key(7200.0, _seconds(1))
    sweep_interval: float = _key(600.0, _seconds(0.1))
    capacity_wait: float = _key(30.0, _seconds(0))
    evict_grace: float = _key(60.0, _seconds(1))
    restart_intensity: int = _key(3, _int(0, 100))
    restart_period: float = _key(60.0, _seconds(1))
    store_interval: float = _key(300.0, _seconds(1))


@attrs.frozen
class MonitorConfig:
    enabled: bool = _key(True, _bool)
    poll_interval: float = _key(30.0, _seconds(0.1))
    required_confirmations: int = _key(10, _int(1, 1000))
    cold_interval: float = _key(300.0, _seconds(0.1))
    height_check: float = _key(2.0, _seconds(0.05))
    # Exchange a ready escrow's multisig info ahead, in its open session, so a payout skips it.
    pre_exchange: bool = _key(True, _bool)


@attrs.frozen
class LogConfig:
    level: str = _key("info", _one_of("debug", "info", "warning", "error"))
    format: str = _key("json", _one_of("json", "console"))


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


def _section(name: str, cls: type[A], raw: object) -> A:
    """Parse one [section] table into `cls`, each key by the parser declared on its field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: must be a table")
    fields = attrs.fields_dict(cls)
    values: dict[str, object] = {}
    for key, value in raw.items():
        field = fields.get(key)
        if field is None:
            raise ConfigError(f"{name}.{key}: unknown key")
        parse: Parser[object] = field.metadata[_PARSE]
        values[key] = parse(f"{name}.{key}", value)
    return _build(cls, values)


def _build(cls: Callable[..., T], values: Mapping[str, object]) -> T:
    """Construct `cls` from parsed values (keys checked by the caller, types by the parsers)."""
    return cls(**values)


def parse_config(raw: Mapping[str, object]) -> Config:
    """Build a `Config` from parsed TOML, rejecting unknown sections and keys."""
    defaults = Config()
    sections: dict[str, object] = {}
    for name, table in raw.items():
        if name not in attrs.fields_dict(Config):
            raise ConfigError(f"{name}: unknown section")
        # Each section's class is the class of its default: DaemonConfig for [daemon], ...
        sections[name] = _section(name, type(getattr(defaults, name)), table)
    config = _build(Config, sections)
    if config.monero.wallet_rpc_endpoints and len(config.monero.wallet_rpc_endpoints) < 3:
        raise ConfigError("monero.wallet_rpc_endpoints: needs at least 3 endpoints")
    m = config.monero
    monero = raw.get("monero")
    given = isinstance(monero, Mapping) and "daemon_address" in monero
    if m.daemon_addresses and given and m.daemon_address != m.daemon_addresses[0]:
        raise ConfigError(
            f"monero.daemon_addresses: starts with {m.daemon_addresses[0]!r} but "
            f"monero.daemon_address is {m.daemon_address!r}; give one of the two"
        )
    if len(config.monero.daemons) > 1 and config.monero.wallet_rpc_endpoints:
        # Failover restarts wallet-rpc against another daemon: only walletd's own children can be.
        raise ConfigError(
            "monero.daemon_addresses: several daemons need walletd's own wallet-rpc children, "
            "not monero.wallet_rpc_endpoints"
        )
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
