"""The escrow lifecycle on the fake wallet-rpc: create, fund, ready, release/refund, complete.

Each transition is observed the way the marketplace server sees it: through /v1/events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fakes import call, fake_pool
from tests.harness import AMOUNT, app_on_fakes, run_monitor, wait_state
from walletd.app import App
from walletd.testing.fake_chain import FEE, FakeWalletWorld
from walletd.testing.fake_pool import FakeProcess
from walletd.wallets.process import WalletProcess


def _received(world: FakeWalletWorld, address: str) -> list[int]:
    """Amounts of mined outputs paying `address` on the fake chain."""
    return [
        amount
        for tx in world.txs.values()
        if tx.height is not None
        for to, amount in tx.outputs
        if to == address
    ]


async def _events(app: App, escrow_id: str) -> list[str]:
    _, body = await call(app, "GET", "/v1/events?after=0")
    return [e["type"] for e in body["events"] if e["escrow_id"] == escrow_id]


async def test_create_fund_release_complete(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """The release path, every transition seen in /v1/events, vendor paid the amount less fee."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        status, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "o1", "amount": AMOUNT})
        assert status == 201, esc
        assert len(esc["multisig_address"]) == 95
        assert (esc["state"], esc["session"]["open"]) == ("awaiting_funding", True)
        # An identical retry is safe; other values conflict.
        assert (await call(app, "POST", "/v1/escrows", {"escrow_id": "o1", "amount": AMOUNT}))[
            0
        ] == 200
        assert (await call(app, "POST", "/v1/escrows", {"escrow_id": "o1", "amount": 5}))[0] == 409

        vendor = world.add_wallet("vendor-payout", "x")
        status, body = await call(
            app, "POST", "/v1/escrows/o1/release", {"address": vendor.address}
        )
        assert (status, body["error"]["code"]) == (409, "not_ready")

        world.credit(esc["multisig_address"], AMOUNT, unlocked=False)
        await wait_state(app, "o1", "funded")
        world.mine(10)
        await wait_state(app, "o1", "ready")

        status, esc = await call(app, "POST", "/v1/escrows/o1/release", {"address": vendor.address})
        assert status == 202, esc
        txid = esc["payout"]["txid"]
        assert esc["state"] == "releasing"
        again = await call(app, "POST", "/v1/escrows/o1/release", {"address": vendor.address})
        assert (again[0], again[1]["payout"]["txid"]) == (202, txid)
        refund = await call(app, "POST", "/v1/escrows/o1/refund", {"address": vendor.address})
        assert (refund[0], refund[1]["error"]["code"]) == (409, "conflict")

        world.mine(10)
        esc = await wait_state(app, "o1", "completed")
        assert esc["session"] == {"open": False}
        assert _received(world, vendor.address) == [AMOUNT - FEE]
        types = await _events(app, "o1")
        for earlier, later in [
            ("escrow_created", "funded"),
            ("funded", "ready"),
            ("ready", "payout_submitted"),
            ("payout_submitted", "completed"),
        ]:
            assert types.index(earlier) < types.index(later), types
        assert types[-1] == "session_closed"
        closed = [
            e
            for e in (await call(app, "GET", "/v1/events?after=0"))[1]["events"]
            if e["type"] == "session_closed" and e["escrow_id"] == "o1"
        ]
        assert closed[-1]["reason"] == "finished"
        nursery.cancel_scope.cancel()


async def test_concurrent_releases_send_once(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Two concurrent releases and a repeat give one payout transaction."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        _, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "o2", "amount": AMOUNT})
        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        await wait_state(app, "o2", "ready")
        vendor = world.add_wallet("v2", "x")
        answers: list[tuple[int, Any]] = []

        async def release() -> None:
            answers.append(
                await call(app, "POST", "/v1/escrows/o2/release", {"address": vendor.address})
            )

        async with trio.open_nursery() as inner:
            inner.start_soon(release)
            inner.start_soon(release)
        answers.append(
            await call(app, "POST", "/v1/escrows/o2/release", {"address": vendor.address})
        )
        assert [a[0] for a in answers] == [202, 202, 202]
        assert len({a[1]["payout"]["txid"] for a in answers}) == 1
        assert world.epoch(esc["multisig_address"]) == 1  # one spend left the escrow
        assert (
            not app.lifecycle._payouts._locks
        )  # nothing kept per escrow once its payouts are answered
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("first", "other"), [("release", "refund"), ("refund", "release")])
async def test_conflicting_payout_says_what_differs(
    tmp_path: Path, autojump_clock: trio.abc.Clock, first: str, other: str
) -> None:
    """After a payout, the other kind is 409 conflict saying "already has a <first> payout"
    and that the other kind cannot follow, even to the same address; the same kind to another
    address is 409 naming the address as what differs; the same call again is the same payout."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        _, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "o4", "amount": AMOUNT})
        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        await wait_state(app, "o4", "ready")
        payee = world.add_wallet("p4", "x").address
        elsewhere = world.add_wallet("q4", "x").address
        status, done = await call(app, "POST", f"/v1/escrows/o4/{first}", {"address": payee})
        assert status == 202, done
        for address in (payee, elsewhere):
            status, body = await call(app, "POST", f"/v1/escrows/o4/{other}", {"address": address})
            assert (status, body["error"]["code"]) == (409, "conflict"), body
            message = body["error"]["message"]
            assert f"already has a {first} payout; a {other} cannot follow it" in message
            assert "address" not in message
        status, body = await call(app, "POST", f"/v1/escrows/o4/{first}", {"address": elsewhere})
        assert (status, body["error"]["code"]) == (409, "conflict"), body
        assert f"already has a {first} payout to another address" in body["error"]["message"]
        status, again = await call(app, "POST", f"/v1/escrows/o4/{first}", {"address": payee})
        assert (status, again["payout"]) == (202, done["payout"])
        nursery.cancel_scope.cancel()


async def test_refund_path(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """The refund path ends `refunded`, and the buyer receives the amount less the fee."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        _, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "o3", "amount": AMOUNT})
        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        await wait_state(app, "o3", "ready")
        buyer = world.add_wallet("b3", "x")
        status, esc = await call(app, "POST", "/v1/escrows/o3/refund", {"address": buyer.address})
        assert (status, esc["state"]) == (202, "refunding")
        world.mine(10)
        await wait_state(app, "o3", "refunded")
        assert _received(world, buyer.address) == [AMOUNT - FEE]
        nursery.cancel_scope.cancel()


async def test_failed_creation_leaves_nothing(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A creation failing half way leaves no escrow, no open wallet, and names the failed step;
    the identical retry then succeeds."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        pool = fake_pool(app)
        original = pool.acquire

        async def failing_acquire() -> WalletProcess:
            proc = await original()
            assert isinstance(proc, FakeProcess)
            proc.fake.fail_next("make_multisig", -1, "boom")
            return proc

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pool, "acquire", failing_acquire)
            status, body = await call(
                app, "POST", "/v1/escrows", {"escrow_id": "o4", "amount": AMOUNT}
            )
            assert (status, body["error"]["code"]) == (502, "wallet_error"), body
            assert "make_multisig" in body["error"]["message"]
            assert (await call(app, "GET", "/v1/escrows/o4"))[0] == 404
            assert world.locks == {}
            assert await app.store.get_escrow("o4") is None
        # walletd moved the new wallet files aside; the fake's directory is in memory, so do
        # the same to it (the regtest suite checks the real files).
        for role in ("buyer", "vendor", "arbiter"):
            del world.wallets[f"escrow-o4-{role}"]
        status, body = await call(app, "POST", "/v1/escrows", {"escrow_id": "o4", "amount": AMOUNT})
        assert status == 201, body
        nursery.cancel_scope.cancel()


async def test_thirty_escrows_cap_ten(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """With 30 watched escrows and a cap of 10, every escrow's funding is detected, and the
    monitor never evicts a session the API is using."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path, max_active=10)
        await run_monitor(nursery, app, cold_interval=5)
        addresses = {}
        for i in range(30):
            status, esc = await call(
                app, "POST", "/v1/escrows", {"escrow_id": f"m{i}", "amount": AMOUNT}
            )
            assert status == 201
            addresses[f"m{i}"] = esc["multisig_address"]
        for address in addresses.values():
            world.credit(address, AMOUNT, unlocked=False)
        deadline = trio.current_time() + 3600
        while trio.current_time() < deadline:
            funded = [e for e in await app.store.list_escrows() if e.state in ("funded", "ready")]
            if len(funded) == 30:
                break
            await trio.sleep(5)
        states = [e.state.value for e in await app.store.list_escrows()]
        assert states.count("funded") + states.count("ready") == 30, states
        assert app.registry.statistics().active_sessions <= 10
        nursery.cancel_scope.cancel()


async def test_one_stuck_wallet_does_not_stop_the_monitor(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A wallet-rpc that stops answering for one escrow never holds up another's funding."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        pool = fake_pool(app)
        _, stuck = await call(app, "POST", "/v1/escrows", {"escrow_id": "s1", "amount": AMOUNT})
        _, fine = await call(app, "POST", "/v1/escrows", {"escrow_id": "s2", "amount": AMOUNT})
        pool.fake_of("escrow-s1-buyer").hang()
        world.credit(stuck["multisig_address"], AMOUNT, unlocked=False)
        world.credit(fine["multisig_address"], AMOUNT, unlocked=False)
        await wait_state(app, "s2", "funded", timeout=120)
        nursery.cancel_scope.cancel()


async def test_cosigner_killed_mid_payout_is_restored(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """kill -9 of the co-signer while a release is being prepared: the session restores it,
    the release is answered, walletd keeps serving, and one payout leaves the escrow."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        _, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "k1", "amount": AMOUNT})
        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        await wait_state(app, "k1", "ready")
        vendor = world.add_wallet("vk", "x")
        arbiter = fake_pool(app).fake_of("escrow-k1-arbiter")
        arbiter.call_delay = 10.0
        answers: list[tuple[int, Any]] = []
        answered = trio.Event()

        async def release() -> None:
            body = {"address": vendor.address}
            answers.append(await call(app, "POST", "/v1/escrows/k1/release", body))
            answered.set()

        nursery.start_soon(release)
        await trio.sleep(3)  # inside the payout's first multisig step on the arbiter
        arbiter.kill()
        with trio.fail_after(120):
            await answered.wait()
        assert answers[0][0] in (202, 503), answers
        if answers[0][0] == 503:
            assert (
                await call(
                    app, "POST", "/v1/escrows/k1/release", body := {"address": vendor.address}
                )
            )[0] == 202, body
        assert (await call(app, "GET", "/v1/health"))[0] in (200, 503)
        assert world.epoch(esc["multisig_address"]) == 1
        nursery.cancel_scope.cancel()


async def test_restored_reader_of_a_created_escrow_catches_up(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """kill -9 of the buyer's wallet-rpc of an escrow walletd created: the restored wallet has
    lost its unsaved sync, and must catch up before answering, so the funding transaction it
    saw a moment ago is still found (not a 404)."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path, store_interval=100_000)
        await run_monitor(nursery, app, cold_interval=5)
        _, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "r1", "amount": AMOUNT})
        txid = world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        await wait_state(app, "r1", "ready")
        status, body = await call(app, "GET", f"/v1/escrows/r1/transfers/{txid}")
        assert status == 200, body
        fake_pool(app).fake_of("escrow-r1-buyer").kill()
        status, body = await call(app, "GET", f"/v1/escrows/r1/transfers/{txid}")
        assert status == 200, body
        assert (body["txid"], body["direction"], body["amount"]) == (txid, "in", AMOUNT)
        nursery.cancel_scope.cancel()


async def test_dust_payments_do_not_hold_a_funded_escrow_out_of_ready(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """An escrow paid in full moves to `ready` once the payment that covers the amount is
    unlocked and has the required confirmations, even while someone keeps sending it 1
    piconero every block: the dust's own confirmations do not count."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        status, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "d1", "amount": AMOUNT})
        assert status == 201, esc
        address = esc["multisig_address"]
        world.credit(address, AMOUNT, unlocked=False)
        await wait_state(app, "d1", "funded")
        state = "funded"
        for _ in range(30):  # dust every block (credit mines one), the monitor watching
            world.credit(address, 1, unlocked=False)
            await trio.sleep(3)
            _, esc = await call(app, "GET", "/v1/escrows/d1")
            state = esc["state"]
            if state == "ready":
                break
        assert state == "ready", esc
        assert esc["funding"]["unlocked_balance"] >= AMOUNT
        assert esc["funding"]["confirmations"] >= esc["required_confirmations"]
        nursery.cancel_scope.cancel()


async def _wait_event(app: App, escrow_id: str, type_: str, timeout: float = 300) -> None:
    with trio.fail_after(timeout):
        while True:
            if type_ in await _events(app, escrow_id):
                return
            await trio.sleep(1)


async def test_funding_reorged_away_before_ready_is_reported_and_never_ready(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A deposit a reorg takes away before `ready`: one `funding_reorged` event, the escrow stays
    `funded` (states only move forward) and does not become ready however long the chain grows;
    when the funds are mined again it becomes ready as usual."""
    async with trio.open_nursery() as nursery:
        app, world, _ = await app_on_fakes(nursery, tmp_path)
        await run_monitor(nursery, app, cold_interval=5)
        status, esc = await call(app, "POST", "/v1/escrows", {"escrow_id": "rg", "amount": AMOUNT})
        assert status == 201, esc
        txid = world.credit(esc["multisig_address"], AMOUNT, unlocked=False)
        await wait_state(app, "rg", "funded")
        world.reorg_away(txid)
        world.mine(1)
        await _wait_event(app, "rg", "funding_reorged")
        world.mine(20)  # long past the confirmations a ready escrow needs
        for _ in range(5):
            world.mine(1)
            await trio.sleep(30)  # several monitor cycles, each on a new block
        esc = (await call(app, "GET", "/v1/escrows/rg"))[1]
        assert esc["state"] == "funded"
        assert esc["funding"]["balance"] == 0
        events = (await call(app, "GET", "/v1/events?after=0"))[1]["events"]
        reorged = [e for e in events if e["escrow_id"] == "rg" and e["type"] == "funding_reorged"]
        assert len(reorged) == 1
        assert (reorged[0]["balance"], reorged[0]["previous_balance"]) == (0, AMOUNT)

        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
        await wait_state(app, "rg", "ready")
        types = await _events(app, "rg")
        assert types.index("funding_reorged") < types.index("ready")
        nursery.cancel_scope.cancel()
