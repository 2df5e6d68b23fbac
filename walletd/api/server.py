"""The socket API's listeners: a small HTTP/1.1 server (h11) on walletd's Unix socket, or on TCP.

walletd serves its API on a local Unix socket. We do not use hypercorn: it cannot hand us the
peer's SO_PEERCRED, and we want every limit (head and body size, connections, slow clients,
handler time) bounded here rather than in someone else's defaults. This module accepts
connections: the peer's credentials and the allow-lists first, then the connection cap (a
capacity answer beyond it), and a graceful drain on shutdown; each connection is served by
`walletd.api.connection`. It only speaks HTTP; routing, unsupported methods and API errors
raised by handlers are the handler's business. Errors the server produces itself use the API
error format ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from pathlib import Path

import structlog
import trio

from walletd.api.connection import Connection, ServerLimits, error_response
from walletd.api.messages import TCP_PEER, Handler, PeerCred, Response
from walletd.api.socket_file import bind_unix, unlink_if_ours
from walletd.errors import Capacity, ClientGone, Forbidden

__all__ = ["serve_tcp", "serve_unix"]

log = structlog.get_logger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SHUTDOWN_GRACE = 5.0  # seconds in-flight requests may take to finish once we are cancelled
_REJECT_TIMEOUT = 2.0  # a capacity rejection may take at most this long
_DEFAULT_LIMITS = ServerLimits()  # frozen, so sharing one default is safe


async def serve_unix(
    path: Path,
    handler: Handler,
    *,
    mode: int = 0o660,
    limits: ServerLimits = _DEFAULT_LIMITS,
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
    limits: ServerLimits = _DEFAULT_LIMITS,
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
        self._connections: set[Connection] = set()
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
            except ClientGone:
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
                conn = Connection(self, stream, peer)
                self._connections.add(conn)
                nursery.start_soon(self._serve_connection, conn)
            elif self._rejecting < self.limits.max_connections:
                self._rejecting += 1
                nursery.start_soon(self._reject, stream, peer)
            else:
                # Even rejections are at capacity: drop it without an answer.
                await trio.aclose_forcefully(stream)

    async def _serve_connection(self, conn: Connection) -> None:
        # Shielded so that cancelling serve_unix does not cut requests in flight; drain() cancels
        # this scope itself once they are done or the grace period is over.
        with conn.scope:
            try:
                await conn.serve()
            except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
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
            await self._answer_and_close(
                stream, peer, error_response(Capacity("too many connections"))
            )
        finally:
            self._rejecting -= 1

    async def _refuse(self, stream: trio.SocketStream) -> None:
        try:
            log.debug("http peer refused")
            forbidden = error_response(Forbidden("this user may not use walletd"))
            await self._answer_and_close(stream, None, forbidden)
        finally:
            self._refusing -= 1

    async def _answer_and_close(
        self, stream: trio.SocketStream, peer: PeerCred | None, response: Response
    ) -> None:
        """Answer without reading the request, within `_REJECT_TIMEOUT`, then close."""
        conn = Connection(self, stream, peer)
        try:
            with trio.move_on_after(_REJECT_TIMEOUT):
                await conn.abort(response)
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
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


def _peer_cred(stream: trio.SocketStream) -> PeerCred:
    try:
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as exc:
        raise ClientGone(f"cannot read peer credentials: {exc.strerror}") from exc
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)
