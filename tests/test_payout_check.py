"""A proposal that is not the recorded payout is refused before the second signature.

The fake wallet-rpc's `sweep_outputs` hook makes the proposer's `sweep_all` propose something
else than the sweep to the recorded address; the co-signer's `describe_transfer` shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.fakes import call
from tests.harness import AMOUNT, app_on_fakes, ready_escrow, run_monitor
from walletd.app import App
from walletd.config import parse_config
from walletd.errors import ConfigError, PayoutRefused
from walletd.escrows.model import PayoutPhase
from walletd.testing.fake_chain import FEE, FakeWalletWorld, fake_address
from walletd.wallets.payout_check import DUST, Expected, check

OTHER = fake_address("someone-else")
Outputs = tuple[tuple[str, int], ...]


async def _ready_escrow(
    nursery: trio.Nursery, tmp_path: Path, escrow_id: str, fee_priority: int | None = None
) -> tuple[App, FakeWalletWorld, str]:
    """A ready escrow with the monitor running, and a payee address."""
    monero = {} if fee_priority is None else {"fee_priority": fee_priority}
    app, world, _ = await app_on_fakes(nursery, tmp_path, monero=monero)
    await run_monitor(nursery, app, cold_interval=5)
    await ready_escrow(app, world, escrow_id)
    return app, world, world.add_wallet(f"payee-{escrow_id}", "x").address


def _signed(world: FakeWalletWorld) -> int:
    return sum(1 for _, method in world.calls if method == "sign_multisig")


# (what the proposer's sweep_all proposes: escrow address, destination, swept total -> outputs)
BAD: dict[str, Callable[[str, str, int], Outputs]] = {
    "second destination": lambda _e, dest, total: ((dest, total - FEE - 10**9), (OTHER, 10**9)),
    "wrong address": lambda _e, _dest, total: ((OTHER, total - FEE),),
    "large change": lambda esc, dest, total: ((dest, total // 2), (esc, total - total // 2 - FEE)),
    "outsized fee": lambda _e, dest, total: ((dest, total - 10 * FEE),),
}
REASON = {
    "second destination": "2 destinations besides change",
    "wrong address": "not the recorded payout address",
    "large change": "change of",
    "outsized fee": "is above the bound",
}


@pytest.mark.parametrize("bad", list(BAD))
async def test_a_bad_proposal_is_refused_and_nothing_signed(
    bad: str, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A release whose proposal has a second destination / the wrong address / large change /
    an outsized fee answers 409 conflict saying why; nothing is signed or sent, the payout is
    recorded refused, and a payout_refused event carries the reason."""
    async with trio.open_nursery() as nursery:
        app, world, payee = await _ready_escrow(nursery, tmp_path, "r1")
        world.sweep_outputs = BAD[bad]
        status, body = await call(app, "POST", "/v1/escrows/r1/release", {"address": payee})
        assert (status, body["error"]["code"]) == (409, "conflict"), body
        assert REASON[bad] in body["error"]["message"]
        assert _signed(world) == 0
        assert not [tx for tx in world.txs.values() if tx.sender is not None]
        rec = await app.store.get_escrow("r1")
        assert rec is not None
        assert rec.payout is not None
        assert (rec.state.value, rec.payout.phase) == ("ready", PayoutPhase.REFUSED)
        _, events = await call(app, "GET", "/v1/events?after=0")
        refused = [e for e in events["events"] if e["type"] == "payout_refused"]
        assert len(refused) == 1, refused
        assert REASON[bad] in refused[0]["reason"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("fault", "value", "reason"),
    [
        ("sweep_unlock_time", 10_000_000, "unlock_time 10000000"),
        ("sweep_unlock_time", 1, "unlock_time 1"),
        ("sweep_payment_id", "0123456789abcdef", "payment id"),
    ],
)
async def test_an_unlock_time_or_payment_id_in_the_proposal_is_refused(
    fault: str, value: object, reason: str, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A proposal that pays the recorded address the whole balance but with an unlock time
    (the payee could not spend it for years) or a payment id the address does not carry answers
    409 conflict naming it, and nothing is signed or sent."""
    async with trio.open_nursery() as nursery:
        app, world, payee = await _ready_escrow(nursery, tmp_path, "u1")
        setattr(world, fault, value)
        status, body = await call(app, "POST", "/v1/escrows/u1/release", {"address": payee})
        assert (status, body["error"]["code"]) == (409, "conflict"), body
        assert reason in body["error"]["message"]
        assert _signed(world) == 0
        assert not [tx for tx in world.txs.values() if tx.sender is not None]
        nursery.cancel_scope.cancel()


async def test_a_refused_payout_is_never_resumed_but_a_new_call_retries(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Start-up recovery leaves a refused payout alone (nothing signed); the next release call
    proposes afresh, is checked again, and pays once when the proposal is right."""
    async with trio.open_nursery() as nursery:
        app, world, payee = await _ready_escrow(nursery, tmp_path, "r2")
        world.sweep_outputs = BAD["wrong address"]
        status, _ = await call(app, "POST", "/v1/escrows/r2/release", {"address": payee})
        assert status == 409
        world.sweep_outputs = None
        await app.lifecycle.recover()
        assert _signed(world) == 0
        status, esc = await call(app, "POST", "/v1/escrows/r2/release", {"address": payee})
        assert (status, esc["state"]) == (202, "releasing"), esc
        paid = [amount for tx in world.txs.values() for to, amount in tx.outputs if to == payee]
        assert paid == [AMOUNT - FEE]
        nursery.cancel_scope.cancel()


async def test_fee_priority_reaches_the_sweep_and_is_reported(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """monero.fee_priority is the priority of the payout's sweep_all, and the escrow's payout
    reports it."""
    async with trio.open_nursery() as nursery:
        app, world, payee = await _ready_escrow(nursery, tmp_path, "p1", fee_priority=3)
        status, esc = await call(app, "POST", "/v1/escrows/p1/release", {"address": payee})
        assert status == 202, esc
        assert world.sweep_priorities == [3]
        assert esc["payout"]["fee_priority"] == 3
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("value", [-1, 5, "high"])
def test_fee_priority_outside_0_to_4_is_refused(value: object) -> None:
    """A fee priority wallet-rpc does not know stops start-up naming the key."""
    with pytest.raises(ConfigError, match=r"^monero\.fee_priority"):
        parse_config({"monero": {"fee_priority": value}})


def _desc(**changes: object) -> dict[str, object]:
    desc: dict[str, object] = {
        "amount_in": AMOUNT + FEE,
        "recipients": [{"address": "A", "amount": AMOUNT}],
        "change_amount": 0,
        "fee": FEE,
        "unlock_time": 0,
        "payment_id": "",
    }
    return {"desc": [{k: v for k, v in (desc | changes).items() if v is not _MISSING}]}


_MISSING = object()
INTEGRATED = "4" + "I" * 105


def test_check_accepts_a_sweep_and_dust_change() -> None:
    """The honest sweep passes, and so does change up to DUST (taken from the amount)."""
    expected = Expected(address="A", unlocked_balance=AMOUNT + FEE, max_fee=FEE)
    check(_desc(), expected)
    check(
        _desc(recipients=[{"address": "A", "amount": AMOUNT - DUST}], change_amount=DUST),
        Expected(address="A", unlocked_balance=AMOUNT + FEE, max_fee=FEE),
    )


def test_check_refuses_a_partial_sweep() -> None:
    """A proposal that leaves part of the unlocked balance unspent is not the payout."""
    with pytest.raises(PayoutRefused, match="sweeps all of it"):
        check(_desc(), Expected(address="A", unlocked_balance=2 * AMOUNT + FEE, max_fee=FEE))


@pytest.mark.parametrize("unlock_time", [1, 10_000_000, 2**63, "0", True, 0.0, _MISSING])
def test_check_refuses_any_unlock_time_but_0(unlock_time: object) -> None:
    """A transaction locked until some height or time (or one whose description does not say)
    is not the payout, though it pays the right address the right amount."""
    expected = Expected(address="A", unlocked_balance=AMOUNT + FEE, max_fee=FEE)
    with pytest.raises(PayoutRefused, match="unlock_time"):
        check(_desc(unlock_time=unlock_time), expected)


def test_check_compares_an_integrated_address_and_its_payment_id() -> None:
    """An integrated payout address must be the recipient as recorded, with its own payment id
    (as 0.18 describes it, measured on regtest); another payment id, none at all, or a payment
    id added to a standard address is refused."""
    pid = "f184decd712637b0"
    integrated = Expected(
        address=INTEGRATED, unlocked_balance=AMOUNT + FEE, max_fee=FEE, payment_id=pid
    )
    paid = [{"address": INTEGRATED, "amount": AMOUNT}]
    check(_desc(recipients=paid, payment_id=pid), integrated)
    for other in ("0123456789abcdef", "", "0" * 16, pid + "0" * 48, _MISSING):
        with pytest.raises(PayoutRefused, match="payment id"):
            check(_desc(recipients=paid, payment_id=other), integrated)
    standard = Expected(address="A", unlocked_balance=AMOUNT + FEE, max_fee=FEE)
    with pytest.raises(PayoutRefused, match="payment id"):
        check(_desc(payment_id=pid), standard)
