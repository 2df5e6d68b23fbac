"""Test helpers: a walletd App on fake wallet-rpc processes, and ready multisig sets to adopt."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from walletd.api.messages import PeerCred, Request, Response
from walletd.app import App, prepare_dirs
from walletd.config import Config, DaemonConfig, MoneroConfig, MonitorConfig, SessionsConfig
from walletd.errors import RpcUnreachable
from walletd.ids import ROLES, Role
from walletd.state.sqlite_store import LocalState, Store
from walletd.testing.fake_chain import FEE_PER_BYTE, FakeWalletWorld
from walletd.testing.fake_multisig import make_fake_multisig_files
from walletd.testing.fake_pool import FakePool
from walletd.wallets.chain import Chain
from walletd.wallets.rpc import TxStatus

PASSWORD = "pw"


@attrs.frozen
class MultisigSet:
    files: dict[Role, str]
    password: str
    address: str

    def adopt_body(self, escrow_id: str, amount: int = 10**12) -> dict[str, Any]:
        return {
            "escrow_id": escrow_id,
            "amount": amount,
            "wallets": {r: {"file": self.files[r], "password": self.password} for r in ROLES},
        }


async def make_fake_multisig(world: FakeWalletWorld, prefix: str) -> MultisigSet:
    """Three wallets in the fake world made one ready 2-of-3 multisig, then closed."""
    names, address = await make_fake_multisig_files(world, prefix, PASSWORD)
    return MultisigSet(names, PASSWORD, address)


def fake_config(root: Path, *, monero: Mapping[str, Any] | None = None, **sessions: Any) -> Config:
    """A config for an app on fakes in `root`; `monero`: other `[monero]` settings."""
    return Config(
        daemon=DaemonConfig(socket_path=root / "s.sock", state_dir=root / "state"),
        monero=MoneroConfig(
            daemon_address="127.0.0.1:1", wallet_dir=root / "wallets", **(monero or {})
        ),
        sessions=SessionsConfig(**sessions),
        monitor=MonitorConfig(enabled=False),
    )


def fake_app(
    root: Path,
    world: FakeWalletWorld,
    pool: FakePool,
    *,
    chain: Chain | None = None,
    foreign_locks: dict[str, set[int]] | None = None,
    monero: Mapping[str, Any] | None = None,
    **sessions: Any,
) -> App:
    """`foreign_locks`: wallet name -> pids of outside processes that also hold its keys-file
    lock (what the real lock can show after two opens raced; the fake's own lock cannot)."""
    config = fake_config(root, monero=monero, **sessions)
    prepare_dirs(config)
    outside = foreign_locks if foreign_locks is not None else {}

    async def lock_holders(file: str) -> frozenset[int]:
        held = {world.locks[file]} if file in world.locks else set()
        return frozenset(held | outside.get(file, set()))

    app = App(config, pool=pool, chain=chain, lock_probe=lock_holders)
    # The fake world's wallet directory is in memory: mirror each name as a .keys file so
    # walletd's own file checks (adoption refuses files that do not exist) see them.
    for name in world.wallets:
        (config.monero.wallet_dir / f"{name}.keys").write_bytes(b"fake")
    return app


def sqlite(app: App) -> Store:
    """The app's SQLite store itself, for tests that look under the async state store."""
    assert isinstance(app.store, LocalState)
    return app.store.sqlite


def fake_pool(app: App) -> FakePool:
    """The app's pool, as the `FakePool` every app made by `fake_app` has."""
    assert isinstance(app.pool, FakePool), app.pool
    return app.pool


async def call(app: App, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """Call the API in-process (no socket), as the server would; the answer's JSON."""
    response = await raw_call(app, method, path, body)
    return response.status, json.loads(response.body) if response.body else None


async def raw_call(app: App, method: str, path: str, body: object = None) -> Response:
    """Call the API in-process (no socket), as the server would."""
    target, _, query = path.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = Request(
        method=method, path=target, query=params, headers={}, body=raw, peer=PeerCred(0, 0, 0)
    )
    response: Response = await app.api(request)
    return response


async def start(nursery: trio.Nursery, app: App) -> None:
    """Run the app's registry, lifecycle and pool (not the socket server)."""
    await nursery.start(app.pool.run)
    await nursery.start(app.registry.run)
    await nursery.start(app.lifecycle.run)


class FakeDaemon:
    """monerod as the monitor and lifecycle see it, backed by the fake world's chain."""

    def __init__(self, world: FakeWalletWorld) -> None:
        self.world = world
        self.down = False
        self.hanging = False  # accepts the call and never answers

    async def height(self) -> int:
        await trio.lowlevel.checkpoint()
        if self.hanging:
            await trio.sleep_forever()
        if self.down:
            raise RpcUnreachable("get_info", "ConnectError")
        return self.world.height

    async def fee_per_byte(self, priority: int) -> int:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise RpcUnreachable("get_fee_estimate", "ConnectError")
        return FEE_PER_BYTE

    async def tx_status(self, txid: str) -> TxStatus | None:
        await trio.lowlevel.checkpoint()
        tx = self.world.txs.get(txid)
        if tx is None:
            return None
        return TxStatus(in_pool=tx.height is None, block_height=tx.height)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
