"""Where a payout's failpoints sit: the two places the crash tests kill walletd (SIGKILL) to show
that a payout is sent exactly once, whatever moment it dies at."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.fakes import FakeDaemon, call, fake_app, sqlite, start
from tests.harness import ready_escrow
from walletd.escrows.model import PayoutPhase
from walletd.ops import failpoints
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool


async def test_failpoints_fall_between_the_records_and_the_submit(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`after_sign` is hit once the signed blob is recorded and before anything is submitted;
    `after_submit` once the daemon has the transaction and before it is recorded submitted.
    A crash at either leaves a recorded blob that a restart submits again (the same txids)."""
    world = FakeWalletWorld()
    app = fake_app(tmp_path, world, FakePool(world), chain=FakeDaemon(world))
    seen: list[tuple[str, PayoutPhase | None, int]] = []

    def hit(name: str) -> None:
        rec = sqlite(app).get_escrow("f1")
        phase = rec.payout.phase if rec is not None and rec.payout is not None else None
        seen.append((name, phase, world.call_count("submit_multisig")))

    monkeypatch.setattr(failpoints, "hit", hit)
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        await ready_escrow(app, world, "f1", by_hand=True)
        payee = world.add_wallet("payee", "x").address
        seen.clear()  # creation's own (creating_multisig)
        status, body = await call(app, "POST", "/v1/escrows/f1/release", {"address": payee})
        assert status == 202, body
        assert seen == [
            ("after_sign", PayoutPhase.SIGNED, 0),
            ("after_submit", PayoutPhase.SIGNED, 1),
        ]
        nursery.cancel_scope.cancel()
