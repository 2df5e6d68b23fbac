"""An escrow being created is visible (api.md since v1.1): `GET /v1/escrows/{id}` during
`POST /v1/escrows` answers 200 with `"state": "creating"` and the list shows it; an abandoned
creation leaves nothing behind. The fake wallet-rpc is held inside `create_wallet` by a gate, so
the reads happen mid-creation by construction, not by timing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fakes import call, fake_pool
from tests.harness import app_on_fakes
from walletd.app import App
from walletd.jsontypes import JsonObject
from walletd.testing.fake_pool import FakeProcess
from walletd.wallets.process import WalletProcess

AMOUNT = 10**12


class _Gate:
    """Holds every fake wallet-rpc inside create_wallet until opened; `fail` makes the multisig
    step fail afterwards, so the creation is abandoned."""

    def __init__(self, app: App, mp: pytest.MonkeyPatch, *, fail: bool = False) -> None:
        self.entered = trio.Event()
        self.open = trio.Event()
        pool = fake_pool(app)
        original = pool.acquire

        async def acquire() -> WalletProcess:
            proc = await original()
            assert isinstance(proc, FakeProcess)
            create: Callable[[JsonObject], Awaitable[JsonObject]] = proc.fake._slow["create_wallet"]

            async def gated(params: JsonObject) -> JsonObject:
                self.entered.set()
                await self.open.wait()
                return await create(params)

            proc.fake._slow["create_wallet"] = gated
            if fail:
                proc.fake.fail_next("make_multisig", -1, "boom")
            return proc

        mp.setattr(pool, "acquire", acquire)


async def _post(app: App, escrow_id: str, result: dict[str, Any], done: trio.Event) -> None:
    result["status"], result["body"] = await call(
        app, "POST", "/v1/escrows", {"escrow_id": escrow_id, "amount": AMOUNT}
    )
    done.set()


async def test_an_escrow_being_created_reads_as_creating(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """During its creation the escrow answers 200 "creating" and is listed; calls that need its
    wallets are 409 not_ready (never 404, never a second session); then it is awaiting_funding."""
    result: dict[str, Any] = {}
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        app, _, _ = await app_on_fakes(nursery, tmp_path)
        with pytest.MonkeyPatch.context() as mp:
            gate = _Gate(app, mp)
            nursery.start_soon(_post, app, "c1", result, done)
            await gate.entered.wait()
            status, body = await call(app, "GET", "/v1/escrows/c1")
            assert (status, body["state"], body["multisig_address"]) == (200, "creating", None)
            status, body = await call(app, "GET", "/v1/escrows")
            assert [(e["escrow_id"], e["state"]) for e in body["escrows"]] == [("c1", "creating")]
            status, body = await call(app, "GET", "/v1/escrows?state=creating")
            assert [e["escrow_id"] for e in body["escrows"]] == ["c1"]
            for path in ("/v1/escrows/c1/balance", "/v1/escrows/c1/session"):
                method = "GET" if path.endswith("balance") else "POST"
                status, body = await call(app, method, path)
                assert (status, body["error"]["code"]) == (409, "not_ready"), (path, body)
            status, body = await call(
                app, "POST", "/v1/escrows/c1/release", {"address": "4" + "1" * 94}
            )
            assert status in (400, 409), body  # never a payout of an escrow being created
            assert "status" not in result  # still creating
            gate.open.set()
            await done.wait()  # no deadline: the backup thread lets the autojump clock race
        assert result["status"] == 201, result
        status, body = await call(app, "GET", "/v1/escrows/c1")
        assert (status, body["state"]) == (200, "awaiting_funding")
        nursery.cancel_scope.cancel()


async def test_an_abandoned_creation_leaves_no_escrow(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A creation seen as "creating" that then fails is gone afterwards: 404, not listed."""
    result: dict[str, Any] = {}
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        app, _, _ = await app_on_fakes(nursery, tmp_path)
        with pytest.MonkeyPatch.context() as mp:
            gate = _Gate(app, mp, fail=True)
            nursery.start_soon(_post, app, "c2", result, done)
            await gate.entered.wait()
            assert (await call(app, "GET", "/v1/escrows/c2"))[1]["state"] == "creating"
            gate.open.set()
            await done.wait()  # no deadline: the backup thread lets the autojump clock race
        assert (result["status"], result["body"]["error"]["code"]) == (502, "wallet_error")
        assert (await call(app, "GET", "/v1/escrows/c2"))[0] == 404
        assert (await call(app, "GET", "/v1/escrows"))[1]["escrows"] == []
        nursery.cancel_scope.cancel()
