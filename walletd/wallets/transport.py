"""A lean HTTP/1.1 keep-alive transport for walletd's JSON-RPC calls to loopback http:// servers.

httpx's default transport goes through httpcore's general-purpose connection pool, whose
bookkeeping (pool requests, locks, traces, a stream wrapper per layer, a dozen context managers)
was over half of a warm wallet-rpc call's CPU in walletd (profiled). walletd only ever talks plain
HTTP/1.1 to loopback servers, so this transport does just that: idle keep-alive connections are
reused (after the same checks httpcore makes: not expired, not readable, i.e. not closed by the
server), each request is written in one send (head and body together), and the answer is read
whole. The `httpx.AsyncClient` on top is unchanged: digest auth, per-operation timeouts from
`request.extensions["timeout"]` (connect, write, read), and failures raise the same httpx
exception classes as the default transport, so `walletd.wallets.rpc` maps them to the same errors.
"""

from __future__ import annotations

import math

import h11
import httpx
import trio

__all__ = ["LoopbackTransport"]

_READ_BYTES = 65_536
_MAX_EVENT_BYTES = 100 * 1024  # httpcore's bound on a response head
_MAX_IDLE = 20  # httpx's default max_keepalive_connections
_KEEPALIVE_EXPIRY = 5.0  # httpx's default keepalive_expiry, seconds


class _Connection:
    __slots__ = ("h11", "idle_until", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_EVENT_BYTES)
        self.idle_until = 0.0

    def close(self) -> None:
        self.stream.socket.close()


def _seconds(timeouts: dict[str, float | None], name: str) -> float:
    value = timeouts.get(name)
    return math.inf if value is None else value


class LoopbackTransport(httpx.AsyncBaseTransport):
    """Plain http:// only; concurrent requests each get a connection of their own."""

    def __init__(self) -> None:
        self._idle: list[_Connection] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"walletd's RPC transport speaks http:// only: {url}")
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        conn = self._take_idle()
        if conn is None:
            conn = await self._connect(request, _seconds(timeouts, "connect"))
        try:
            head, content = await self._exchange(conn, request, body, timeouts)
        except BaseException:
            conn.close()
            raise
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            conn.idle_until = trio.current_time() + _KEEPALIVE_EXPIRY
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            content=content,
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection the server has not closed, if any."""
        now = trio.current_time()
        while self._idle:
            conn = self._idle.pop()
            # Readable while idle: the server closed it (or sent something unasked): drop it.
            if conn.idle_until > now and not conn.stream.socket.is_readable():
                return conn
            conn.close()
        return None

    async def _connect(self, request: httpx.Request, timeout: float) -> _Connection:
        url = request.url
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(url.host, url.port or 80)
        except trio.TooSlowError:
            raise httpx.ConnectTimeout("connect timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        return _Connection(stream)

    async def _exchange(
        self,
        conn: _Connection,
        request: httpx.Request,
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> tuple[h11.Response, bytes]:
        state = conn.h11
        try:
            out = state.send(
                h11.Request(
                    method=request.method, target=request.url.raw_path, headers=request.headers.raw
                )
            )
            if body:
                out += state.send(h11.Data(data=body))
            out += state.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        read_timeout = _seconds(timeouts, "read")
        head: h11.Response | None = None
        chunks: list[bytes] = []
        reading = False
        # One cancel scope for the whole exchange, its deadline moved before each operation:
        # the same per-operation timeouts as httpcore's, at a fraction of the cost of a scope each.
        with trio.CancelScope(deadline=trio.current_time() + _seconds(timeouts, "write")) as scope:
            try:
                await conn.stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # As httpcore: a server may answer (an error) and close before reading it all.
                pass
            reading = True
            while True:
                try:
                    event = state.next_event()
                except h11.RemoteProtocolError as exc:
                    raise httpx.RemoteProtocolError(str(exc), request=request) from exc
                if event is h11.NEED_DATA:
                    scope.deadline = trio.current_time() + read_timeout
                    try:
                        data = await conn.stream.receive_some(_READ_BYTES)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise httpx.ReadError(str(exc), request=request) from exc
                    if not data and state.their_state is h11.SEND_RESPONSE:
                        raise httpx.RemoteProtocolError(
                            "Server disconnected without sending a response.", request=request
                        )
                    state.receive_data(data)
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return head, b"".join(chunks)
                elif not isinstance(event, h11.InformationalResponse):  # 1xx: wait for the answer
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response.", request=request
                    )
        # Only a deadline of our scope gets here (any other cancellation propagates).
        assert scope.cancelled_caught
        if reading:
            raise httpx.ReadTimeout("read timed out", request=request)
        raise httpx.WriteTimeout("write timed out", request=request)
