"""One set of wallet files, one multisig address and one escrow id belong to one escrow at a time.

Issue 9's money-safety items, on the fake wallet-rpc: two escrows sharing wallets (or a copy of
them) would both turn `ready` on one deposit, and a release of either would sweep the address.
Each test drives an App in-process as the marketplace server would, and checks what it could see:
the answers, the recorded escrows, and the wallet files still in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from tests.fakes import (
    MultisigSet,
    call,
    fake_pool,
    make_fake_multisig,
    sqlite,
)
from tests.harness import AMOUNT, app_on_fakes
from walletd.app import App
from walletd.errors import Conflict, InvalidRequest
from walletd.escrows.model import EscrowRecord, EscrowState, Funding, WalletRef, utcnow
from walletd.ids import ROLES, check_adoptable_wallet_file, wallet_file_for
from walletd.sessions.messages import GetBalance
from walletd.sessions.registry import Caller
from walletd.sessions.session import SessionSpec, WalletSpec
from walletd.testing.fake_chain import FakeWalletWorld


def _copy_wallets(app: App, world: FakeWalletWorld, s: MultisigSet, prefix: str) -> MultisigSet:
    """The same multisig wallets under other file names (an operator's `cp`)."""
    names = {}
    for role in ROLES:
        name = f"{prefix}-{role}"
        world.wallets[name] = attrs.evolve(world.wallets[s.files[role]], name=name)
        (app.config.monero.wallet_dir / f"{name}.keys").write_bytes(b"fake")
        names[role] = name
    return MultisigSet(names, s.password, s.address)


async def _both(app: App, first: object, second: object) -> list[tuple[int, Any]]:
    """Two POST /v1/escrows in flight together; the second starts once the first is blocked."""
    answers: list[tuple[int, Any]] = [(0, None), (0, None)]

    async def post(i: int, body: object) -> None:
        answers[i] = await call(app, "POST", "/v1/escrows", body)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, 0, first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(post, 1, second)
    return answers


def _codes(answers: list[tuple[int, Any]]) -> list[tuple[int, str | None]]:
    return [(s, b["error"]["code"] if s >= 400 else None) for s, b in answers]


@pytest.mark.parametrize("max_active", [1, 10])
async def test_overlapping_adoptions_of_the_same_files_make_one_escrow(
    tmp_path: Path, autojump_clock: trio.abc.Clock, max_active: int
) -> None:
    """Two adoptions of the same three wallet files under two escrow ids, in flight together
    (with the session cap full or not): the first is 201, the second 409 `conflict`, and only
    one escrow is listed, so one deposit can never make two escrows `ready`."""
    async with trio.open_nursery() as nursery:
        app, _, sets = await app_on_fakes(nursery, tmp_path, "a", max_active=max_active)
        s = sets["a"]
        answers = await _both(app, s.adopt_body("x"), s.adopt_body("y"))
        assert _codes(answers) == [(201, None), (409, "conflict")], answers
        assert "another escrow" in answers[1][1]["error"]["message"]
        listed = (await call(app, "GET", "/v1/escrows"))[1]["escrows"]
        assert [e["escrow_id"] for e in listed] == ["x"]
        assert (await call(app, "GET", "/v1/escrows/x/balance"))[0] == 200
        # Once the loser is gone, other wallets can still be adopted.
        world = fake_pool(app).world
        b = await make_fake_multisig(world, "b")
        for name in b.files.values():
            (app.config.monero.wallet_dir / f"{name}.keys").write_bytes(b"fake")
        assert (await call(app, "POST", "/v1/escrows", b.adopt_body("y")))[0] == 201
        nursery.cancel_scope.cancel()


async def test_adopting_a_copy_of_an_escrows_wallets_is_refused(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Copies of an escrow's wallet files under other names have its multisig address: adopting
    them is 409 `conflict` (whether the escrow is recorded or its adoption is still in flight),
    no second escrow is recorded, and the first keeps working."""
    async with trio.open_nursery() as nursery:
        app, world, sets = await app_on_fakes(nursery, tmp_path, "a")
        s = sets["a"]
        copy1 = _copy_wallets(app, world, s, "copy1")
        copy2 = _copy_wallets(app, world, s, "copy2")
        answers = await _both(app, s.adopt_body("x"), copy1.adopt_body("y"))
        # Whichever learns the address first keeps it; the other is refused.
        assert sorted(_codes(answers)) == [(201, None), (409, "conflict")], answers
        winner = "x" if answers[0][0] == 201 else "y"
        status, body = await call(app, "POST", "/v1/escrows", copy2.adopt_body("z"))
        assert (status, body["error"]["code"]) == (409, "conflict"), body
        assert "multisig address" in body["error"]["message"]
        assert s.password not in body["error"]["message"]
        listed = (await call(app, "GET", "/v1/escrows"))[1]["escrows"]
        assert [e["escrow_id"] for e in listed] == [winner]
        assert [e for e in ("x", "y", "z") if app.registry.is_open(e)] == [winner]
        # The refused wallets are not left locked: only the winner's are held.
        held = set(s.files.values()) if winner == "x" else set(copy1.files.values())
        assert set(world.locks) == held
        assert (await call(app, "GET", f"/v1/escrows/{winner}/balance"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_create_while_the_same_id_is_being_adopted_is_a_conflict(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A create of an escrow id whose adoption is in flight is 409 `conflict`: it never answers
    with the adopted wallets' address, and the escrow recorded is the adopted one, naming the
    files that exist."""
    async with trio.open_nursery() as nursery:
        app, world, sets = await app_on_fakes(nursery, tmp_path, "a")
        s = sets["a"]
        create = {"escrow_id": "x", "amount": AMOUNT}
        answers = await _both(app, s.adopt_body("x"), create)
        assert _codes(answers) == [(201, None), (409, "conflict")], answers
        assert answers[0][1]["multisig_address"] == s.address
        rec = await app.store.get_escrow("x")
        assert rec is not None
        assert rec.origin == "adopted"
        assert {r: w.file for r, w in rec.wallets.items()} == s.files
        assert not any(n.startswith("escrow-x-") for n in world.wallets)
        assert (await call(app, "GET", "/v1/escrows/x/balance"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_adopt_while_the_same_id_is_being_created_is_a_conflict(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The other order: an adoption of an id being created is 409 `conflict`; the created
    escrow keeps its own new wallets."""
    async with trio.open_nursery() as nursery:
        app, _, sets = await app_on_fakes(nursery, tmp_path, "a")
        s = sets["a"]
        create = {"escrow_id": "x", "amount": AMOUNT}
        answers = await _both(app, create, s.adopt_body("x"))
        assert _codes(answers) == [(201, None), (409, "conflict")], answers
        assert answers[0][1]["multisig_address"] != s.address
        rec = await app.store.get_escrow("x")
        assert rec is not None
        assert rec.origin == "created"
        nursery.cancel_scope.cancel()


async def test_a_session_serves_only_the_spec_it_was_opened_from(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A registry call that names other wallets than the escrow's open session was opened with
    is refused with `conflict` and never reaches that session's wallets; the same spec is
    served by it."""
    async with trio.open_nursery() as nursery:
        app, world, sets = await app_on_fakes(nursery, tmp_path, "a", "b")

        def spec(s: MultisigSet) -> SessionSpec:
            wallets = {r: WalletSpec(s.files[r], s.password) for r in ROLES}
            return SessionSpec(escrow_id="x", wallets=wallets, address=None)

        await app.registry.open("x", caller=Caller.API, spec=spec(sets["a"]))
        calls = len(world.calls)
        with pytest.raises(Conflict) as caught:
            await app.registry.call(
                "x", GetBalance(refresh=False), caller=Caller.API, spec=spec(sets["b"])
            )
        assert sets["b"].password not in caught.value.message
        assert len(world.calls) == calls  # nothing was sent to a wallet
        await app.registry.call(
            "x", GetBalance(refresh=False), caller=Caller.API, spec=spec(sets["a"])
        )
        assert app.registry.is_open("x")
        nursery.cancel_scope.cancel()


async def test_adopt_refuses_walletd_own_file_names(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Wallet files named like the ones walletd creates (`escrow-<id>-<role>`) cannot be adopted:
    400 `invalid_request` saying why, nothing recorded; the daemon keeps serving."""
    async with trio.open_nursery() as nursery:
        app, _, sets = await app_on_fakes(nursery, tmp_path, "escrow-y", "a")
        status, body = await call(app, "POST", "/v1/escrows", sets["escrow-y"].adopt_body("z"))
        assert (status, body["error"]["code"]) == (400, "invalid_request"), body
        assert "walletd" in body["error"]["message"]
        assert "escrow-" in body["error"]["message"]
        assert (await call(app, "GET", "/v1/escrows/z"))[0] == 404
        assert (await call(app, "POST", "/v1/escrows", sets["a"].adopt_body("a")))[0] == 201
        nursery.cancel_scope.cancel()


def _legacy_record(app: App, escrow_id: str, state: str, s: MultisigSet) -> None:
    """An escrow an older walletd recorded on the files of `s` (adopted, or a creation it
    crashed in)."""
    now = utcnow()
    sqlite(app).insert_escrow(
        EscrowRecord(
            escrow_id=escrow_id,
            state=EscrowState(state),
            amount=AMOUNT,
            required_confirmations=10,
            multisig_address=s.address if state != "creating" else None,
            origin="adopted" if state != "creating" else "created",
            wallets={
                r: WalletRef(s.files[r], app.vault.seal(escrow_id, r, s.password)) for r in ROLES
            },
            request_digest="legacy",
            funding=Funding(),
            payout=None,
            created_at=now,
            updated_at=now,
        )
    )


async def test_create_never_moves_files_a_recorded_escrow_uses(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """An escrow recorded (adopted by an older walletd) with files named `escrow-y-*`: creating
    escrow `y` is 409 `conflict`, and escrow `z`'s wallet files stay where they are."""
    async with trio.open_nursery() as nursery:
        app, _, sets = await app_on_fakes(nursery, tmp_path, "escrow-y")
        s = sets["escrow-y"]
        _legacy_record(app, "z", "awaiting_funding", s)
        status, body = await call(app, "POST", "/v1/escrows", {"escrow_id": "y", "amount": 5})
        assert (status, body["error"]["code"]) == (409, "conflict"), body
        for name in s.files.values():
            assert (app.config.monero.wallet_dir / f"{name}.keys").is_file(), name
        assert not (app.config.daemon.state_dir / "abandoned").exists()
        assert (await call(app, "GET", "/v1/escrows/y"))[0] == 404
        assert (await call(app, "GET", "/v1/escrows/z/balance"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_undoing_a_creation_never_moves_files_another_escrow_uses(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A creation of `y` left half done by an older walletd, whose file names an adopted escrow
    `z` uses: recovery forgets `y` but leaves `z`'s wallet files in place, and `z` keeps
    working."""
    async with trio.open_nursery() as nursery:
        app, _, sets = await app_on_fakes(nursery, tmp_path, "escrow-y")
        s = sets["escrow-y"]
        _legacy_record(app, "z", "awaiting_funding", s)
        _legacy_record(app, "y", "creating", s)
        await app.lifecycle.recover()
        assert await app.store.get_escrow("y") is None
        for name in s.files.values():
            assert (app.config.monero.wallet_dir / f"{name}.keys").is_file(), name
        assert (await call(app, "GET", "/v1/escrows/z/balance"))[0] == 200
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("escrow_id", ["y", "order-42", "a_b-c"])
def test_walletd_names_are_not_adoptable(tmp_path: Path, escrow_id: str) -> None:
    """Every name walletd gives a created wallet is refused for adoption, whatever the id."""
    for role in ROLES:
        name = wallet_file_for(escrow_id, role)
        (tmp_path / f"{name}.keys").write_bytes(b"k")
        with pytest.raises(InvalidRequest, match="reserved to walletd"):
            check_adoptable_wallet_file(name, tmp_path)


@pytest.mark.parametrize("name", ["escrow-y-buyer.old", "escrow-buyer", "my-escrow-y-vendor"])
def test_names_near_walletd_ones_stay_adoptable(tmp_path: Path, name: str) -> None:
    """Only walletd's exact scheme is reserved: names merely like it can still be adopted."""
    (tmp_path / f"{name}.keys").write_bytes(b"k")
    assert check_adoptable_wallet_file(name, tmp_path) == name
