"""Instant fake wallet-rpc processes over real loopback HTTP, in a process of their own.

`python -m bench.fake_server --sets N --endpoints M --out FILE`

Builds a fake world holding N ready 2-of-3 multisig sets and serves M fake wallet-rpc processes
with no delays (`serve_tcp(instant=True)`), each on its own 127.0.0.1 port. walletd uses them as
external endpoints, so a warm balance check costs walletd's own work plus the fake's protocol
handling (in this process, not walletd's). Writes `{"ports", "sets", "pid"}` to FILE once
listening, then serves until SIGTERM/SIGINT; `/proc/PID/stat` shows its CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import trio

from walletd.ops.logs import configure_logging
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_multisig import make_fake_multisig_files
from walletd.testing.fake_transport import serve_tcp
from walletd.testing.fake_wallet_rpc import FakeWalletRpc

__all__ = ["PASSWORD", "main"]

PASSWORD = "fake-pw"  # noqa: S105 - fake wallets in memory


async def _make_set(world: FakeWalletWorld, prefix: str) -> dict[str, Any]:
    """Three fake wallets made one ready 2-of-3 multisig with the real recipe, then closed."""
    names, address = await make_fake_multisig_files(world, prefix, PASSWORD)
    return {"files": names, "password": PASSWORD, "address": address}


async def _serve(args: argparse.Namespace) -> None:
    world = FakeWalletWorld()
    sets = [await _make_set(world, f"fake{i}") for i in range(args.sets)]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            ports = []
            for _ in range(args.endpoints):
                fake = FakeWalletRpc(world)
                ports.append(await nursery.start(partial(serve_tcp, fake, instant=True)))
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"ports": ports, "sets": sets, "pid": os.getpid()}))
            tmp.rename(args.out)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fake_server")
    p.add_argument("--sets", type=int, required=True)
    p.add_argument("--endpoints", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    configure_logging("warning", "json")
    trio.run(_serve, p.parse_args(argv))


if __name__ == "__main__":
    main()
