"""One client connection: HTTP/1.1 on h11, requests read one at a time and answered in turn.

Every per-request bound is kept here: the head's size, the body's size (announced or not), the
time to receive head and body (a slowloris bound, also for a fresh connection that sends
nothing), the idle time between requests, the handler's time, and the time a client may take to
read its answer. A request that breaks one is answered with the API's error format and the
connection closed after a short linger, so that the client can read why. The access log line
of each request is written here: state-changing calls at info with the peer, reads at debug.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Protocol

import attrs
import h11
import structlog
import trio

from walletd.api.errors import error_answer
from walletd.api.messages import Handler, PeerCred, Request, Response
from walletd.api.request_parsing import build_request, content_length, head_size
from walletd.errors import ClientGone, Internal, InvalidRequest, PublicError, Timeout, TooLarge
from walletd.ops import logs

__all__ = ["Connection", "ServerLimits", "error_response"]

log = structlog.get_logger(__name__)

_RECV_CHUNK = 65_536
_LINGER_SECONDS = 1.0  # after an error answer, drain the client a little so it reads the answer
_LINGER_BYTES = 1_048_576
_INTERNAL_MESSAGE = "internal error; see walletd's log"
# Requests that may move money or change state: logged at info with the peer (the access log).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@attrs.frozen
class ServerLimits:
    """Every bound the server enforces; times in seconds."""

    max_body_bytes: int = 1_048_576
    max_header_bytes: int = 16_384
    max_connections: int = 64
    header_timeout: float = 10.0  # to receive the request head + body (slowloris bound)
    handler_timeout: float = 90.0  # long polls take up to 60 s
    keepalive_timeout: float = 30.0  # idle time between requests on one connection
    send_timeout: float = 30.0  # to hand a response to a client that does not read


def error_response(error: PublicError) -> Response:
    """The API's error answer for an error the server raises itself."""
    status, body, _ = error_answer(error)
    return Response.json(status, body)


class _Abort(Exception):
    """Answer with this response, then close: the connection can no longer be trusted in sync."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@attrs.frozen
class _Incoming:
    head: h11.Request
    body: bytes = attrs.field(repr=False)


class Server(Protocol):
    """What a connection needs of the server that accepted it."""

    @property
    def handler(self) -> Handler: ...

    @property
    def limits(self) -> ServerLimits: ...

    @property
    def credentials(self) -> bool:
        """Whether peers are Unix-socket peers (SO_PEERCRED), else TCP ones."""
        ...

    @property
    def closing(self) -> bool:
        """The server is shutting down: answer the request in hand, then close."""
        ...


class Connection:
    """One client connection: reads requests one at a time and answers each in turn."""

    def __init__(self, server: Server, stream: trio.SocketStream, peer: PeerCred | None) -> None:
        self._server = server
        self._peer = peer  # None only for a refused peer, which is never served
        self._who = _who(peer) if server.credentials else _address_of(stream)
        self._limits = server.limits
        self.stream = stream
        self.scope = trio.CancelScope(shield=True)
        self.idle = True  # waiting for the first byte of a request: safe to close at shutdown
        self._fresh = True
        self._eof = False
        self._timer = trio.CancelScope()
        self._method: str | None = None
        self._h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=server.limits.max_header_bytes
        )

    async def serve(self) -> None:
        peer = self._peer
        assert peer is not None, "refused peers are answered by the server, never served"
        while not self._server.closing:
            try:
                incoming = await self._read_request()
            except _Abort as exc:
                await self.abort(exc.response)
                return
            if incoming is None:
                return
            if not await self._respond(incoming, peer):
                return
            self._h11.start_next_cycle()

    # -- reading ---------------------------------------------------------------------------

    async def _read_request(self) -> _Incoming | None:
        """The next request, or None when the client closed or stayed idle too long."""
        buffered = bool(self._h11.trailing_data[0])  # a pipelined request already arrived
        self.idle = not buffered
        # A fresh connection that sends nothing is a slowloris too: give it header_timeout.
        patience = self._limits.keepalive_timeout
        if buffered or self._fresh:
            patience = self._limits.header_timeout
        self._fresh = False
        with trio.move_on_after(patience) as self._timer:
            return await self._read_message()
        if self.idle:
            return None
        raise _Abort(error_response(Timeout(self._timeout_message())))

    def _timeout_message(self) -> str:
        return f"request not received within {self._limits.header_timeout:g} s"

    async def _read_message(self) -> _Incoming | None:
        self._method = None  # this request's, not the previous one's on a kept-alive connection
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):  # h11 yields nothing else in this state
            raise _Abort(error_response(InvalidRequest("malformed HTTP request")))
        # Remembered for an abort's answer: a refused HEAD must still get a body-less answer.
        self._method = event.method.decode("ascii")
        self._check_head(event)
        if self._h11.they_are_waiting_for_100_continue:
            informational = h11.InformationalResponse(status_code=100, headers=[])
            await self._send_all(self._h11.send(informational) or b"")
        return _Incoming(event, await self._read_body())

    def _check_head(self, head: h11.Request) -> None:
        limits = self._limits
        if head_size(head) > limits.max_header_bytes:
            raise _Abort(self._head_too_large())
        names = {name for name, _ in head.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            # h11 lets Transfer-Encoding win, as RFC 9112 6.3 allows; but the two framings
            # disagreeing is the stuff of request smuggling, so refuse and close (RFC 9112 6.1).
            raise _Abort(
                error_response(
                    InvalidRequest("request has both Content-Length and Transfer-Encoding")
                )
            )
        length = content_length(head)
        if length is not None and length > limits.max_body_bytes:
            # Answered before reading the body: no reason to receive what we will refuse.
            raise _Abort(self._body_too_large())

    async def _read_body(self) -> bytes:
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._limits.max_body_bytes:  # chunked: no length announced
                    raise _Abort(self._body_too_large())
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise _Abort(error_response(InvalidRequest("malformed HTTP request body")))

    async def _next_event(self) -> h11.Event:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._protocolerror_response(exc) from None
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # only happens if we read before answering: a bug here
                raise RuntimeError("h11 paused while reading a request")
            await self._receive()

    async def _receive(self) -> None:
        data = await self.stream.receive_some(_RECV_CHUNK)
        if not data:
            self._eof = True
        elif self.idle:
            # The request has begun: from now on head and body must arrive in header_timeout.
            self.idle = False
            self._timer.deadline = trio.current_time() + self._limits.header_timeout
        self._h11.receive_data(data)

    def _protocolerror_response(self, exc: h11.RemoteProtocolError) -> Exception:
        if self._eof:
            return ClientGone("client closed the connection mid-request")
        if exc.error_status_hint == 431:
            return _Abort(self._head_too_large())
        # h11's reason may quote header lines (secrets): neither logged nor echoed.
        return _Abort(error_response(InvalidRequest("malformed HTTP request")))

    def _head_too_large(self) -> Response:
        return error_response(
            TooLarge(f"request head exceeds {self._limits.max_header_bytes} bytes")
        )

    def _body_too_large(self) -> Response:
        return error_response(TooLarge(f"request body exceeds {self._limits.max_body_bytes} bytes"))

    # -- answering -------------------------------------------------------------------------

    async def _respond(self, incoming: _Incoming, peer: PeerCred) -> bool:
        """Answer one request; True if the connection can serve another."""
        started = trio.current_time()
        method = incoming.head.method.decode("ascii")
        try:
            request = build_request(incoming.head, incoming.body, peer)
        except InvalidRequest as exc:  # a target that cannot be parsed
            path = None
            response = error_response(exc)
        else:
            path = request.path
            response = await self._call_handler(request)
        keep_alive = await self._send_response(response, method=method)
        # The access log: every call that may move money or change state, with who made it;
        # reads at debug. Built only if it will be written: most requests are reads, and a
        # dropped event still costs its kwargs and the bound logger's call (~7 us measured).
        level = logging.DEBUG if method in _SAFE_METHODS else logging.INFO
        if logs.enabled(level):
            log.log(
                level,
                "http request",
                method=method,
                path=path,
                status=response.status,
                duration_ms=round((trio.current_time() - started) * 1000, 1),
                **self._who,
            )
        return keep_alive

    async def _call_handler(self, request: Request) -> Response:
        with trio.move_on_after(self._limits.handler_timeout):
            try:
                return await self._server.handler(request)
            except Exception:
                # Never log the request itself: its body may hold wallet passwords.
                log.exception("http handler failed", method=request.method, path=request.path)
                return error_response(Internal(_INTERNAL_MESSAGE))
        log.warning("http handler timed out", method=request.method, path=request.path)
        return error_response(Timeout(f"no answer within {self._limits.handler_timeout:g} s"))

    async def abort(self, response: Response) -> None:
        """Send an error answer, then close after a short linger so the client can read it."""
        log.debug("http request rejected", status=response.status)
        await self._send_response(response, method=self._method, close=True)
        with trio.move_on_after(_LINGER_SECONDS):
            # Closing with unread input resets the peer, which may then miss our answer.
            await self.stream.send_eof()
            drained = 0
            while drained < _LINGER_BYTES:
                data = await self.stream.receive_some(_RECV_CHUNK)
                if not data:
                    break
                drained += len(data)

    async def _send_response(
        self, response: Response, *, method: str | None, close: bool = False
    ) -> bool:
        close = close or self._server.closing
        head, body = _h11_response(response, close=close, method=method)
        out = bytearray(self._h11.send(head) or b"")
        if body:
            out += self._h11.send(h11.Data(data=body)) or b""
        out += self._h11.send(h11.EndOfMessage()) or b""
        await self._send_all(bytes(out))
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def _send_all(self, data: bytes) -> None:
        with trio.move_on_after(self._limits.send_timeout):
            await self.stream.send_all(data)
            return
        raise ClientGone("client did not read the response in time")


def _who(peer: PeerCred | None) -> dict[str, int]:
    """The access log's fields for a Unix-socket peer: its uid and pid (SO_PEERCRED)."""
    return {} if peer is None else {"peer_uid": peer.uid, "peer_pid": peer.pid}


def _address_of(stream: trio.SocketStream) -> dict[str, str]:
    """The access log's field for a TCP peer: its address."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return {}
    return {"peer": f"{host}:{port}"}


def _h11_response(
    response: Response, *, close: bool, method: str | None
) -> tuple[h11.Response, bytes]:
    """The h11 head and the body to send; an unusable handler response becomes a 500."""
    no_body = response.status in (204, 304) or method == "HEAD"
    headers = [("content-type", response.content_type)]
    if response.status not in (204, 304):
        # Also on a HEAD answer: the length the GET answer's body has (RFC 9110 9.3.2).
        headers.append(("content-length", str(len(response.body))))
    headers += [
        (name, value)
        for name, value in response.headers
        if name not in ("content-type", "content-length", "connection", "transfer-encoding")
    ]
    if close:
        headers.append(("connection", "close"))
    try:
        if not 200 <= response.status <= 599:
            raise h11.LocalProtocolError(f"status {response.status} out of range")
        head = h11.Response(
            status_code=response.status, headers=headers, reason=_reason(response.status)
        )
    except h11.LocalProtocolError as exc:
        log.error("http bad response", status=response.status, reason=str(exc))
        return _h11_response(
            error_response(Internal(_INTERNAL_MESSAGE)), close=close, method=method
        )
    return head, b"" if no_body else response.body


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:  # a status with no registered phrase: the phrase is optional anyway
        return b""
