"""The API edges added in api.md's "Since v1.1", through a RUNNING walletd's real Unix socket.

walletd runs in-process (`App.run`, fake wallet-rpc processes, the monitor off so nothing changes
behind the test's back), bound to a socket in a private /tmp directory. Requests go through that
socket with curl (what an operator types) or, for what curl will not send, as raw bytes.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import h11
import pytest
import trio

from tests.fakes import FakeDaemon, call, fake_app, make_fake_multisig, sqlite, start
from walletd.app import App
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
TXID = "ab" * 32

# Every GET path of api.md (v1 and v1.1 as far as this walletd serves them), one concrete each.
GET_PATHS = (
    "/v1/escrows",
    "/v1/escrows?state=ready",
    "/v1/escrows/good",
    "/v1/escrows/good/balance",
    f"/v1/escrows/good/transfers/{TXID}",
    "/v1/sessions",
    "/v1/stats",
    "/v1/health",
    "/v1/events?after=0",
    "/metrics",
)


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@pytest.fixture
async def walletd() -> AsyncIterator[App]:
    """walletd's App.run on fake wallet-rpc processes, one adopted escrow "good"."""
    root = Path(tempfile.mkdtemp(prefix="wdedge-", dir="/tmp"))  # short: AF_UNIX path limit
    try:
        world = FakeWalletWorld()
        good = await make_fake_multisig(world, "good")
        app = fake_app(root, world, FakePool(world), chain=FakeDaemon(world))
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            status, body = await call(app, "POST", "/v1/escrows", good.adopt_body("good"))
            assert status == 201, body
            yield app
            app.request_stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _sock(app: App) -> str:
    return str(app.config.daemon.socket_path)


def _parse(raw: bytes) -> Answer:
    """curl -i output (one response; 100 Continue skipped)."""
    while True:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        if status != 100:
            break
        raw = rest
    headers = {}
    for line in lines:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, rest)


async def curl(app: App, *args: str) -> Answer:
    assert CURL is not None
    done = await trio.run_process(
        [CURL, "-sS", "-i", "--max-time", "10", "--unix-socket", _sock(app), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return _parse(done.stdout)


async def raw_exchange(app: App, data: bytes) -> tuple[bytes, bool]:
    """Send `data`, read until the server closes (or 5 s pass): what came back, and whether
    the server closed the connection."""

    def run() -> tuple[bytes, bool]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(_sock(app))
            s.sendall(data)
            got = b""
            try:
                while chunk := s.recv(65_536):
                    got += chunk
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                pass
            return got, True

    return await trio.to_thread.run_sync(run)


def _error_code(answer: Answer) -> str:
    body = json.loads(answer.body)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    code: str = body["error"]["code"]
    return code


# ---- HEAD and 405 ------------------------------------------------------------------------------


@needs_curl
async def test_head_answers_every_get_path_like_get_without_a_body(walletd: App) -> None:
    """HEAD on every GET path gets GET's status, content type and Content-Length, and no body."""
    for path in GET_PATHS:
        url = f"http://walletd{path}"
        got = await curl(walletd, url)
        head = await curl(walletd, "-I", url)
        assert head.status == got.status, (path, head, got)
        assert head.body == b"", (path, head)
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert "content-length" in head.headers, (path, head)
    # Where the answer does not change between two calls, the length is GET's body's exactly.
    for path in ("/v1/escrows/nope", "/v1/events?after=0", f"/v1/escrows/good/transfers/{TXID}"):
        url = f"http://walletd{path}"
        got = await curl(walletd, url)
        head = await curl(walletd, "-I", url)
        assert int(head.headers["content-length"]) == len(got.body) > 0, (path, head, got)


@needs_curl
async def test_head_on_an_unknown_path_is_404(walletd: App) -> None:
    """HEAD on a path walletd does not serve is 404 like GET: no Allow, no body."""
    head = await curl(walletd, "-I", "http://walletd/v2/anything")
    assert head.status == 404
    assert head.body == b""
    assert "allow" not in head.headers


@needs_curl
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/stats", "GET, HEAD"),
        ("POST", "/v1/health", "GET, HEAD"),
        ("PUT", "/v1/escrows", "GET, HEAD, POST"),
        ("PATCH", "/v1/escrows/good", "GET, HEAD"),
        ("GET", "/v1/escrows/good/release", "POST"),
        ("HEAD", "/v1/escrows/good/refund", "POST"),
        ("GET", "/v1/escrows/good/session", "DELETE, POST"),
        ("OPTIONS", "/metrics", "GET, HEAD"),
        ("FOO", "/v1/events", "GET, HEAD"),
    ],
)
async def test_wrong_method_on_a_known_path_is_405_with_allow(
    walletd: App, method: str, path: str, allow: str
) -> None:
    """A known path with a method it does not take is 405 method_not_allowed, with an Allow
    header listing the methods it takes (HEAD wherever GET is); the connection stays usable."""
    flag = ["-I"] if method == "HEAD" else ["-X", method]
    got = await curl(walletd, *flag, f"http://walletd{path}")
    assert got.status == 405, got
    assert got.headers["allow"] == allow, got
    assert "close" not in got.headers.get("connection", ""), got
    if method != "HEAD":
        assert _error_code(got) == "method_not_allowed"
        assert method in json.loads(got.body)["error"]["message"]


@needs_curl
async def test_wrong_method_on_an_unknown_path_stays_404(walletd: App) -> None:
    """An unknown path is 404 not_found whatever the method: 405 is only for known paths."""
    got = await curl(walletd, "-X", "DELETE", "http://walletd/v1/nothing/here")
    assert got.status == 404
    assert _error_code(got) == "not_found"
    assert "allow" not in got.headers


# ---- Content-Length with Transfer-Encoding -------------------------------------------------------


async def test_h11_alone_accepts_content_length_with_transfer_encoding() -> None:
    """h11 by itself takes a request with both framings (Transfer-Encoding wins): refusing it
    is walletd's own check, so this pins why that check exists."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(
        b"POST /v1/escrows HTTP/1.1\r\nHost: w\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)


@needs_curl
async def test_content_length_with_transfer_encoding_is_refused_by_curl(walletd: App) -> None:
    """curl sending both Content-Length and Transfer-Encoding gets 400 invalid_request and a
    connection: close."""
    got = await curl(
        walletd,
        "-H",
        "Content-Length: 5",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "{}",
        "http://walletd/v1/escrows",
    )
    assert got.status == 400, got
    assert _error_code(got) == "invalid_request"
    assert "Transfer-Encoding" in json.loads(got.body)["error"]["message"]
    assert got.headers.get("connection") == "close", got


async def test_content_length_with_transfer_encoding_is_refused_and_closed(walletd: App) -> None:
    """Both framings in one request (a smuggling attempt: the pipelined GET hides in the body
    one framing sees) get one 400 invalid_request, then the connection is closed: the request
    behind it is never answered."""
    smuggled = b"GET /v1/stats HTTP/1.1\r\nHost: w\r\n\r\n"
    data = (
        b"POST /v1/escrows HTTP/1.1\r\nHost: w\r\nContent-Length: %d\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(smuggled))
    ) + smuggled
    got, closed = await raw_exchange(walletd, data)
    assert closed, "the server kept the connection open"
    assert got.count(b"HTTP/1.1 ") == 1, got
    answer = _parse(got)
    assert answer.status == 400, answer
    assert answer.headers["connection"] == "close"
    assert _error_code(answer) == "invalid_request"
    # The daemon serves the next connection as usual.
    status, _ = await call(walletd, "GET", "/v1/health")
    assert status == 200


# ---- events cursor past the newest seq -----------------------------------------------------------


@needs_curl
async def test_events_after_past_the_newest_seq_is_400_naming_it(walletd: App) -> None:
    """GET /v1/events?after=N with N past the newest seq is 400 invalid_request at once (no long
    poll), the message naming the newest seq; N equal to the newest is an ordinary empty page."""
    newest = await walletd.events.last_seq()
    assert newest > 0  # the adoption's escrow_created at least
    ok = await curl(walletd, f"http://walletd/v1/events?after={newest}")
    assert ok.status == 200, ok
    assert json.loads(ok.body) == {"events": [], "next": newest}
    with trio.fail_after(5):  # a long poll would take the whole timeout
        got = await curl(walletd, f"http://walletd/v1/events?after={newest + 1}&timeout=30")
    assert got.status == 400, got
    assert _error_code(got) == "invalid_request"
    assert f"newest event seq {newest}" in json.loads(got.body)["error"]["message"]


async def test_events_cursor_check_survives_pruning_every_event(walletd: App) -> None:
    """With every event row gone (pruned), the newest seq is still the last one handed out:
    a client's cursor at it is valid (200, empty), one past it is 400 naming it."""
    for _ in range(3):
        await walletd.events.emit("funded", "good")
    newest = await walletd.events.last_seq()
    sqlite(walletd)._db.execute("DELETE FROM events")  # what max(seq) would see as "no events"
    status, body = await call(walletd, "GET", f"/v1/events?after={newest}")
    assert (status, body) == (200, {"events": [], "next": newest})
    status, body = await call(walletd, "GET", f"/v1/events?after={newest + 1}")
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert f"newest event seq {newest}" in body["error"]["message"]


async def test_cluster_on_one_host_lists_this_host_and_no_leases(tmp_path: Path) -> None:
    """GET /v1/cluster without [cluster]: this host (by its hostname) with its live session count
    and cap, and no leases (api.md since v1.1)."""
    async with trio.open_nursery() as nursery:
        world = FakeWalletWorld()
        multisig = await make_fake_multisig(world, "w0")
        app = fake_app(tmp_path, world, FakePool(world), max_active=4)
        await start(nursery, app)
        assert (await call(app, "POST", "/v1/escrows", multisig.adopt_body("e0")))[0] == 201
        status, body = await call(app, "GET", "/v1/cluster")
        assert status == 200, body
        assert body["leases"] == []
        (host,) = body["hosts"]
        assert host["host_id"] == socket.gethostname()
        assert (host["sessions"], host["max_sessions"]) == (1, 4)
        nursery.cancel_scope.cancel()
