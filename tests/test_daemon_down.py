"""Creating an escrow while monerod is down or hanging is `503 unavailable` (retry later), not
`502 wallet_error`, and leaves nothing behind; /v1/health then says why in a reason that is never
empty. Shown on the fake chain, and on the real monerod client against a port that refuses
connections and a TCP server that accepts and never answers (no monerod needed)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fakes import FakeDaemon, call, fake_app, fake_pool, start
from walletd.app import App
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool, FakeProcess
from walletd.wallets.process import WalletProcess
from walletd.wallets.rpc import DaemonRpc

AMOUNT = 10**12


async def _refused_create(app: App, world: FakeWalletWorld) -> dict[str, Any]:
    status, body = await call(app, "POST", "/v1/escrows", {"escrow_id": "m1", "amount": AMOUNT})
    assert (status, body["error"]["code"]) == (503, "unavailable"), body
    assert (await call(app, "GET", "/v1/escrows/m1"))[0] == 404
    assert world.wallets == {}  # no wallet was made
    error: dict[str, Any] = body["error"]
    return error


async def _health_reason(app: App) -> str:
    status, body = await call(app, "GET", "/v1/health")
    assert (status, body["status"]) == (503, "degraded"), body
    reason: str = body["reason"]
    assert reason.startswith("monerod: ")
    assert reason.removeprefix("monerod: ").strip()
    return reason


@pytest.mark.parametrize("fault", ["down", "hanging"])
async def test_create_with_monerod_down_or_hanging_is_503(
    tmp_path: Path, autojump_clock: trio.abc.Clock, fault: str
) -> None:
    """monerod refusing or not answering: create is 503 naming monerod, health says why; once
    monerod is back the same request creates the escrow."""
    world = FakeWalletWorld()
    chain = FakeDaemon(world)
    app = fake_app(tmp_path, world, FakePool(world), chain=chain)
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        setattr(chain, fault, True)
        error = await _refused_create(app, world)
        reason = await _health_reason(app)
        if fault == "hanging":
            assert error["message"] == "monerod: no answer in 2.0 s"
            assert reason == "monerod: no answer in 3.0 s"
        else:
            assert "monerod" in error["message"]
            assert "ConnectError" in reason
        setattr(chain, fault, False)
        status, body = await call(app, "POST", "/v1/escrows", {"escrow_id": "m1", "amount": AMOUNT})
        assert (status, body["state"]) == (201, "awaiting_funding"), body
        nursery.cancel_scope.cancel()


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listening: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_create_against_a_refusing_monerod_port_is_503(
    tmp_path: Path, refusing_port: int
) -> None:
    """The real monerod client, connection refused: 503 unavailable, health names the cause."""
    world = FakeWalletWorld()
    chain = DaemonRpc(f"http://127.0.0.1:{refusing_port}", timeout=10.0)
    app = fake_app(tmp_path, world, FakePool(world), chain=chain)
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        error = await _refused_create(app, world)
        assert error["message"].startswith("monerod: get_info: ")
        assert "ConnectError" in await _health_reason(app)
        nursery.cancel_scope.cancel()
    await chain.aclose()


async def test_create_against_a_silent_monerod_is_503(tmp_path: Path) -> None:
    """The real monerod client, a TCP server that accepts and never answers: 503 unavailable
    after the height check's bound, and health's reason says monerod gave no answer."""
    world = FakeWalletWorld()
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # the kernel accepts; nobody reads or answers
    port = listener.getsockname()[1]
    chain = DaemonRpc(f"http://127.0.0.1:{port}", timeout=10.0)
    app = fake_app(tmp_path, world, FakePool(world), chain=chain)
    try:
        async with trio.open_nursery() as nursery:
            await start(nursery, app)
            error = await _refused_create(app, world)
            assert error["message"] == "monerod: no answer in 2.0 s"
            assert await _health_reason(app) == "monerod: no answer in 3.0 s"
            nursery.cancel_scope.cancel()
    finally:
        listener.close()
        await chain.aclose()


async def test_monerod_lost_half_way_through_a_creation_is_503(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """monerod answers walletd's check, then the new wallets' wallet-rpc lose it (-38 "no
    connection to daemon") during the multisig setup: 503 unavailable, no escrow left."""
    world = FakeWalletWorld()
    app = fake_app(tmp_path, world, FakePool(world), chain=FakeDaemon(world))
    pool = fake_pool(app)
    original = pool.acquire

    async def acquire() -> WalletProcess:
        proc = await original()
        assert isinstance(proc, FakeProcess)
        for _ in range(3):  # also after walletd relinks it with set_daemon
            proc.fake.fail_next("refresh", -38, "no connection to daemon")
        return proc

    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pool, "acquire", acquire)
            status, body = await call(
                app, "POST", "/v1/escrows", {"escrow_id": "m2", "amount": AMOUNT}
            )
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        assert "monerod unreachable" in body["error"]["message"]
        assert (await call(app, "GET", "/v1/escrows/m2"))[0] == 404
        nursery.cancel_scope.cancel()
