"""Tests of the HTTP server (walletd.api.server, .connection, .request_parsing): HTTP/1.1 on h11
over a Unix socket, with every limit enforced."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import structlog
import trio

from walletd.api import connection as httpconnection
from walletd.api import server as httpserver
from walletd.api.connection import ServerLimits
from walletd.api.messages import Handler, PeerCred, Request, Response
from walletd.api.server import serve_unix
from walletd.ops import logs as walletd_logs

TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def fresh_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """capture_logs cannot see a logger cached by an earlier configure_logging(): use a new one."""
    for module in (httpserver, httpconnection):
        monkeypatch.setattr(module, "log", structlog.get_logger(module.__name__))


async def echo(request: Request) -> Response:
    return Response.json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": request.body.decode(errors="replace"),
            "peer": attrs.asdict(request.peer),
        },
    )


async def start(nursery: trio.Nursery, path: Path, handler: Handler = echo, **kwargs: Any) -> None:
    await nursery.start(partial(serve_unix, path, handler, **kwargs))


def client(path: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    return httpx.AsyncClient(transport=transport, base_url="http://walletd")


async def get_ok(path: Path) -> None:
    async with client(path) as c:
        r = await c.get("/ping")
    assert r.status_code == 200


@attrs.frozen
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """Speaks bytes to the server, to send what httpx never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, path: Path) -> RawClient:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def response(self, *, head_only: bool = False) -> RawResponse:
        while b"\r\n\r\n" not in self.buffer:
            assert await self._fill(), "connection closed before a response head"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert await self._fill(), "connection closed mid-body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return RawResponse(int(status_line.split()[1]), headers, body)

    async def closed(self) -> bool:
        """True once the server has closed its side (EOF or reset)."""
        try:
            return not await self._fill()
        except trio.BrokenResourceError:
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()


def error_of(r: RawResponse | httpx.Response) -> dict[str, str]:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return dict(body["error"])


GET = b"GET /ping HTTP/1.1\r\nHost: walletd\r\n\r\n"


async def test_get_and_post_round_trip(nursery: trio.Nursery, sock_path: Path) -> None:
    """A GET with a query and a POST with a body reach the handler parsed and come back."""
    await start(nursery, sock_path)
    with trio.fail_after(TIMEOUT):
        async with client(sock_path) as c:
            got = await c.get("/v1/escrows/a%20b", params={"state": "ready", "refresh": ""})
            posted = await c.post("/v1/escrows", json={"escrow_id": "x", "amount": 5})
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/json"
    g = got.json()
    assert (g["method"], g["path"]) == ("GET", "/v1/escrows/a b")
    assert g["query"] == {"state": "ready", "refresh": ""}
    assert g["headers"]["host"] == "walletd"
    assert g["peer"] == {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}
    p = posted.json()
    assert (p["method"], p["path"]) == ("POST", "/v1/escrows")
    assert json.loads(p["body"]) == {"escrow_id": "x", "amount": 5}


async def test_keep_alive_serves_several_requests(nursery: trio.Nursery, sock_path: Path) -> None:
    """One connection serves requests in turn, including two pipelined in one write."""
    await start(nursery, sock_path)
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        await raw.send(GET)
        first = await raw.response()
        await raw.send(GET + GET.replace(b"/ping", b"/pong"))
        second, third = await raw.response(), await raw.response()
        await raw.aclose()
    assert [r.status for r in (first, second, third)] == [200, 200, 200]
    assert third.json()["path"] == "/pong"
    assert "connection" not in first.headers


async def test_connection_close_is_honoured(nursery: trio.Nursery, sock_path: Path) -> None:
    """A client asking for Connection: close gets it in the answer and the server closes."""
    await start(nursery, sock_path)
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        await raw.send(b"GET / HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
        r = await raw.response()
        assert await raw.closed()
    assert r.status == 200
    assert r.headers["connection"] == "close"


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
async def test_socket_file_mode_is_exact(nursery: trio.Nursery, sock_path: Path, mode: int) -> None:
    """The socket file has exactly the mode asked for, whatever the umask."""
    await start(nursery, sock_path, mode=mode)
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == mode


async def test_stale_socket_is_replaced(nursery: trio.Nursery, sock_path: Path) -> None:
    """A socket file nobody listens on (a crashed walletd's) is replaced."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(sock_path))
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    await start(nursery, sock_path)
    with trio.fail_after(TIMEOUT):
        await get_ok(sock_path)


async def test_regular_file_is_refused(sock_path: Path) -> None:
    """A regular file at the socket path is neither removed nor replaced."""
    await trio.Path(sock_path).write_text("precious")
    with trio.fail_after(TIMEOUT), pytest.raises(FileExistsError, match="not a socket"):
        await serve_unix(sock_path, echo)
    assert await trio.Path(sock_path).read_text() == "precious"


async def test_live_socket_is_refused(nursery: trio.Nursery, sock_path: Path) -> None:
    """A socket another server listens on is left alone: two walletds never share wallets."""
    await start(nursery, sock_path)
    with trio.fail_after(TIMEOUT), pytest.raises(OSError, match="another server"):
        await serve_unix(sock_path, echo)
    with trio.fail_after(TIMEOUT):
        await get_ok(sock_path)


async def test_malformed_request_line_is_400(nursery: trio.Nursery, sock_path: Path) -> None:
    """Garbage instead of a request line gets 400 invalid_request as JSON, then a close."""
    await start(nursery, sock_path)
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        await raw.send(b"THIS IS NOT HTTP\r\n\r\n")
        r = await raw.response()
        assert await raw.closed()
    assert r.status == 400
    assert r.headers["connection"] == "close"
    assert r.headers["content-type"] == "application/json"
    assert error_of(r)["code"] == "invalid_request"


async def test_repeated_query_key_is_400(nursery: trio.Nursery, sock_path: Path) -> None:
    """A repeated query key is refused by the server itself; the connection stays usable."""
    called = False

    async def handler(request: Request) -> Response:
        nonlocal called
        called = True
        return Response.json(200, {})

    await start(nursery, sock_path, handler)
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        await raw.send(b"GET /v1/x?a=1&a=2 HTTP/1.1\r\nHost: w\r\n\r\n")
        bad = await raw.response()
        assert not called
        await raw.send(GET)
        good = await raw.response()
    assert bad.status == 400
    assert error_of(bad)["code"] == "invalid_request"
    assert good.status == 200


async def test_oversize_content_length_is_413_before_the_body(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    """A Content-Length over the limit is answered 413 without the client sending any body."""
    await start(nursery, sock_path, limits=ServerLimits(max_body_bytes=100))
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        await raw.send(b"POST /x HTTP/1.1\r\nHost: w\r\nContent-Length: 101\r\n\r\n")
        r = await raw.response()
    assert r.status == 413
    assert error_of(r)["code"] == "too_large"


async def test_oversize_chunked_body_is_413(nursery: trio.Nursery, sock_path: Path) -> None:
    """A chunked body that grows past the limit is cut off with 413."""
    await start(nursery, sock_path, limits=ServerLimits(max_body_bytes=100))
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        head = b"POST /x HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n"
        await raw.send(head + b"40\r\n" + b"a" * 64 + b"\r\n" + b"40\r\n" + b"b" * 64 + b"\r\n")
        r = await raw.response()
    assert r.status == 413
    assert error_of(r)["code"] == "too_large"


async def test_body_at_the_limit_is_accepted(nursery: trio.Nursery, sock_path: Path) -> None:
    """A body of exactly max_body_bytes is served."""
    await start(nursery, sock_path, limits=ServerLimits(max_body_bytes=100))
    with trio.fail_after(TIMEOUT):
        async with client(sock_path) as c:
            r = await c.post("/x", content=b"z" * 100)
    assert r.status_code == 200
    assert r.json()["body"] == "z" * 100


@pytest.mark.parametrize("complete", [True, False])
async def test_oversize_head_is_413(nursery: trio.Nursery, sock_path: Path, complete: bool) -> None:
    """A head over max_header_bytes gets 413 too_large, whether it ends or keeps coming."""
    await start(nursery, sock_path, limits=ServerLimits(max_header_bytes=1024))
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        head = b"GET /x HTTP/1.1\r\nHost: w\r\nX-Big: " + b"x" * 2000
        await raw.send(head + (b"\r\n\r\n" if complete else b""))
        r = await raw.response()
    assert r.status == 413
    assert error_of(r)["code"] == "too_large"


async def test_stalled_client_blocks_nobody_and_is_dropped(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    """Half a head neither holds up another client nor stays past header_timeout."""
    # header_timeout is long next to one request, so the check holds on a loaded machine too:
    # the other client is served while the stalled one is still being waited for.
    await start(nursery, sock_path, limits=ServerLimits(header_timeout=3.0))
    with trio.fail_after(TIMEOUT):
        stalled = await RawClient.connect(sock_path)
        await stalled.send(b"GET /slow HTTP/1.1\r\nHost: w\r\n")
        began = trio.current_time()
        await get_ok(sock_path)
        assert trio.current_time() - began < 3.0
        r = await stalled.response()
        assert await stalled.closed()
        waited = trio.current_time() - began
    assert 2.5 <= waited < 10.0
    assert r.status == 504
    assert error_of(r)["code"] == "timeout"


async def test_idle_connection_is_closed_after_keepalive_timeout(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    """A connection idle between requests is closed quietly after keepalive_timeout."""
    await start(nursery, sock_path, limits=ServerLimits(keepalive_timeout=0.3))
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        await raw.send(GET)
        assert (await raw.response()).status == 200
        began = trio.current_time()
        assert await raw.closed()
    assert raw.buffer == b""
    assert trio.current_time() - began < 3.0


async def test_connections_over_the_limit_get_503(nursery: trio.Nursery, sock_path: Path) -> None:
    """Beyond max_connections a connection gets 503 capacity at once, and others still work."""
    await start(nursery, sock_path, limits=ServerLimits(max_connections=2))
    with trio.fail_after(TIMEOUT):
        held = [await RawClient.connect(sock_path) for _ in range(2)]
        for raw in held:  # both accepted and served: they count against the limit
            await raw.send(GET)
            assert (await raw.response()).status == 200
        extra = await RawClient.connect(sock_path)
        r = await extra.response()
        assert await extra.closed()
        async with client(sock_path) as c:  # httpx sees the same answer
            refused = await c.get("/ping")
        await held[0].aclose()
        while True:  # the server notices the close on its own schedule
            try:
                await get_ok(sock_path)
                break
            except AssertionError:
                await trio.sleep(0.05)
    assert r.status == 503
    assert r.headers["connection"] == "close"
    assert r.json() == {"error": {"code": "capacity", "message": "too many connections"}}
    assert refused.status_code == 503


async def test_allowed_uid_is_served(nursery: trio.Nursery, sock_path: Path) -> None:
    """A peer whose uid is in allow_uids is served."""
    await start(nursery, sock_path, allow_uids=frozenset({os.getuid()}))
    with trio.fail_after(TIMEOUT):
        await get_ok(sock_path)


async def test_allowed_gid_is_served(nursery: trio.Nursery, sock_path: Path) -> None:
    """A peer whose gid is in allow_gids is served even if its uid is not listed."""
    others = frozenset({os.getuid() + 1})
    await start(nursery, sock_path, allow_uids=others, allow_gids=frozenset({os.getgid()}))
    with trio.fail_after(TIMEOUT):
        await get_ok(sock_path)


async def test_other_uid_is_forbidden(nursery: trio.Nursery, sock_path: Path) -> None:
    """A peer outside the allow-lists gets 403 forbidden (root too) and the handler never runs."""
    called = False

    async def handler(request: Request) -> Response:
        nonlocal called
        called = True
        return Response.json(200, {})

    others = frozenset({os.getuid() + 1})
    await start(nursery, sock_path, handler, allow_uids=others, allow_gids=frozenset())
    with trio.fail_after(TIMEOUT):
        async with client(sock_path) as c:
            r = await c.post("/v1/escrows", json={"secret": "x"})
    assert r.status_code == 403
    assert error_of(r)["code"] == "forbidden"
    assert not called


HOLD_CONNECTIONS = """
import os, socket, sys, time
os.setgroups([])
os.setgid(65534)
os.setuid(65534)  # nobody: a local user outside the allow-list
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
print("connected", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
async def test_refused_peers_take_no_connection_slot(nursery: trio.Nursery) -> None:
    """With max_connections=N, 2N connections held open by a uid outside the allow-list do not
    keep an allowed peer from being served: refused peers are closed at accept."""
    sock_dir = Path(tempfile.mkdtemp(prefix="wd-", dir="/tmp"))
    try:
        # nobody must reach the socket, as another local user of a real host could.
        os.chmod(sock_dir, 0o711)  # noqa: S103
        path = sock_dir / "w.sock"
        n = 2
        await start(
            nursery,
            path,
            mode=0o666,
            limits=ServerLimits(max_connections=n),
            allow_uids=frozenset({os.getuid()}),
            allow_gids=frozenset(),
        )
        holder = await trio.lowlevel.open_process(
            [sys.executable, "-c", HOLD_CONNECTIONS, str(path), str(2 * n)],
            stdout=subprocess.PIPE,
        )
        stdout = holder.stdout
        try:
            assert stdout is not None
            with trio.fail_after(TIMEOUT):
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await stdout.receive_some(100)
                    assert chunk, "the holder exited early"
                    line += chunk
            assert line == b"connected\n"
            await trio.sleep(0.3)  # the server has accepted them all
            # Well inside header_timeout, which is how long a refused peer held a slot before.
            with trio.fail_after(3):
                await get_ok(path)
        finally:
            holder.kill()
            with trio.CancelScope(shield=True):
                await holder.wait()
                if stdout is not None:
                    await stdout.aclose()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


async def test_handler_exception_is_500_and_logged(nursery: trio.Nursery, sock_path: Path) -> None:
    """A failing handler gets 500 internal, is logged without the body, and serving goes on."""

    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("kaboom")
        return Response.json(200, {})

    await start(nursery, sock_path, handler)
    with structlog.testing.capture_logs() as logs, trio.fail_after(TIMEOUT):
        async with client(sock_path) as c:
            r = await c.post("/boom", content=b'{"password": "hunter2"}')
            after = await c.get("/fine")
    assert r.status_code == 500
    assert r.json() == {
        "error": {"code": "internal", "message": "internal error; see walletd's log"}
    }
    assert after.status_code == 200
    failures = [e for e in logs if e["event"] == "http handler failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "error"
    assert failures[0]["path"] == "/boom"
    assert "hunter2" not in repr(logs)


async def test_slow_handler_is_504(nursery: trio.Nursery, sock_path: Path) -> None:
    """A handler slower than handler_timeout is cut off with 504 timeout."""

    async def handler(request: Request) -> Response:
        await trio.sleep(60)
        return Response.json(200, {})

    await start(nursery, sock_path, handler, limits=ServerLimits(handler_timeout=0.2))
    with trio.fail_after(TIMEOUT):
        async with client(sock_path) as c:
            r = await c.get("/slow")
    assert r.status_code == 504
    assert error_of(r)["code"] == "timeout"


async def test_bad_handler_response_is_500(nursery: trio.Nursery, sock_path: Path) -> None:
    """A response h11 cannot send (bad status, header injection) becomes 500 internal."""

    async def handler(request: Request) -> Response:
        if request.path == "/status":
            return Response(99, b"")
        return Response(200, b"x", content_type="text/plain\r\nX-Evil: 1")

    await start(nursery, sock_path, handler)
    with trio.fail_after(TIMEOUT):
        async with client(sock_path) as c:
            status = await c.get("/status")
            header = await c.get("/header")
    assert error_of(status)["code"] == "internal"
    assert error_of(header)["code"] == "internal"
    assert "x-evil" not in header.headers


async def test_head_request_has_no_body(nursery: trio.Nursery, sock_path: Path) -> None:
    """HEAD gets the head of the handler's answer and no body; the connection stays in sync."""
    await start(nursery, sock_path)
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        await raw.send(b"HEAD /x HTTP/1.1\r\nHost: w\r\n\r\n" + GET)
        head = await raw.response(head_only=True)
        after = await raw.response()
    assert head.status == 200
    assert int(head.headers["content-length"]) > 0
    assert head.body == b""
    assert after.json()["path"] == "/ping"


@pytest.mark.parametrize(
    "partial_request",
    [
        b"POST /x HTTP/1.1\r\nHost: w\r\nContent-Length: 100\r\n\r\n" + b"a" * 10,
        b"POST /x HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"GET /x HTTP/1.1\r\nHo",
    ],
)
async def test_client_vanishing_mid_request_is_harmless(
    nursery: trio.Nursery, sock_path: Path, partial_request: bytes
) -> None:
    """A client that half-closes or disconnects mid-request leaves no error log and no damage."""
    await start(nursery, sock_path)
    with structlog.testing.capture_logs() as logs, trio.fail_after(TIMEOUT):
        half = await RawClient.connect(sock_path)
        await half.send(partial_request)
        await half.stream.send_eof()
        assert await half.closed()
        gone = await RawClient.connect(sock_path)
        await gone.send(partial_request)
        await gone.aclose()
        await get_ok(sock_path)
    assert half.buffer == b""
    assert not [e for e in logs if e["log_level"] in ("error", "critical", "exception")]


async def test_client_vanishing_during_handler_is_harmless(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    """A client that leaves while its handler runs costs only a debug line."""
    entered = trio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await trio.sleep(0.2)
        return Response.json(200, {"big": "x" * 200_000})

    await start(nursery, sock_path, handler)
    with structlog.testing.capture_logs() as logs, trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(sock_path)
        await raw.send(GET)
        await entered.wait()
        await raw.aclose()
        await trio.sleep(0.4)
        await get_ok(sock_path)
    assert not [e for e in logs if e["log_level"] in ("error", "critical", "exception")]


async def test_survives_random_bytes(nursery: trio.Nursery, sock_path: Path) -> None:
    """Random and mangled requests never break the server: a good request works after each."""
    await start(nursery, sock_path, limits=ServerLimits(header_timeout=0.3))
    rng = random.Random(1234)
    valid = b"POST /v1/e?x=1 HTTP/1.1\r\nHost: w\r\nContent-Length: 4\r\n\r\nbody"
    blobs = [rng.randbytes(rng.randint(1, 300)) for _ in range(15)]
    for _ in range(25):
        mangled = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        blobs.append(bytes(mangled))
    blobs += [b"\r\n" * 50, b"GET / HTTP/1.1\r\nHost: w\r\nContent-Length: -1\r\n\r\n"]
    with structlog.testing.capture_logs() as logs, trio.fail_after(60):
        for blob in blobs:
            raw = await RawClient.connect(sock_path)
            await raw.send(blob)
            with trio.move_on_after(0.05):
                await raw.closed()
            await raw.aclose()
        raw = await RawClient.connect(sock_path)
        await raw.send(GET)
        assert (await raw.response()).status == 200
    assert not [e for e in logs if e["log_level"] in ("error", "critical", "exception")]


async def test_cancellation_finishes_in_flight_and_removes_socket(sock_path: Path) -> None:
    """Cancelling serve_unix lets a request in flight finish, then removes the socket file."""
    entered = trio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await trio.sleep(0.3)
        return Response.json(200, {"done": True})

    results: list[httpx.Response] = []

    async def call() -> None:
        async with client(sock_path) as c:
            results.append(await c.get("/slow"))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as clients:
            async with trio.open_nursery() as servers:
                await start(servers, sock_path, handler)
                idle = await RawClient.connect(sock_path)
                clients.start_soon(call)
                await entered.wait()
                servers.cancel_scope.cancel()
            assert await idle.closed()
    assert not await trio.Path(sock_path).exists()
    assert [r.status_code for r in results] == [200]
    assert results[0].headers["connection"] == "close"


async def test_cancellation_bounds_the_grace(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request in flight that outlasts the shutdown grace is cut off."""
    monkeypatch.setattr(httpserver, "_SHUTDOWN_GRACE", 0.2)
    entered = trio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await trio.sleep(60)
        return Response.json(200, {})

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await start(nursery, sock_path, handler)
            raw = await RawClient.connect(sock_path)
            await raw.send(GET)
            await entered.wait()
            nursery.cancel_scope.cancel()
        assert await raw.closed()
    assert not await trio.Path(sock_path).exists()


def test_request_repr_hides_body_and_headers() -> None:
    """A logged Request never shows its body or headers (wallet passwords)."""
    request = Request(
        method="POST",
        path="/v1/escrows",
        query={},
        headers={"authorization": "Bearer s3cret"},
        body=b'{"password": "hunter2"}',
        peer=PeerCred(pid=1, uid=2, gid=3),
    )
    assert "hunter2" not in repr(request)
    assert "s3cret" not in repr(request)


def test_response_json_is_compact_utf8() -> None:
    """Response.json writes compact UTF-8 JSON."""
    r = Response.json(201, {"a": [1, 2], "é": "ü"})
    assert r.body == '{"a":[1,2],"é":"ü"}'.encode()
    assert (r.status, r.content_type) == (201, "application/json")


async def test_access_log_names_the_peer_of_every_state_changing_call(
    nursery: trio.Nursery, sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call that may move money or change state (POST, DELETE, any method but GET, HEAD
    and OPTIONS) is logged at info with the peer's uid and pid from SO_PEERCRED, whatever its
    answer; reads stay at debug (logged with log.level = "debug"). Neither line carries the
    body (it may hold a password)."""

    async def handler(request: Request) -> Response:
        return Response.json(404 if request.path == "/missing" else 200, {})

    monkeypatch.setattr(walletd_logs, "_threshold", walletd_logs._threshold)  # restored after
    walletd_logs.set_level("debug")
    await start(nursery, sock_path, handler)
    with structlog.testing.capture_logs() as logs, trio.fail_after(TIMEOUT):
        async with client(sock_path) as c:
            await c.post("/v1/escrows/e1/release", content=b'{"password": "hunter2"}')
            await c.delete("/v1/escrows/e1/session")
            await c.post("/missing", content=b"{}")
            await c.get("/v1/escrows/e1")
            await c.head("/v1/escrows/e1")
    requests = [e for e in logs if e["event"] == "http request"]
    assert [(e["method"], e["path"], e["status"], e["log_level"]) for e in requests] == [
        ("POST", "/v1/escrows/e1/release", 200, "info"),
        ("DELETE", "/v1/escrows/e1/session", 200, "info"),
        ("POST", "/missing", 404, "info"),
        ("GET", "/v1/escrows/e1", 200, "debug"),
        ("HEAD", "/v1/escrows/e1", 200, "debug"),
    ]
    for entry in requests:  # the client is this very process
        assert (entry["peer_uid"], entry["peer_pid"]) == (os.getuid(), os.getpid())
    assert "hunter2" not in repr(logs)


async def test_reads_build_no_access_log_event_below_debug(
    nursery: trio.Nursery, sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At log.level = "info" a read (GET, HEAD) makes no access log event at all, not even one
    dropped later by the level filter: nothing is built for the reads that are most of the
    traffic. A state-changing call is still logged."""

    async def handler(_: Request) -> Response:
        return Response.json(200, {})

    monkeypatch.setattr(walletd_logs, "_threshold", walletd_logs._threshold)  # restored after
    walletd_logs.set_level("info")
    await start(nursery, sock_path, handler)
    with structlog.testing.capture_logs() as logs, trio.fail_after(TIMEOUT):
        async with client(sock_path) as c:
            await c.get("/v1/escrows/e1")
            await c.head("/v1/escrows/e1")
            await c.delete("/v1/escrows/e1/session")
    requests = [(e["method"], e["log_level"]) for e in logs if e["event"] == "http request"]
    assert requests == [("DELETE", "info")]
