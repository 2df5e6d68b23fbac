"""Command line: `walletd --config PATH` runs the daemon; `walletd dev` runs the dev sandbox;
`walletd --config PATH cluster export|import DIR` backs up the cluster's wallet files;
`walletd --config PATH cluster key export|import FILE` copies the vault key to a new host.

Exit codes: 0 stopped cleanly (or `--check-config` found nothing); 1 start-up failed for a reason
that may pass (the state dir is in use, a file could not be opened, the cluster database cannot be
reached; also `--check-config --check-database` when it cannot be): systemd may restart;
2 usage or configuration error (one line naming the key): restarting cannot help, and the unit's
`RestartPreventExitStatus=2` says so; 70 shutdown overran its bound. A traceback is a walletd bug.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog
import trio

from walletd import __version__
from walletd.cli import cluster
from walletd.config import Config, load_config
from walletd.errors import ConfigError, StoreUnavailable, first_error
from walletd.ops import preflight

__all__ = ["EXIT_CONFIG", "EXIT_RUNTIME", "main"]

EXIT_RUNTIME = 1  # start-up failed; may pass on a retry
EXIT_CONFIG = 2  # usage or configuration error (argparse also exits 2); a retry cannot help


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="walletd", description=__doc__)
    p.add_argument("--config", type=Path, help="TOML configuration file (see config.example.toml)")
    p.add_argument(
        "--check-config",
        action="store_true",
        help="run every start-up check that needs no running daemon, print OK or one line per "
        "problem, and exit (0 ok, 2 problems)",
    )
    p.add_argument(
        "--check-database",
        action="store_true",
        help="with --check-config: also connect to [cluster]'s database (exit 1 if it cannot be "
        "reached: that may pass). Off by default: `systemctl reload` runs --check-config, and a "
        "database down must not fail a reload",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command")
    dev = sub.add_parser("dev", help="private regtest monerod + walletd with dev-only endpoints")
    dev.add_argument("--dir", type=Path, default=Path("./walletd-dev"), help="state directory")
    dev.add_argument(
        "--socket", type=Path, default=None, help="socket path (default DIR/walletd.sock)"
    )
    dev.add_argument("--fresh", action="store_true", help="wipe DIR first")
    dev.add_argument("--log-format", choices=("json", "console"), default=None)
    cluster.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dev":
        from walletd.cli.dev import run_dev

        return run_dev(args)
    if args.config is None:
        print("walletd: --config PATH is required (see config.example.toml)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"walletd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "cluster":
        return cluster.run_cluster(args, config)
    if args.check_database and not args.check_config:
        print("walletd: --check-database goes with --check-config", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        found = preflight.problems(config)
        for problem in found:
            print(f"walletd: {problem}", file=sys.stderr)
        if found:
            return EXIT_CONFIG
        if args.check_database and config.cluster is not None:
            unreachable = _probe_database(config.cluster.database_url)
            if unreachable:
                print(f"walletd: {unreachable}", file=sys.stderr)
                return EXIT_RUNTIME
        print("OK")
        return 0
    return run_daemon(config, args.config)


def _probe_database(url: str) -> str | None:
    """One connection to the cluster database: None if it answers, else the line saying which
    database (key, host, port; never the password) and libpq's reason."""
    from walletd.cluster.db import Database
    from walletd.errors import ClusterUnavailable

    async def probe() -> None:
        db = Database(url, max_size=1)
        await db.probe()

    try:
        trio.run(probe)
    except ClusterUnavailable as exc:
        return exc.message
    return None


def run_daemon(config: Config, config_path: Path | None) -> int:
    """Run walletd until SIGTERM/SIGINT; returns the process exit code."""
    from walletd.app import App, prepare_dirs
    from walletd.errors import StateDirBusy, VaultError
    from walletd.ops.logs import configure_logging
    from walletd.state.statelock import StateLock

    fmt = config.log.format
    if fmt == "json" and sys.stderr.isatty():
        fmt = "console"  # readable in a terminal, JSON lines under systemd and in files
    configure_logging(config.log.level, fmt)
    log = structlog.get_logger("walletd")
    found = preflight.problems(config)
    if found:  # one line: the first problem; --check-config lists them all
        more = f" (and {len(found) - 1} more: walletd --check-config)" if len(found) > 1 else ""
        log.error("cannot start", error=found[0] + more)
        return EXIT_CONFIG
    try:
        prepare_dirs(config)
    except ConfigError as exc:
        log.error("cannot start", error=str(exc))
        return EXIT_CONFIG
    try:
        # Before App() opens the store and the vault, and before run() stops orphans and
        # recovers escrows: a second walletd on this state dir must touch none of it.
        lock = StateLock.acquire(config.daemon.state_dir)
    except (StateDirBusy, OSError) as exc:
        log.error("cannot start", error=str(exc))
        return EXIT_RUNTIME
    with lock:  # held until the process ends
        try:
            app = App(config, config_path, exit_backstop=config.daemon.shutdown_timeout + 10)
        except (ConfigError, VaultError) as exc:
            log.error("cannot start", error=str(exc))
            return EXIT_CONFIG
        except OSError as exc:
            log.error("cannot start", error=str(exc))
            return EXIT_RUNTIME

        started = False

        async def _main() -> None:
            nonlocal started
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                started = True

        try:
            trio.run(_main)
        except BaseException as exc:
            # An OS refusal while starting (the socket path taken by another server, a port or
            # file refused) is one line and exit 1; anything else, or later, is a bug: traceback.
            leaf = first_error(exc)
            if not started and isinstance(leaf, ConfigError):  # a taken daemon.metrics_address
                log.error("cannot start", error=str(leaf))
                return EXIT_CONFIG
            # The cluster database unreachable at start-up is the same kind of refusal.
            if started or not isinstance(leaf, OSError | StoreUnavailable):
                raise
            log.error("cannot start", error=str(leaf))
            return EXIT_RUNTIME
    return 0
