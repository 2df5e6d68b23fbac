"""One set of wallet files, one multisig address and one escrow id belong to one escrow at a time.

Issue 9's money-safety items, on the fake wallet-rpc: two escrows sharing wallets (or a copy of
them) would both turn `ready` on one deposit, and a release of either would sweep the address.
Each test drives an App in-process as the marketplace server would, and checks what it could see:
the answers, the recorded escrows, and the wallet files still in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.fakes import FakeDaemon, MultisigSet, fake_app, make_fake_multisig, start
from walletd.app import App
from walletd.errors import Conflict
from walletd.ids import ROLES
from walletd.messages import GetBalance
from walletd.session import SessionSpec, WalletSpec
from walletd.testing.fake_pool import FakePool
from walletd.testing.fake_wallet_rpc import FakeWalletWorld

AMOUNT = 10**12


async def _app(
    nursery: trio.Nursery, tmp_path: Path, *prefixes: str, **sessions: Any
) -> tuple[App, FakeWalletWorld, dict[str, MultisigSet]]:
    world = FakeWalletWorld()
    sets = {p: await make_fake_multisig(world, p) for p in prefixes}
    app = fake_app(tmp_path, world, FakePool(world), **sessions)
    app.daemon = FakeDaemon(world)  # type: ignore[assignment]
    await start(nursery, app)
    return app, world, sets


async def test_a_session_serves_only_the_spec_it_was_opened_from(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A registry call that names other wallets than the escrow's open session was opened with
    is refused with `conflict` and never reaches that session's wallets; the same spec is
    served by it."""
    async with trio.open_nursery() as nursery:
        app, world, sets = await _app(nursery, tmp_path, "a", "b")

        def spec(s: MultisigSet) -> SessionSpec:
            wallets = {r: WalletSpec(s.files[r], s.password) for r in ROLES}
            return SessionSpec(escrow_id="x", wallets=wallets, address=None)

        await app.registry.open("x", spec=spec(sets["a"]))
        calls = len(world.calls)
        with pytest.raises(Conflict) as caught:
            await app.registry.call("x", GetBalance(refresh=False), spec=spec(sets["b"]))
        assert sets["b"].password not in caught.value.message
        assert len(world.calls) == calls  # nothing was sent to a wallet
        await app.registry.call("x", GetBalance(refresh=False), spec=spec(sets["a"]))
        assert app.registry.is_open("x")
        nursery.cancel_scope.cancel()
