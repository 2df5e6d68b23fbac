"""A small HTTP/1.1 server on h11 over a trio Unix-domain socket.

walletd serves its API on a local Unix socket. We do not use hypercorn: it cannot hand us the
peer's SO_PEERCRED, and we want every limit (head and body size, connections, slow clients,
handler time) bounded here rather than in someone else's defaults. This module only speaks HTTP;
routing, unsupported methods and API errors raised by handlers are the handler's business. Errors
the server produces itself use the API error format ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import h11
import structlog
import trio

from walletd.api.errors import error_answer
from walletd.api.socket_file import bind_unix, unlink_if_ours
from walletd.errors import (
    Capacity,
    Forbidden,
    Internal,
    InvalidRequest,
    PublicError,
    Timeout,
    TooLarge,
)
from walletd.ops import logs

__all__ = [
    "TCP_PEER",
    "Handler",
    "PeerCred",
    "Request",
    "Response",
    "ServerLimits",
    "serve_tcp",
    "serve_unix",
]

log = structlog.get_logger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_RECV_CHUNK = 65_536
_SHUTDOWN_GRACE = 5.0  # seconds in-flight requests may take to finish once we are cancelled
_LINGER_SECONDS = 1.0  # after an error answer, drain the client a little so it reads the answer
_LINGER_BYTES = 1_048_576
_REJECT_TIMEOUT = 2.0  # a capacity rejection may take at most this long
_MAX_QUERY_FIELDS = 100
_INTERNAL_MESSAGE = "internal error; see walletd's log"
# Requests that may move money or change state: logged at info with the peer (the access log).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@attrs.frozen
class PeerCred:
    """The connecting process as the kernel reports it (SO_PEERCRED, at connect time)."""

    pid: int
    uid: int
    gid: int


# What `Request.peer` holds for a TCP client (the metrics listener): TCP has no SO_PEERCRED.
TCP_PEER = PeerCred(pid=0, uid=-1, gid=-1)


@attrs.frozen
class Request:
    """One complete request. Body and headers stay out of repr: they may hold wallet passwords."""

    method: str
    path: str  # percent-decoded, without the query: for logs and messages, never for routing
    query: dict[str, str]
    headers: dict[str, str] = attrs.field(repr=False)  # lower-case names
    body: bytes = attrs.field(repr=False)
    peer: PeerCred
    # The path split at its literal `/` first, then each segment percent-decoded: an encoded
    # `%2F` stays inside its segment, so it can never add a segment and re-route the request
    # (`/v1/escrows/e1%2Fbalance` is one odd escrow id, not a balance read). Route on these.
    segments: tuple[str, ...] = attrs.field(
        default=attrs.Factory(lambda self: _split(self.path), takes_self=True)
    )


def _split(path: str) -> tuple[str, ...]:
    """The segments of a path given already decoded (in-process callers): split at `/`."""
    return tuple(path.split("/")[1:])


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    # Extra headers (lower-case names), e.g. `allow` on a 405; framing headers are the server's.
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls, status: int, obj: object, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        """Compact UTF-8 JSON; NaN and infinities are refused since they are not JSON."""
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return cls(status, text.encode(), headers=headers)


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


Handler = Callable[[Request], Awaitable[Response]]


def _error(error: PublicError) -> Response:
    status, body, _ = error_answer(error)
    return Response.json(status, body)


class _Abort(Exception):
    """Answer with this response, then close: the connection can no longer be trusted in sync."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _BadTarget(Exception):
    """The request target cannot be turned into a path and a query: 400, keep the connection."""


class _ClientGone(Exception):
    """The client closed, reset or stopped reading: nothing left to answer."""


@attrs.frozen
class _Incoming:
    head: h11.Request
    body: bytes = attrs.field(repr=False)


async def serve_unix(
    path: Path,
    handler: Handler,
    *,
    mode: int = 0o660,
    limits: ServerLimits = ServerLimits(),  # frozen, so sharing one default is safe
    allow_uids: frozenset[int] | None = None,
    allow_gids: frozenset[int] | None = None,
    inherited: socket.socket | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on a Unix socket at `path` until cancelled.

    `inherited` is a listening socket systemd passed (`socket_file.listened_socket`), already
    bound at `path`: it is served as it is, and its file is left to systemd at the end.

    If `allow_uids` or `allow_gids` is given, only peers whose uid is in `allow_uids` or whose
    primary gid is in `allow_gids` are served (uid 0 included: root is not implicitly allowed);
    others are refused at accept, before they count against `max_connections` (so a refused
    user cannot crowd out allowed ones by holding connections open), with a 403 forbidden
    answer while there is room for that (bounded like capacity rejections), else just closed.
    On cancellation, requests in flight get a few seconds to finish,
    then every connection is closed and the socket file removed.
    """
    identity: tuple[int, int] | None = None
    if inherited is not None:
        sock = trio.socket.from_stdlib_socket(inherited)  # listening since systemd bound it
    else:
        sock, identity = await bind_unix(path, mode)
    try:
        if identity is not None:
            sock.listen(max(socket.SOMAXCONN, limits.max_connections))
        listener = trio.SocketListener(sock)
        server = _Server(handler, limits, allow_uids, allow_gids)
        async with trio.open_nursery() as nursery:
            task_status.started()
            log.info(
                "http listening", path=str(path), mode=oct(mode), inherited=inherited is not None
            )
            try:
                await server.accept_loop(listener, nursery)
            finally:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
                    await server.drain(_SHUTDOWN_GRACE)
    finally:
        sock.close()
        if identity is not None:
            unlink_if_ours(path, identity)


async def serve_tcp(
    listeners: list[trio.SocketListener],
    handler: Handler,
    *,
    limits: ServerLimits = ServerLimits(),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on TCP listeners the caller bound (`trio.open_tcp_listeners`, so that a
    taken port is the caller's error to word) until cancelled, bounded like `serve_unix`; the
    listeners are closed at the end.

    For the metrics listener: the config allows loopback hosts only, and TCP carries no peer
    credentials, so every request's `peer` is `TCP_PEER` (the log names the peer's address)."""
    server = _Server(handler, limits, None, None, credentials=False)
    async with trio.open_nursery() as nursery:
        task_status.started()
        for listener in listeners:
            host, port = listener.socket.getsockname()[:2]
            log.info("http listening", address=f"{host}:{port}")
        try:
            async with trio.open_nursery() as loops:
                for listener in listeners:
                    loops.start_soon(server.accept_loop, listener, nursery)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()
                await server.drain(_SHUTDOWN_GRACE)


class _Server:
    """Accepts connections and keeps the set of them for capacity and graceful shutdown."""

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits,
        allow_uids: frozenset[int] | None,
        allow_gids: frozenset[int] | None,
        *,
        credentials: bool = True,
    ) -> None:
        self.handler = handler
        self.credentials = credentials  # read SO_PEERCRED (Unix socket); False for TCP
        self.limits = limits
        self._allow_uids = allow_uids
        self._allow_gids = allow_gids
        self.closing = False
        self._connections: set[_Connection] = set()
        self._rejecting = 0
        self._refusing = 0
        self._changed = trio.Event()

    def allows(self, peer: PeerCred) -> bool:
        if self._allow_uids is None and self._allow_gids is None:
            return True
        return peer.uid in (self._allow_uids or ()) or peer.gid in (self._allow_gids or ())

    async def accept_loop(
        self, listener: trio.abc.Listener[trio.SocketStream], nursery: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                # Out of descriptors or memory: pause instead of spinning; it is transient.
                log.warning("http accept failed", error=os.strerror(exc.errno))
                await trio.sleep(0.1)
                continue
            # Credentials first: a peer outside the allow-lists never takes a connection slot.
            try:
                peer = _peer_cred(stream) if self.credentials else TCP_PEER
            except _ClientGone:
                await trio.aclose_forcefully(stream)
                continue
            if not self.allows(peer):
                if self._refusing < self.limits.max_connections:
                    self._refusing += 1
                    nursery.start_soon(self._refuse, stream)
                else:
                    await trio.aclose_forcefully(stream)
            elif len(self._connections) < self.limits.max_connections:
                # Registered here, not in the task, so drain() sees it even before it runs.
                conn = _Connection(self, stream, peer)
                self._connections.add(conn)
                nursery.start_soon(self._serve_connection, conn)
            elif self._rejecting < self.limits.max_connections:
                self._rejecting += 1
                nursery.start_soon(self._reject, stream, peer)
            else:
                # Even rejections are at capacity: drop it without an answer.
                await trio.aclose_forcefully(stream)

    async def _serve_connection(self, conn: _Connection) -> None:
        # Shielded so that cancelling serve_unix does not cut requests in flight; drain() cancels
        # this scope itself once they are done or the grace period is over.
        with conn.scope:
            try:
                await conn.serve()
            except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("http client gone", reason=str(exc) or type(exc).__name__)
            except Exception:
                # A bug in walletd, not anything a client did: log it and keep serving others.
                log.exception("http connection failed")
            finally:
                self._connections.discard(conn)
                self._changed.set()
                await trio.aclose_forcefully(conn.stream)

    async def _reject(self, stream: trio.SocketStream, peer: PeerCred) -> None:
        try:
            await self._answer_and_close(stream, peer, _error(Capacity("too many connections")))
        finally:
            self._rejecting -= 1

    async def _refuse(self, stream: trio.SocketStream) -> None:
        try:
            log.debug("http peer refused")
            forbidden = _error(Forbidden("this user may not use walletd"))
            await self._answer_and_close(stream, None, forbidden)
        finally:
            self._refusing -= 1

    async def _answer_and_close(
        self, stream: trio.SocketStream, peer: PeerCred | None, response: Response
    ) -> None:
        """Answer without reading the request, within `_REJECT_TIMEOUT`, then close."""
        conn = _Connection(self, stream, peer)
        try:
            with trio.move_on_after(_REJECT_TIMEOUT):
                await conn.abort(response)
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("http client gone", reason=str(exc) or type(exc).__name__)
        finally:
            await trio.aclose_forcefully(stream)

    async def drain(self, grace: float) -> None:
        """Close idle connections now, give busy ones `grace` seconds, then close the rest."""
        self.closing = True
        for conn in list(self._connections):
            if conn.idle:
                conn.scope.cancel()
        with trio.move_on_after(grace):
            while self._connections:
                self._changed = trio.Event()
                await self._changed.wait()
        for conn in list(self._connections):
            conn.scope.cancel()

    async def call_handler(self, request: Request) -> Response:
        with trio.move_on_after(self.limits.handler_timeout):
            try:
                return await self.handler(request)
            except Exception:
                # Never log the request itself: its body may hold wallet passwords.
                log.exception("http handler failed", method=request.method, path=request.path)
                return _error(Internal(_INTERNAL_MESSAGE))
        log.warning("http handler timed out", method=request.method, path=request.path)
        return _error(Timeout(f"no answer within {self.limits.handler_timeout:g} s"))


class _Connection:
    """One client connection: reads requests one at a time and answers each in turn."""

    def __init__(self, server: _Server, stream: trio.SocketStream, peer: PeerCred | None) -> None:
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
        assert peer is not None, "refused peers are answered by _Server._refuse"
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
        raise _Abort(_error(Timeout(self._timeout_message())))

    def _timeout_message(self) -> str:
        return f"request not received within {self._limits.header_timeout:g} s"

    async def _read_message(self) -> _Incoming | None:
        self._method = None  # this request's, not the previous one's on a kept-alive connection
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):  # h11 yields nothing else in this state
            raise _Abort(_error(InvalidRequest("malformed HTTP request")))
        # Remembered for an abort's answer: a refused HEAD must still get a body-less answer.
        self._method = event.method.decode("ascii")
        self._check_head(event)
        if self._h11.they_are_waiting_for_100_continue:
            informational = h11.InformationalResponse(status_code=100, headers=[])
            await self._send_all(self._h11.send(informational) or b"")
        return _Incoming(event, await self._read_body())

    def _check_head(self, head: h11.Request) -> None:
        limits = self._limits
        if _head_size(head) > limits.max_header_bytes:
            raise _Abort(self._head_too_large())
        names = {name for name, _ in head.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            # h11 lets Transfer-Encoding win, as RFC 9112 6.3 allows; but the two framings
            # disagreeing is the stuff of request smuggling, so refuse and close (RFC 9112 6.1).
            raise _Abort(
                _error(InvalidRequest("request has both Content-Length and Transfer-Encoding"))
            )
        length = _content_length(head)
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
                raise _Abort(_error(InvalidRequest("malformed HTTP request body")))

    async def _next_event(self) -> h11.Event:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._protocol_error(exc) from None
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

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> Exception:
        if self._eof:
            return _ClientGone("client closed the connection mid-request")
        if exc.error_status_hint == 431:
            return _Abort(self._head_too_large())
        # h11's reason may quote header lines (secrets): neither logged nor echoed.
        return _Abort(_error(InvalidRequest("malformed HTTP request")))

    def _head_too_large(self) -> Response:
        return _error(TooLarge(f"request head exceeds {self._limits.max_header_bytes} bytes"))

    def _body_too_large(self) -> Response:
        return _error(TooLarge(f"request body exceeds {self._limits.max_body_bytes} bytes"))

    # -- answering -------------------------------------------------------------------------

    async def _respond(self, incoming: _Incoming, peer: PeerCred) -> bool:
        """Answer one request; True if the connection can serve another."""
        started = trio.current_time()
        method = incoming.head.method.decode("ascii")
        try:
            request = _build_request(incoming, peer)
        except _BadTarget as exc:
            path = None
            response = _error(InvalidRequest(str(exc)))
        else:
            path = request.path
            response = await self._server.call_handler(request)
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
        raise _ClientGone("client did not read the response in time")


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


def _peer_cred(stream: trio.SocketStream) -> PeerCred:
    try:
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as exc:
        raise _ClientGone(f"cannot read peer credentials: {exc.strerror}") from exc
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)


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
        return _h11_response(_error(Internal(_INTERNAL_MESSAGE)), close=close, method=method)
    return head, b"" if no_body else response.body


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:  # a status with no registered phrase: the phrase is optional anyway
        return b""


def _head_size(head: h11.Request) -> int:
    """Roughly the bytes of the head; h11 only bounds heads that arrive in several reads."""
    size = len(head.method) + len(head.target) + len(b" HTTP/1.1\r\n\r\n")
    return size + sum(len(name) + len(value) + 4 for name, value in head.headers)


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits and unambiguous
    return None


def _build_request(incoming: _Incoming, peer: PeerCred) -> Request:
    head = incoming.head
    segments, query = _parse_target(head.target)
    headers: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(
        method=head.method.decode("ascii"),
        path="/" + "/".join(segments),
        query=query,
        headers=headers,
        body=incoming.body,
        peer=peer,
        segments=segments,
    )


def _parse_target(target: bytes) -> tuple[tuple[str, ...], dict[str, str]]:
    """Split an origin-form (or absolute-form) target into decoded path segments and a query dict.

    The path is split at `/` before anything is decoded (see `Request.segments`)."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise _BadTarget("request target is not ASCII") from None
    if text.startswith(("http://", "https://")):
        try:
            parts = urlsplit(text)
        except ValueError:  # e.g. an unclosed IPv6 bracket in the host
            raise _BadTarget("request target is not a valid URL") from None
        raw_path, raw_query = parts.path or "/", parts.query
    elif text.startswith("/"):
        raw_path, _, raw_query = text.partition("?")
    else:
        raise _BadTarget("request target must be a path")
    try:
        segments = tuple(unquote(seg, errors="strict") for seg in raw_path.split("/")[1:])
    except UnicodeDecodeError:
        raise _BadTarget("path is not valid percent-encoded UTF-8") from None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for seg in segments for ch in seg):
        raise _BadTarget("path contains control characters")
    return segments, _parse_query(raw_query)


def _parse_query(raw_query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            raw_query, keep_blank_values=True, errors="strict", max_num_fields=_MAX_QUERY_FIELDS
        )
    except ValueError:  # bad UTF-8 or too many fields
        raise _BadTarget("invalid query string") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise _BadTarget(f"query parameter {key!r} is repeated")
        query[key] = value
    return query
