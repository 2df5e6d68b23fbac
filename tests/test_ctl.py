"""Tests of walletctl (cli.walletctl) against a real walletd HTTP server with canned API answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import walletd
from walletd.api import connection as httpconnection
from walletd.api import server as httpserver
from walletd.api.messages import Request, Response
from walletd.api.server import serve_unix
from walletd.cli import walletctl as ctl
from walletd.cli import walletctl_output as output
from walletd.cli.walletctl_client import Client

ESCROW = {
    "escrow_id": "order-42",
    "state": "funded",
    "multisig_address": "4" + "A" * 94,
    "amount": 1_500_000_000_000,
    "required_confirmations": 10,
    "funding": {
        "balance": 1_500_000_000_000,
        "unlocked_balance": 0,
        "confirmations": 3,
        "checked_at": "2024-05-01T12:00:05.000Z",
    },
    "payout": None,
    "session": {"open": True, "age_s": 125.0, "idle_s": 4.2},
    "created_at": "2024-05-01T11:00:00.000Z",
    "updated_at": "2024-05-01T12:00:05.000Z",
}
STATS = {
    "active_sessions": 2,
    "max_sessions": 10,
    "utilization": 0.2,
    "avg_age_s": 90.5,
    "oldest_age_s": 3725.0,
    "opened": 40,
    "closed": 38,
    "evicted": 3,
    "expired": 10,
    "hits": 400,
    "misses": 41,
    "failed": 0,
    "wallet_rpc_restarts": 1,
}
SESSIONS = {
    "sessions": [
        {"escrow_id": "order-42", "age_s": 125.0, "idle_s": 4.2, "busy": True},
        {"escrow_id": "order-7", "age_s": 3725.0, "idle_s": 600.0, "busy": False},
    ]
}
EVENTS = [
    {"seq": 1, "type": "escrow_created", "escrow_id": "order-42", "at": "2024-05-01T11:00:00.000Z"},
    {"seq": 2, "type": "funded", "escrow_id": "order-42", "at": "2024-05-01T11:30:00.000Z"},
    {
        "seq": 3,
        "type": "session_closed",
        "escrow_id": "order-7",
        "at": "2024-05-01T12:00:00.000Z",
        "reason": "evicted",
    },
]


class Stub:
    """Answers like walletd's API from canned data, and remembers the requests it saw."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[Any] = []
        self.healthy = True

    async def __call__(self, request: Request) -> Response:
        self.requests.append((request.method, request.path, dict(request.query)))
        self.bodies.append(json.loads(request.body) if request.body else None)
        route = (request.method, request.path)
        if route in (("POST", "/v1/escrows"), ("POST", "/v1/escrows/order-42/release")):
            return Response.json(201 if request.path == "/v1/escrows" else 202, ESCROW)
        if route == ("GET", "/v1/escrows/order-42/balance"):
            balance = {"balance": 2_000_000_000, "unlocked_balance": 0, "blocks_to_unlock": 7}
            return Response.json(200, {**balance, "height": 1234})
        if route == ("GET", "/v1/escrows/order-42/transfers/" + "ab" * 32):
            transfer = {"txid": "ab" * 32, "direction": "in", "amount": 1_500_000_000_000}
            return Response.json(200, {**transfer, "height": 1200, "confirmations": 35})
        if route == ("GET", "/v1/health"):
            if self.healthy:
                return Response.json(200, {"status": "ok", "daemon_height": 3120456, "escrows": 2})
            body = {"status": "degraded", "daemon_height": None, "reason": "monerod: refused"}
            return Response.json(503, body)
        if route == ("GET", "/v1/stats"):
            return Response.json(200, STATS)
        if route == ("GET", "/v1/sessions"):
            return Response.json(200, SESSIONS)
        if route == ("GET", "/v1/escrows"):
            state = request.query.get("state")
            if state == "bogus":
                return _error(400, "invalid_request", "state must be one of awaiting_funding, ...")
            escrows = [ESCROW] if state in (None, "funded") else []
            return Response.json(200, {"escrows": escrows})
        if route == ("GET", "/v1/escrows/order-42"):
            return Response.json(200, ESCROW)
        if route == ("POST", "/v1/escrows/order-42/session"):
            return Response.json(200, {"escrow_id": "order-42", "created": True, "open_s": 2.5})
        if route == ("DELETE", "/v1/escrows/order-42/session"):
            return Response.json(200, {"escrow_id": "order-42", "closed": False})
        if route == ("GET", "/v1/events"):
            after = int(request.query.get("after", "0"))
            page = [e for e in EVENTS if int(str(e["seq"])) > after][:2]  # pages of 2
            return Response.json(200, {"events": page, "next": page[-1]["seq"] if page else after})
        return _error(404, "not_found", f"escrow {request.path.rsplit('/', 1)[-1]!r} not found")


def _error(status: int, code: str, message: str) -> Response:
    return Response.json(status, {"error": {"code": code, "message": message}})


@pytest.fixture(autouse=True)
def quiet_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's log lines would mix with walletctl's output on stdout: capture them instead."""
    for module in (httpserver, httpconnection):
        monkeypatch.setattr(module, "log", structlog.get_logger(module.__name__))
    with structlog.testing.capture_logs():
        yield


@pytest.fixture
def stub(sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stub]:
    """walletd's real HTTP server on `sock_path` in a thread of its own, answering from `Stub`."""
    handler = Stub()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        with trio.CancelScope() as scope:
            box["scope"], box["token"] = scope, trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_unix, sock_path, handler))
                started.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert started.wait(10)
    monkeypatch.setenv("WALLETD_SOCKET", os.fspath(sock_path))
    try:
        yield handler
    finally:
        trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
        thread.join(10)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- tables --------------------------------------------------------------------------------------


def test_table_aligns_columns() -> None:
    """Cells are padded to their column's widest, right-aligned where asked, no trailing space."""
    text = output.table(("NAME", "N"), [("a", "1"), ("long-name", "100")], right=(1,))
    assert text.splitlines() == ["NAME         N", "a            1", "long-name  100"]


def test_status_table(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    """status shows health and stats as aligned key-value lines and exits 0 when healthy."""
    code, out, err = run(capsys, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["status", "ok"]
    assert "3120456" in out
    assert "2 of 10 (20%)" in out
    assert "40 / 38" in out
    assert "1h02m" in out  # oldest session, 3725 s
    assert any(line.split() == ["failed", "0"] for line in lines)  # a field ctl does not know
    # Values start in the same column on every line.
    assert len({len(line) - len(line[line.index("  ") :].lstrip()) for line in lines}) == 1


def test_status_degraded_exits_1(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    """A degraded walletd (503 health, not an error body) is shown with its reason; exit code 1."""
    stub.healthy = False
    code, out, err = run(capsys, "status")
    assert code == 1
    assert "degraded" in out
    assert "monerod: refused" in out
    assert err == ""


def test_sessions_table(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    """sessions prints one aligned row per session, in walletd's order."""
    code, out, _ = run(capsys, "sessions")
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split() == ["ESCROW", "AGE", "IDLE", "BUSY"]
    assert first.split() == ["order-42", "2m05s", "4.2s", "yes"]
    assert second.split() == ["order-7", "1h02m", "10m00s", "no"]
    assert len(header) >= len(first.rstrip()) - 1
    assert first.index("2m05s") + len("2m05s") == second.index("1h02m") + len("1h02m")


def test_escrow_show(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    """escrow show prints the escrow's fields with amounts in exact XMR."""
    code, out, _ = run(capsys, "escrow", "show", "order-42")
    assert code == 0
    assert "order-42" in out
    assert "funded" in out
    assert "1.500000000000 XMR" in out
    assert "3 of 10" in out
    assert "open for 2m05s, idle 4.2s" in out
    assert "4" + "A" * 94 in out


def test_escrow_list_with_state(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    """escrow list --state passes the state as a query parameter and tabulates the escrows."""
    code, out, _ = run(capsys, "escrow", "list", "--state", "funded")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:2] == ["ESCROW", "STATE"]
    assert row.split() == [
        "order-42",
        "funded",
        "1.500000000000",
        "1.500000000000",
        "3/10",
        "open",
        "2024-05-01T12:00:05.000Z",
    ]
    assert stub.requests[-1] == ("GET", "/v1/escrows", {"state": "funded"})
    code, out, _ = run(capsys, "escrow", "list", "--state", "completed")
    assert (code, out) == (0, "no escrows in state completed\n")


def test_session_open_and_close(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    """session open/close use POST/DELETE on the escrow's session and say what happened."""
    assert run(capsys, "session", "open", "order-42") == (
        0,
        "session order-42 opened in 2.5s\n",
        "",
    )
    assert run(capsys, "session", "close", "order-42") == (0, "session order-42 was not open\n", "")
    assert [r[:2] for r in stub.requests] == [
        ("POST", "/v1/escrows/order-42/session"),
        ("DELETE", "/v1/escrows/order-42/session"),
    ]


def test_events_reads_every_page(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    """events follows `next` until walletd has nothing newer, then prints one table."""
    code, out, _ = run(capsys, "events", "--after", "0")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "AT", "TYPE", "ESCROW", "DETAILS"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert lines[3].endswith("order-7   reason=evicted")
    assert [r[2]["after"] for r in stub.requests] == ["0", "2", "3"]
    assert all(r[2]["timeout"] == "0" for r in stub.requests)


# ---- --json --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sessions"], SESSIONS),
        (["escrow", "show", "order-42"], ESCROW),
        (["escrow", "list"], {"escrows": [ESCROW]}),
        (
            ["status"],
            {"health": {"status": "ok", "daemon_height": 3120456, "escrows": 2}, "stats": STATS},
        ),
        (["events"], {"events": EVENTS, "next": 3}),
    ],
)
def test_json_output(
    stub: Stub, capsys: pytest.CaptureFixture[str], argv: list[str], expected: object
) -> None:
    """--json prints walletd's JSON unchanged, whether given before or after the command."""
    code, out, _ = run(capsys, "--json", *argv)
    assert code == 0
    assert json.loads(out) == expected
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    assert json.loads(out) == expected


def test_follow_prints_events_until_ctrl_c(
    stub: Stub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """events --follow long-polls with timeout=30 from `next` and ends quietly on Ctrl-C."""
    real_call = Client.call
    polls = 0

    def call(self: Client, *args: Any, **kwargs: Any) -> Any:
        nonlocal polls
        polls += 1
        if polls == 4:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(Client, "call", call)
    code, out, err = run(capsys, "--json", "events", "--follow")
    assert (code, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == EVENTS
    assert [r[2] for r in stub.requests] == [
        {"after": "0", "timeout": "30"},
        {"after": "2", "timeout": "30"},
        {"after": "3", "timeout": "30"},
    ]

    polls = 0
    code, out, _ = run(capsys, "events", "-f", "--after", "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "AT", "TYPE"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "3"]
    # Printed one answer at a time, yet aligned: fixed minimum widths.
    assert len({line.index("2024") for line in lines[1:]}) == 1


# ---- errors --------------------------------------------------------------------------------------


def test_api_error_exits_1(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    """walletd's error body is printed as `walletctl: CODE: MESSAGE` on stderr; exit code 1."""
    code, out, err = run(capsys, "escrow", "show", "missing")
    assert (code, out) == (1, "")
    assert err == "walletctl: not_found: escrow 'missing' not found\n"
    code, _, err = run(capsys, "--json", "escrow", "list", "--state", "bogus")
    assert code == 1
    assert err.startswith("walletctl: invalid_request: state must be one of")


def test_missing_socket_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No socket file: a message naming the path and how to choose another; exit code 2."""
    path = tmp_path / "none.sock"
    code, out, err = run(capsys, "--socket", str(path), "status")
    assert (code, out) == (2, "")
    assert f"no socket at {path}" in err
    assert "WALLETD_SOCKET" in err


def test_refused_socket_exits_2(sock_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A socket file nobody listens on (walletd died): 'not running', exit code 2."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(sock_path))
    dead.close()
    code, _, err = run(capsys, "sessions", "--socket", str(sock_path))
    assert code == 2
    assert "walletd is not running" in err


def test_not_walletd_exits_2(
    tmp_path: Path, sock_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Something other than walletd on the socket (no JSON in the answer) is exit code 2."""

    async def html(_: Request) -> Response:
        return Response(200, b"<html></html>", content_type="text/html")

    async def serve_once() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_unix, sock_path, html))
            result = await trio.to_thread.run_sync(
                ctl.main, ["--socket", str(sock_path), "sessions"]
            )
            nursery.cancel_scope.cancel()
        assert result == 2

    trio.run(serve_once)
    assert "without JSON" in capsys.readouterr().err


def test_bad_escrow_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An escrow id walletd would refuse never reaches the socket: argparse exits with code 2."""
    with pytest.raises(SystemExit) as exc:
        ctl.main(["escrow", "show", "../stats"])
    assert exc.value.code == 2
    assert "escrow_id must be" in capsys.readouterr().err


def test_socket_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--socket defaults to $WALLETD_SOCKET, else /run/walletd/walletd.sock."""
    monkeypatch.setenv("WALLETD_SOCKET", "/tmp/x.sock")
    assert ctl._parser().parse_args(["status"]).socket == "/tmp/x.sock"
    monkeypatch.delenv("WALLETD_SOCKET")
    assert ctl._parser().parse_args(["status"]).socket == "/run/walletd/walletd.sock"


@pytest.mark.parametrize("program", ["walletd", "walletctl"])
def test_version_prints_the_version_and_exits_0(program: str) -> None:
    """`walletd --version` and `walletctl --version` (the installed commands) print the program's
    name and walletd.__version__ on stdout and exit 0, needing no config and no socket."""
    command = Path(sys.executable).parent / program
    if not command.exists():
        pytest.skip(f"{program} is not installed next to {sys.executable}")
    done = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{program} {walletd.__version__}"


def test_event_amounts_are_shown_in_xmr() -> None:
    """Amounts in an event's details read as XMR (exact, 12 decimals); other fields as they are.
    --json keeps walletd's atomic units (test_json_output)."""
    event = {
        "seq": 9,
        "type": "funding_reorged",
        "escrow_id": "order-42",
        "at": "2024-05-01T12:00:00.000Z",
        "balance": 0,
        "unlocked_balance": 0,
        "previous_balance": 1_500_000_000_000,
        "confirmations": 0,
    }
    details = output.event_row(event)[-1]
    assert details == (
        "balance=0.000000000000XMR unlocked_balance=0.000000000000XMR "
        "previous_balance=1.500000000000XMR confirmations=0"
    )


def test_escrow_create_takes_xmr_and_sends_atomic_units(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    """escrow create ID 1.5 sends amount 1.5 XMR in atomic units (exactly, no float), then shows
    the escrow; an amount finer than 12 decimals is a usage error (exit 2), sent nowhere."""
    code, out, _ = run(capsys, "escrow", "create", "order-42", "1.5", "--confirmations", "10")
    assert code == 0
    assert stub.requests[0][:2] == ("POST", "/v1/escrows")
    assert stub.bodies[0] == {
        "escrow_id": "order-42",
        "amount": 1_500_000_000_000,
        "required_confirmations": 10,
    }
    assert "1.500000000000 XMR" in out
    with pytest.raises(SystemExit) as exit_:
        ctl.main(["escrow", "create", "order-42", "0.0000000000001"])
    assert exit_.value.code == 2
    assert "12 decimals" in capsys.readouterr().err
    assert len(stub.requests) == 2  # the create and its show; the bad amount reached nobody


def test_escrow_release_balance_and_transfer(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    """escrow release posts the address; balance and transfer show XMR amounts for people and
    walletd's atomic units with --json."""
    address = "4" + "B" * 94
    assert run(capsys, "escrow", "release", "order-42", address)[0] == 0
    assert stub.requests[0][:2] == ("POST", "/v1/escrows/order-42/release")
    assert stub.bodies[0] == {"address": address}
    code, out, _ = run(capsys, "escrow", "balance", "order-42", "--refresh")
    assert code == 0
    assert "0.002000000000 XMR" in out
    assert stub.requests[-1] == ("GET", "/v1/escrows/order-42/balance", {"refresh": "true"})
    code, out, _ = run(capsys, "escrow", "transfer", "order-42", "ab" * 32)
    assert code == 0
    assert "1.500000000000 XMR" in out
    assert "35" in out
    code, out, _ = run(capsys, "escrow", "balance", "order-42", "--json")
    assert json.loads(out)["balance"] == 2_000_000_000


def test_print_completion_bash_knows_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """walletctl --print-completion bash prints a bash completion script that offers the
    commands and escrow actions, generated from the parser."""
    with pytest.raises(SystemExit) as exit_:
        ctl.main(["--print-completion", "bash"])
    assert exit_.value.code == 0
    script = capsys.readouterr().out
    assert "complete " in script
    for word in ("status", "events", "create", "release", "refund", "balance", "transfer"):
        assert word in script
