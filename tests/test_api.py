"""The socket API's answers to bad input of every kind, and the adoption of existing wallets.

Every bad request gets the documented error and leaves the daemon healthy (a good request right
after still works). Requests go through `Api.__call__` in-process; tests/test_daemon.py covers
the same surface through the real socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.fakes import call, fake_pool, make_fake_multisig
from tests.harness import app_adopting

TXID = "ab" * 32


BAD_REQUESTS: list[tuple[str, str, object, int, str]] = [
    ("POST", "/v1/escrows", b"{not json", 400, "invalid_request"),
    ("POST", "/v1/escrows", b"", 400, "invalid_request"),
    ("POST", "/v1/escrows", b"\xff\xfe", 400, "invalid_request"),
    ("POST", "/v1/escrows", b"[1, 2]", 400, "invalid_request"),
    ("POST", "/v1/escrows", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_request"),
    ("POST", "/v1/escrows", b'{"escrow_id": "x", "amount": NaN}', 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": "x"}, 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": "x", "amount": "5"}, 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": "x", "amount": True}, 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": "x", "amount": -1}, 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": "x", "amount": 2**64}, 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": "x", "amount": 1.5}, 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": "x", "amount": 5, "extra": 1}, 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": "../etc", "amount": 5}, 400, "invalid_request"),
    ("POST", "/v1/escrows", {"escrow_id": ["x"], "amount": 5}, 400, "invalid_request"),
    (
        "POST",
        "/v1/escrows",
        {"escrow_id": "x", "amount": 5, "required_confirmations": 0},
        400,
        "invalid_request",
    ),
    (
        "POST",
        "/v1/escrows",
        {"escrow_id": "x", "amount": 5, "wallets": "nope"},
        400,
        "invalid_request",
    ),
    (
        "POST",
        "/v1/escrows",
        {
            "escrow_id": "x",
            "amount": 5,
            "wallets": {
                "buyer": {"file": "../../etc/passwd", "password": ""},
                "vendor": {"file": "v", "password": ""},
                "arbiter": {"file": "a", "password": ""},
            },
        },
        400,
        "invalid_request",
    ),
    ("GET", "/v1/escrows/..", None, 400, "invalid_request"),
    ("GET", "/v1/escrows/a%2Fb", None, 400, "invalid_request"),
    ("GET", "/v1/escrows/" + "a" * 65, None, 400, "invalid_request"),
    ("GET", "/v1/escrows/\u00e9", None, 400, "invalid_request"),
    ("GET", "/v1/escrows/unknown", None, 404, "not_found"),
    ("GET", "/v1/escrows/unknown/balance", None, 404, "not_found"),
    ("POST", "/v1/escrows/unknown/session", None, 404, "not_found"),
    ("DELETE", "/v1/escrows/unknown/session", None, 404, "not_found"),
    ("GET", "/v1/escrows?state=bogus", None, 400, "invalid_request"),
    ("GET", "/v1/escrows?foo=1", None, 400, "invalid_request"),
    ("GET", "/v1/escrows/good/balance?refresh=maybe", None, 400, "invalid_request"),
    ("GET", "/v1/escrows/good/transfers/xyz", None, 400, "invalid_request"),
    ("GET", "/v1/escrows/good/transfers/" + TXID, None, 404, "not_found"),
    ("GET", "/v1/events?after=-1", None, 400, "invalid_request"),
    ("GET", "/v1/events?timeout=600", None, 400, "invalid_request"),
    ("GET", "/v1/events?timeout=abc", None, 400, "invalid_request"),
    ("DELETE", "/v1/stats", None, 405, "method_not_allowed"),
    ("GET", "/v2/anything", None, 404, "not_found"),
    (
        "POST",
        "/v1/escrows/good/release",
        {"address": "donate.getmonero.org"},
        400,
        "invalid_request",
    ),
    ("POST", "/v1/escrows/good/release", {"address": 5}, 400, "invalid_request"),
    ("POST", "/v1/escrows/good/refund", {"addr": "x"}, 400, "invalid_request"),
    ("POST", "/v1/escrows/good/release", {"address": "4" * 95}, 409, "not_ready"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS)
async def test_bad_requests_get_documented_errors(
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
    method: str,
    path: str,
    body: object,
    status: int,
    code: str,
) -> None:
    """A bad request gets its documented status and code; the daemon keeps serving."""
    async with trio.open_nursery() as nursery:
        app, _ = await app_adopting(nursery, tmp_path, "good")
        got_status, got = await call(app, method, path, body)
        assert (got_status, got["error"]["code"]) == (status, code), got
        assert isinstance(got["error"]["message"], str)
        assert (await call(app, "GET", "/v1/escrows/good/balance"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_adopt_retry_conflict_and_errors(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Adopting: an identical retry is 200, other values 409, a wrong password 400, and nothing
    half-registered is left by a failure."""
    async with trio.open_nursery() as nursery:
        app, s = await app_adopting(nursery, tmp_path, "good")
        status, body = await call(app, "POST", "/v1/escrows", s.adopt_body("good"))
        assert status == 200
        assert body["multisig_address"] == s.address
        assert (await call(app, "POST", "/v1/escrows", s.adopt_body("good", 7)))[0] == 409
        # The same files under another id: they belong to "good" already.
        assert (await call(app, "POST", "/v1/escrows", s.adopt_body("other")))[0] == 409

        world = fake_pool(app).world
        s2 = await make_fake_multisig(world, "b")
        for name in s2.files.values():
            (app.config.monero.wallet_dir / f"{name}.keys").write_bytes(b"fake")
        wrong = s2.adopt_body("b1")
        wrong["wallets"]["vendor"]["password"] = "wrong"
        status, body = await call(app, "POST", "/v1/escrows", wrong)
        assert (status, body["error"]["code"]) == (400, "invalid_request"), body
        assert "password" not in body["error"]["message"].replace("wrong password", "")
        assert (await call(app, "GET", "/v1/escrows/b1"))[0] == 404
        assert world.locks == {n: p for n, p in world.locks.items() if n.startswith("a-")}
        assert (await call(app, "POST", "/v1/escrows", s2.adopt_body("b1")))[0] == 201
        nursery.cancel_scope.cancel()


async def test_adopt_refuses_plain_wallets(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Three plain wallets are not a 2-of-3 multisig: 400, and no escrow is recorded."""
    async with trio.open_nursery() as nursery:
        app, _ = await app_adopting(nursery, tmp_path, "good")
        world = fake_pool(app).world
        for role in ("buyer", "vendor", "arbiter"):
            world.add_wallet(f"plain-{role}", "pw")
            (app.config.monero.wallet_dir / f"plain-{role}.keys").write_bytes(b"fake")
        body = {
            "escrow_id": "plain",
            "amount": 5,
            "wallets": {
                r: {"file": f"plain-{r}", "password": "pw"} for r in ("buyer", "vendor", "arbiter")
            },
        }
        status, answer = await call(app, "POST", "/v1/escrows", body)
        assert (status, answer["error"]["code"]) == (400, "invalid_request"), answer
        assert (await call(app, "GET", "/v1/escrows/plain"))[0] == 404
        nursery.cancel_scope.cancel()


async def test_no_password_in_answers_or_logs(
    tmp_path: Path, autojump_clock: trio.abc.Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """No wallet password appears in any answer or any log line."""
    async with trio.open_nursery() as nursery:
        app, s = await app_adopting(nursery, tmp_path, "good")
        answers = [
            await call(app, "GET", "/v1/escrows/good"),
            await call(app, "GET", "/v1/escrows"),
            await call(app, "GET", "/v1/events"),
            await call(app, "GET", "/v1/sessions"),
            await call(app, "GET", "/v1/stats"),
        ]
        nursery.cancel_scope.cancel()
    secret = app.vault.derived_password("good", "buyer")
    out = capsys.readouterr()
    for _, body in answers:
        assert s.password not in str(body).replace("password", "")
        assert secret not in str(body)
    assert secret not in out.out + out.err


async def test_sessions_endpoint_and_escrow_view(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """GET /v1/sessions lists most recently used first; the escrow object shows its session."""
    async with trio.open_nursery() as nursery:
        app, _ = await app_adopting(nursery, tmp_path, "good")
        status, body = await call(app, "GET", "/v1/escrows/good")
        assert status == 200
        assert body["state"] == "awaiting_funding"
        assert body["session"]["open"] is True
        await call(app, "DELETE", "/v1/escrows/good/session")
        assert (await call(app, "GET", "/v1/escrows/good"))[1]["session"] == {"open": False}
        assert (await call(app, "GET", "/v1/sessions"))[1] == {"sessions": []}
        status, body = await call(app, "POST", "/v1/escrows/good/session")
        assert (status, body["created"]) == (200, True)
        assert body["open_s"] > 1.0  # three wallet opens of 1.5 s, concurrently
        sessions = (await call(app, "GET", "/v1/sessions"))[1]["sessions"]
        assert [s["escrow_id"] for s in sessions] == ["good"]
        assert set(sessions[0]) == {"escrow_id", "age_s", "idle_s", "busy"}
        nursery.cancel_scope.cancel()
