"""The API's socket file: bound with exactly its mode, never stolen, removed only if ours.

Kept apart from the HTTP server (`server`) because it is about the file system, not HTTP: a
stale socket (nobody listening) left by a crash is replaced at start-up, but a live one (another
walletd) or anything that is not a socket is refused; the mode is set before `listen()`, so there
is no window with wider access; and at exit the file is unlinked only if it is still the one we
bound (same st_dev, st_ino), never a successor's.

Under systemd socket activation (`walletd.socket`) the listening socket is inherited instead
(`listened_socket`): systemd owns the file, so walletd neither binds nor unlinks it, and clients
queue in its backlog while walletd restarts.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import trio

from walletd.errors import InheritedSocketError

__all__ = [
    "LISTEN_FDS_START",
    "bind_unix",
    "listened_socket",
    "unlink_if_ours",
]

_PROBE_TIMEOUT = 1.0  # to tell a live socket from a stale one at start-up
LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at fd 3


def listened_socket(path: Path, mode: int) -> socket.socket | None:
    """The listening socket systemd passed (sd_listen_fds semantics), or None if none was.

    LISTEN_PID must be our pid (else the variables were meant for a parent and are ignored);
    LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES are unset either way, so no child sees them. Exactly one
    fd is taken: a listening AF_UNIX stream socket bound at `path`, whose file has exactly
    `mode` and is owned by us or root (its owner could widen who may connect)."""
    pid, fds = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if pid is None or fds is None or pid != str(os.getpid()):
        return None
    if fds != "1":
        raise InheritedSocketError(
            f"systemd passed LISTEN_FDS={fds[:10]!r}; walletd takes exactly one socket"
        )
    fd = LISTEN_FDS_START
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise InheritedSocketError(f"fd {fd} from systemd is not a socket: {exc}") from None
    try:
        _check_inherited(sock, path, mode)
    except BaseException:
        sock.detach()  # leave the fd to systemd's accounting; we exit anyway
        raise
    sock.set_inheritable(False)  # never into a wallet-rpc child
    return sock


def _check_inherited(sock: socket.socket, path: Path, mode: int) -> None:
    where = f"the socket from systemd (fd {LISTEN_FDS_START})"
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise InheritedSocketError(f"{where} is not a Unix stream socket (ListenStream=PATH)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise InheritedSocketError(f"{where} is not listening")
    bound = sock.getsockname()
    if bound != os.fspath(path):
        raise InheritedSocketError(
            f"{where} is bound at {bound!r}, not daemon.socket_path {os.fspath(path)!r}: "
            "make ListenStream= and socket_path the same"
        )
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise InheritedSocketError(f"{path} is no longer a socket")
    if stat.S_IMODE(st.st_mode) != mode:
        raise InheritedSocketError(
            f"{where} has mode {stat.S_IMODE(st.st_mode):04o}, daemon.socket_mode is "
            f"{mode:04o}: make SocketMode= and socket_mode the same"
        )
    if st.st_uid not in (0, os.getuid()):
        raise InheritedSocketError(
            f"{where} is owned by uid {st.st_uid}, neither walletd's user nor root "
            "(its owner could let anyone connect)"
        )


async def bind_unix(path: Path, mode: int) -> tuple[trio.socket.SocketType, tuple[int, int]]:
    """Bind at `path` with exactly `mode`; returns the socket and the file's (st_dev, st_ino)."""
    await _remove_stale_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        # Nobody can connect before listen(), so chmod here leaves no window with wider access.
        os.chmod(path, mode)
        st = os.stat(path)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


async def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket nobody listens on; refuse anything else that is in the way."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(
            errno.EEXIST, "exists and is not a socket; refusing to replace it", os.fspath(path)
        )
    if await _socket_is_live(path):
        raise OSError(errno.EADDRINUSE, "another server is listening on this socket", str(path))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # already gone: the stale socket is exactly what we wanted removed


async def _socket_is_live(path: Path) -> bool:
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        with trio.move_on_after(_PROBE_TIMEOUT):
            try:
                await probe.connect(os.fspath(path))
            except (ConnectionRefusedError, FileNotFoundError):
                return False
        # Connected, or the connect is queued behind a full backlog: either way it is alive.
        return True


def unlink_if_ours(path: Path, identity: tuple[int, int]) -> None:
    """Remove the socket file unless someone else has since replaced it with their own."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except FileNotFoundError:
        pass
