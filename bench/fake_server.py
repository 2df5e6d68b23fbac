"""Instant fake wallet-rpc processes over real loopback HTTP, in a process of their own.

`python -m bench.fake_server --sets N --endpoints M --out FILE [--groups G] [--file-dir DIR ...]`

Builds a fake world holding N ready 2-of-3 multisig sets and serves M fake wallet-rpc processes
with no delays (`serve_tcp(instant=True)`), each on its own 127.0.0.1 port. walletd uses them as
external endpoints, so a warm balance check costs walletd's own work plus the fake's protocol
handling (in this process, not walletd's). Writes `{"ports", "groups", "sets", "pid"}` to FILE
once listening, then serves until SIGTERM/SIGINT; `/proc/PID/stat` shows its CPU time.

For the cluster figure: `--groups G` serves G groups of M endpoints (one per walletd host;
`ports` lists them all); the wallets' files are written to every `--file-dir` (each host's wallet
directory, as the real wallet-rpc's store writes them, which a cluster host saves to the database);
SIGUSR1 kills every endpoint of `--kill-group` (kill -9: its keys-file locks go, as when a host
dies with its wallet-rpc processes) and serves fresh ones, no wallet open, on the same ports (the
host's wallet-rpc processes after it comes back).
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


async def _endpoint(
    world: FakeWalletWorld,
    slot: list[FakeWalletRpc],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One endpoint's port, served by a fresh fake each time the previous one is killed."""
    slot.append(FakeWalletRpc(world))
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(partial(serve_tcp, slot[-1], instant=True))
        task_status.started(port)
    while True:  # killed: serve_tcp has closed its listener; the port is free again
        slot.append(FakeWalletRpc(world))
        await serve_tcp(slot[-1], port=port, instant=True)


async def _serve(args: argparse.Namespace) -> None:
    world = FakeWalletWorld()
    world.file_dirs.extend(args.file_dir)
    sets = [await _make_set(world, f"fake{i}") for i in range(args.sets)]
    for name in world.wallets:
        world.write_files(name)
    stop = (signal.SIGTERM, signal.SIGINT)
    with trio.open_signal_receiver(*stop, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            groups: list[list[int]] = []
            slots: list[list[list[FakeWalletRpc]]] = []
            for _ in range(args.groups):
                group_slots: list[list[FakeWalletRpc]] = [[] for _ in range(args.endpoints)]
                ports = [await nursery.start(_endpoint, world, slot) for slot in group_slots]
                groups.append(ports)
                slots.append(group_slots)
            info = {
                "ports": [p for g in groups for p in g],
                "groups": groups,
                "sets": sets,
                "pid": os.getpid(),
            }
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.rename(args.out)
            async for signum in signals:
                if signum in stop:
                    break
                if args.kill_group is not None:
                    for slot in slots[args.kill_group]:
                        slot[-1].kill()
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fake_server")
    p.add_argument("--sets", type=int, required=True)
    p.add_argument("--endpoints", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--groups", type=int, default=1, help="groups of --endpoints endpoints")
    p.add_argument("--file-dir", type=Path, action="append", default=[])
    p.add_argument("--kill-group", type=int, help="the group SIGUSR1 kills (and replaces)")
    configure_logging("warning", "json")
    trio.run(_serve, p.parse_args(argv))


if __name__ == "__main__":
    main()
