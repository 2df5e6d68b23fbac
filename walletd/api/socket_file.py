"""The API's socket file: bound with exactly its mode, never stolen, removed only if ours.

Kept apart from the HTTP server (`server`) because it is about the file system, not HTTP: a
stale socket (nobody listening) left by a crash is replaced at start-up, but a live one (another
walletd) or anything that is not a socket is refused; the mode is set before `listen()`, so there
is no window with wider access; and at exit the file is unlinked only if it is still the one we
bound (same st_dev, st_ino), never a successor's.

Under systemd socket activation (`walletd.socket`) the socket is instead inherited as fd 3
(`LISTEN_FDS`/`LISTEN_PID`, sd_listen_fds semantics): it already listens, so clients that connect
while walletd restarts wait in its backlog instead of failing, and systemd, not walletd, owns
and removes the file.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import trio

__all__ = ["SD_LISTEN_FDS_START", "bind_unix", "inherited_unix", "unlink_if_ours"]

_PROBE_TIMEOUT = 1.0  # to tell a live socket from a stale one at start-up
SD_LISTEN_FDS_START = 3  # systemd passes activated sockets from this fd on


def inherited_unix(path: Path) -> trio.socket.SocketType | None:
    """The listening socket systemd passed for `path`, or None when not socket-activated.

    Follows sd_listen_fds(unset_environment=1): the variables count only if LISTEN_PID is our
    pid (they may be stale, inherited from a parent), and are removed so that no child ever
    mistakes them for its own. The fd must be one listening AF_UNIX stream socket bound at
    `path` exactly: serving the API on some other socket would be worse than not starting.
    """
    pid, fds = os.environ.pop("LISTEN_PID", None), os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or fds is None or pid != str(os.getpid()):
        return None
    if fds != "1":
        raise ValueError(f"socket activation: expected 1 socket (LISTEN_FDS), got {fds!r}")
    fd = SD_LISTEN_FDS_START
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ValueError(f"socket activation: fd {fd} is not a socket ({e.strerror})") from None
    try:
        bound = sock.getsockname()
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
            raise ValueError(f"socket activation: fd {fd} is not a listening Unix stream socket")
        if bound != os.fspath(path):
            raise ValueError(
                f"socket activation: fd {fd} is bound at {bound!r}, but daemon.socket_path is "
                f"{os.fspath(path)!r}; set ListenStream= and socket_path to the same path"
            )
        os.set_inheritable(fd, False)  # not for the wallet-rpc children
        return trio.socket.from_stdlib_socket(sock)
    except BaseException:
        sock.detach()  # leave fd 3 as it was: it is systemd's, not ours to close on a refusal
        raise


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
