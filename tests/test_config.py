"""Configuration: the example file documents every key with its default; bad input names the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import attrs
import pytest

from walletd.config import Config, load_config, parse_config
from walletd.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def test_example_matches_defaults() -> None:
    """config.example.toml holds every key, each with the default walletd uses."""
    assert load_config(EXAMPLE) == Config()


def test_example_documents_every_key() -> None:
    """No key exists in the code that the example file does not show."""
    raw = tomllib.loads(EXAMPLE.read_text())
    for section in attrs.fields(Config):
        keys = {f.name for f in attrs.fields(type(getattr(Config(), section.name)))}
        assert set(raw[section.name]) == keys, section.name


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"sessions": {"max_active": 0}}, "sessions.max_active"),
        ({"sessions": {"max_active": "10"}}, "sessions.max_active"),
        ({"sessions": {"max_active": True}}, "sessions.max_active"),
        ({"sessions": {"idle_tll": 5}}, "sessions.idle_tll"),
        ({"session": {}}, "session"),
        ({"daemon": {"socket_mode": "0666"}}, "daemon.socket_mode"),
        ({"daemon": {"socket_mode": 660}}, "daemon.socket_mode"),
        ({"monero": {"daemon_address": "node.example.com:18081"}}, "monero.daemon_address"),
        ({"monero": {"daemon_address": "127.0.0.1"}}, "monero.daemon_address"),
        ({"monero": {"daemon_addresses": "127.0.0.1:18081"}}, "monero.daemon_addresses"),
        (
            {"monero": {"daemon_addresses": ["127.0.0.1:18081", "node.example.com:18081"]}},
            "monero.daemon_addresses[1]",
        ),
        ({"monero": {"daemon_addresses": ["8.8.8.8:18081"]}}, "monero.daemon_addresses[0]"),
        ({"monero": {"daemon_addresses": ["169.254.1.1:18081"]}}, "monero.daemon_addresses[0]"),
        ({"monero": {"daemon_addresses": ["127.0.0.1:0"]}}, "monero.daemon_addresses[0]"),
        (
            {"monero": {"daemon_addresses": ["127.0.0.1:18081", "127.0.0.1:18081"]}},
            "monero.daemon_addresses",
        ),
        (
            {
                "monero": {
                    "daemon_address": "127.0.0.1:1",
                    "daemon_addresses": ["127.0.0.1:2"],
                }
            },
            "monero.daemon_addresses",
        ),
        (
            {
                "monero": {
                    "daemon_addresses": ["127.0.0.1:1", "127.0.0.1:2"],
                    "wallet_rpc_endpoints": [
                        {"url": "http://127.0.0.1:1", "user": "u", "password": "p"}
                    ]
                    * 3,
                }
            },
            "monero.daemon_addresses",
        ),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"monitor": {"poll_interval": -1}}, "monitor.poll_interval"),
        ({"daemon": {"events_retention_days": -1}}, "daemon.events_retention_days"),
        ({"daemon": {"events_retention_days": "30"}}, "daemon.events_retention_days"),
        (
            {
                "monero": {
                    "wallet_rpc_endpoints": [
                        {"url": "http://10.0.0.1:1", "user": "u", "password": "p"}
                    ]
                    * 3
                }
            },
            "monero.wallet_rpc_endpoints[0].url",
        ),
        (
            {
                "monero": {
                    "wallet_rpc_endpoints": [
                        {"url": "http://127.0.0.1:1", "user": "u", "password": "p"}
                    ]
                    * 4
                }
            },
            "monero.wallet_rpc_endpoints",
        ),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, object], named: str) -> None:
    """A bad value or unknown key stops start-up with a message that names it."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert str(info.value).startswith(named)


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A missing config file is an error that names the file."""
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_endpoints_cap_sessions() -> None:
    """With six external endpoints the cap is two sessions, whatever max_active says."""
    ep = {"url": "http://127.0.0.1:18083", "user": "u", "password": "secret"}
    cfg = parse_config({"monero": {"wallet_rpc_endpoints": [ep] * 6}})
    assert cfg.effective_max_active == 2
    assert "secret" not in repr(cfg)


def test_daemon_addresses_take_loopback_and_private_ips_in_order() -> None:
    """Several monerod on loopback or a private network are accepted, kept in the order given;
    without the list the single daemon_address is the one daemon."""
    listed = ["127.0.0.1:18081", "10.1.2.3:18081", "192.168.0.9:18089", "[fd00::1]:18081"]
    config = parse_config({"monero": {"daemon_addresses": listed}})
    assert config.monero.daemons == tuple(listed)
    single = parse_config({"monero": {"daemon_address": "127.0.0.1:28081"}})
    assert single.monero.daemons == ("127.0.0.1:28081",)
