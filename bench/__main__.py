"""`python -m bench [--quick] [--only ITEM] [--json PATH] [--keep]`: walletd's benchmark suite.

Starts its own regtest monerod, wallet-rpc processes and walletd processes (all on 127.0.0.1,
ports picked free, all stopped at the end), prints one table and writes the figures as JSON.
Timings are printed, never asserted: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from bench.plan import Plan
from bench.report import render, write_json
from bench.runner import ITEMS, Run
from walletd.ops.logs import configure_logging

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM would otherwise end us without unwinding: turn it into the Ctrl-C path so every
    # process we started is stopped.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer samples (~5 min)")
    p.add_argument(
        "--json",
        type=Path,
        help=f"where to write the results (default {DEFAULT_JSON}; with --only, only-ITEM.json"
        " beside it)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--only",
        action="append",
        choices=ITEMS,
        help="run only this item (repeatable); default: everything",
    )
    args = p.parse_args(argv)
    if args.json is None:
        only = "-".join(sorted(set(args.only))) if args.only else ""
        args.json = DEFAULT_JSON.with_name(f"only-{only}.json") if only else DEFAULT_JSON
    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="walletd-bench-"))
    log = (root / "bench.log").open("a")
    configure_logging("warning", "json", stream=log)  # walletd code run in-process logs here
    run = Run(root, Plan.for_run(args.quick))
    started = time.time()
    load_start = os.getloadavg()
    error: str | None = None
    try:
        with contextlib.ExitStack() as stack:
            if args.only:
                run.only(stack, args.only)
            else:
                run.all(stack)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - report it, print what ran
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        log.close()
    meta = {**run.meta(started), "loadavg_start": load_start, "error": error, "work_dir": str(root)}
    print()
    print(render(run.items))
    write_json(args.json, meta, run.items)
    load = ", ".join(f"{x:.1f}" for x in (*load_start, *meta["loadavg_end"]))
    print(f"\n{meta['cpus']} CPUs; load average (1, 5, 15 min) at start and end: {load}")
    print(f"JSON: {args.json}  ({meta['total_seconds']:.0f} s)")
    if error is None and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"work directory kept: {root}", file=sys.stderr)
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
