"""walletd's wallet directory is its user's alone (mode 0700 or stricter), checked at start.

Another process that can reach walletd's wallet files can open a wallet walletd holds (a
wallet-rpc started by hand raced walletd's own and both had it open, no lock between them). So
start-up makes the directory 0700 when it creates it, and refuses an existing one that group or
others can reach, naming `monero.wallet_dir`; `--check-config` finds the same. An existing
directory is never narrowed silently: walletd did not make it so."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.fakes import fake_config
from tests.harness import run_walletd
from walletd.app import prepare_dirs
from walletd.errors import ConfigError
from walletd.ops import preflight

EXIT_CONFIG = 2


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _config_file(tmp_path: Path) -> Path:
    sock_dir = tmp_path / "run"
    sock_dir.mkdir(mode=0o750)
    path = tmp_path / "w.toml"
    path.write_text(
        f'[daemon]\nsocket_path = "{sock_dir / "w.sock"}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[monero]\ndaemon_address = "127.0.0.1:1"\nwallet_dir = "{tmp_path / "wallets"}"\n'
        "spare_processes = 0\n[monitor]\nenabled = false\n"
    )
    return path


@pytest.mark.parametrize("mode", [0o750, 0o755, 0o701, 0o740, 0o777], ids=lambda m: f"{m:04o}")
def test_a_wallet_dir_others_can_reach_stops_check_and_start(tmp_path: Path, mode: int) -> None:
    """A wallet directory group or others can read or search: --check-config names
    monero.wallet_dir with its mode and the fix, and start-up exits 2 with that one line (no
    traceback), leaving the directory's mode as the operator set it."""
    wallets = tmp_path / "wallets"
    wallets.mkdir()
    wallets.chmod(mode)
    path = _config_file(tmp_path)
    checked = run_walletd("--config", str(path), "--check-config")
    assert checked.returncode == EXIT_CONFIG, checked
    assert checked.stderr.splitlines() == [
        f"walletd: monero.wallet_dir: {wallets} is mode {mode:04o}; walletd's wallets must be "
        f"reachable by walletd's user only (chmod 0700 {wallets}), and nothing else may open them"
    ]
    started = run_walletd("--config", str(path))
    assert started.returncode == EXIT_CONFIG, started
    assert len(started.stderr.splitlines()) == 1, started.stderr
    assert "monero.wallet_dir" in started.stderr
    assert f"{mode:04o}" in started.stderr
    assert "Traceback" not in started.stderr
    assert _mode(wallets) == mode


def test_start_up_makes_the_wallet_dir_0700_whatever_the_umask(tmp_path: Path) -> None:
    """A wallet directory that does not exist yet is created 0700, even under umask 000; one
    that is 0700 (or stricter: 0500 cannot be written, which the check reports on its own) is
    accepted as it is."""
    config = fake_config(tmp_path)
    old = os.umask(0)
    try:
        prepare_dirs(config)
    finally:
        os.umask(old)
    assert _mode(config.monero.wallet_dir) == 0o700
    assert config.monero.wallet_dir.stat().st_uid == os.getuid()
    assert preflight.wallet_dir_problem(config.monero.wallet_dir) is None
    prepare_dirs(config)  # again: nothing to say


def test_prepare_dirs_refuses_a_wider_wallet_dir_naming_the_key(tmp_path: Path) -> None:
    """In process too (the dev sandbox, tests): a 0755 wallet directory is a ConfigError naming
    monero.wallet_dir, and its mode is left alone."""
    config = fake_config(tmp_path)
    config.monero.wallet_dir.mkdir(parents=True)
    config.monero.wallet_dir.chmod(0o755)
    with pytest.raises(ConfigError, match=r"^monero\.wallet_dir: .* is mode 0755"):
        prepare_dirs(config)
    assert _mode(config.monero.wallet_dir) == 0o755
