"""Command line: `walletd --config PATH` runs the daemon; `walletd dev` runs the dev sandbox."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog
import trio

from walletd import __version__
from walletd.config import Config, load_config
from walletd.errors import ConfigError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="walletd", description=__doc__)
    p.add_argument("--config", type=Path, help="TOML configuration file (see config.example.toml)")
    p.add_argument("--check-config", action="store_true", help="check the config file and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command")
    dev = sub.add_parser("dev", help="private regtest monerod + walletd with dev-only endpoints")
    dev.add_argument("--dir", type=Path, default=Path("./walletd-dev"), help="state directory")
    dev.add_argument(
        "--socket", type=Path, default=None, help="socket path (default DIR/walletd.sock)"
    )
    dev.add_argument("--fresh", action="store_true", help="wipe DIR first")
    dev.add_argument("--log-format", choices=("json", "console"), default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dev":
        from walletd.cli.dev import run_dev

        return run_dev(args)
    if args.config is None:
        print("walletd: --config PATH is required (see config.example.toml)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"walletd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print("configuration ok")
        return 0
    return run_daemon(config, args.config)


def run_daemon(config: Config, config_path: Path | None) -> int:
    """Run walletd until SIGTERM/SIGINT; returns the process exit code."""
    from walletd.app import App, prepare_dirs
    from walletd.ops.logs import configure_logging
    from walletd.state.statelock import StateDirBusy, StateLock

    fmt = config.log.format
    if fmt == "json" and sys.stderr.isatty():
        fmt = "console"  # readable in a terminal, JSON lines under systemd and in files
    configure_logging(config.log.level, fmt)
    log = structlog.get_logger("walletd")
    try:
        prepare_dirs(config)
        # Before App() opens the store and the vault, and before run() stops orphans and
        # recovers escrows: a second walletd on this state dir must touch none of it.
        lock = StateLock.acquire(config.daemon.state_dir)
    except (ConfigError, StateDirBusy, OSError) as exc:
        log.error("cannot start", error=str(exc))
        return 2
    with lock:  # held until the process ends
        try:
            app = App(config, config_path)
        except (ConfigError, OSError) as exc:
            log.error("cannot start", error=str(exc))
            return 2

        app.exit_backstop = config.daemon.shutdown_timeout + 10

        async def _main() -> None:
            await app.run()

        try:
            trio.run(_main)
        except ConfigError as exc:  # found only when binding: a taken daemon.metrics_address
            log.error("cannot start", error=str(exc))
            return 2
    return 0
