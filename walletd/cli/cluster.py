"""`walletd cluster export DIR` / `walletd cluster import DIR`: wallet files for an offline backup;
`walletd cluster key export|import FILE`: the vault key for a new host (walletd.cli.cluster_key).

Both read `[cluster]` from the configuration, connect to the cluster database, apply its
migrations, run, and print one line of counts. They need no running walletd and take no lease: an
export reads the latest stored version of every escrow wallet; an import checks every file of the
export against its manifest before it writes anything (see walletd.cluster.wallet_files). The
database URL (it may hold a password) is never printed.

Exit codes: 0 done; 1 the database failed or the export/import was refused (one line says why);
2 configuration error, or no `[cluster]` section.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg
import trio

from walletd.cli.cluster_key import add_key_parser, run_key
from walletd.cluster.db import Database
from walletd.cluster.leases import Leases
from walletd.cluster.migrations import migrate
from walletd.cluster.wallet_files import WalletFiles
from walletd.config import Config
from walletd.errors import ExportRefused, ImportRefused, Unavailable
from walletd.ops.logs import configure_logging

__all__ = ["add_parser", "run_cluster"]

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = sub.add_parser("cluster", help="cluster database tools (needs [cluster])")
    actions = cluster.add_subparsers(dest="cluster_command", required=True)
    add_key_parser(actions)
    export = actions.add_parser(
        "export", help="write the latest wallet files of every escrow into a new directory"
    )
    export.add_argument("dir", type=Path, help="target directory (must not exist)")
    imp = actions.add_parser(
        "import", help="add the wallet files of an export to the database, all digests checked"
    )
    imp.add_argument("dir", type=Path, help="a directory written by `walletd cluster export`")
    imp.add_argument(
        "--replace",
        action="store_true",
        help="also put a wallet on top of different files the database has (default: keep "
        "the database's, which in a running cluster are the newer, and list them)",
    )
    for p in (export, imp):
        # Also accepted after the subcommand; SUPPRESS keeps a --config given before it.
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML configuration")


def run_cluster(args: argparse.Namespace, config: Config) -> int:
    if config.cluster is None:
        print("walletd: the configuration has no [cluster] section", file=sys.stderr)
        return EXIT_CONFIG
    if args.cluster_command == "key":
        return run_key(args, config)
    configure_logging("warning", "console")  # stdout: the summary line; stderr: problems only
    url, ttl = config.cluster.database_url, config.cluster.lease_ttl

    async def run() -> str:
        db = Database(url, max_size=2)
        await db.open()
        try:
            await migrate(db)
            files = WalletFiles(db, Leases(db, ttl))
            if args.cluster_command == "export":
                n = await files.export_all(args.dir)
                return f"exported {n} wallets to {args.dir}"
            summary = await files.import_all(args.dir, replace=args.replace)
            line = (
                f"imported {summary.imported} wallets, {summary.identical} already identical,"
                f" {len(summary.conflicts)} conflicts"
            )
            if summary.conflicts:
                shown = " ".join(summary.conflicts[:10])
                more = " ..." if len(summary.conflicts) > 10 else ""
                line += f" (the database's newer files kept: {shown}{more}; --replace to override)"
            return line
        finally:
            with trio.CancelScope(shield=True):
                await db.close()

    try:
        print(trio.run(run))
    except (ExportRefused, ImportRefused, Unavailable, OSError) as exc:
        print(f"walletd: cluster {args.cluster_command}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except psycopg.Error as exc:  # the class only: a driver's message may quote connection details
        print(
            f"walletd: cluster {args.cluster_command}: database error ({type(exc).__name__})",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    return 0
