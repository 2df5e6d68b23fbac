"""How often one payout call reads the escrow's record from the database.

Each read is a round trip on a cluster host (PostgreSQL), so a release reads the record once,
under the escrow's lease and lock, and hands it down to the steps that sign and submit; the
answer is the record as the last step wrote it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fakes import call
from tests.harness import app_on_fakes, ready_escrow
from walletd.app import App

READS = ("get_escrow", "escrow_state", "list_escrows")


def _count_reads(app: App) -> Counter[str]:
    """Count the store's reads from now on (the instance's methods, wrapped)."""
    counts: Counter[str] = Counter()
    for name in READS:
        method: Callable[..., Awaitable[Any]] = getattr(app.store, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            counts[_name] += 1
            return _method(*args, **kw)

        setattr(app.store, name, counted)
    return counts


@pytest.mark.parametrize("kind", ["release", "refund"])
@pytest.mark.parametrize("warm", [True, False], ids=["session-open", "session-closed"])
async def test_a_payout_call_reads_the_escrow_record_once(
    tmp_path: Path, autojump_clock: trio.abc.Clock, kind: str, warm: bool
) -> None:
    """A release (or refund) of a ready escrow reads the escrow's record once (and its state
    once, to answer 404 before any lease is taken); with its session closed, opening the
    session reads the record once more (the registry's wallet spec). The payout is submitted
    and the answer shows it."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await ready_escrow(app, world, "r1", by_hand=True)
        payee = world.add_wallet("payee", "x").address
        if not warm:
            await app.registry.close("r1", reason="idle")

        counts = _count_reads(app)
        status, body = await call(app, "POST", f"/v1/escrows/r1/{kind}", {"address": payee})
        assert status == 202, body
        assert body["payout"]["txid"]
        assert dict(counts) == {"get_escrow": 1 if warm else 2, "escrow_state": 1}
        nursery.cancel_scope.cancel()
