"""One walletd per state directory: an exclusive lock taken before anything touches the state.

Two walletd on one state dir would each take the other's wallet-rpc children for orphans left by
a dead walletd and stop them (wallets closed under a session), both run lifecycle recovery on the
same escrows (one abandons the other's creation in flight), and only then would the second fail on
the busy socket. So the very first thing a daemon does with its state dir, before the store, the
vault, orphan removal or recovery, is `flock(LOCK_EX | LOCK_NB)` on `state_dir/walletd.lock`,
held for the life of the process. A second instance fails at once, naming the state dir and the
pid the holder wrote into the file.

flock, not a pid file: the kernel drops the lock when the holder exits however it exits (kill -9,
`os._exit` of the shutdown backstop), so a stale file never blocks a restart. The descriptor is
close-on-exec, so wallet-rpc children never inherit it: an orphaned child cannot keep the next
walletd from starting and stopping it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from walletd.errors import StateDirBusy

__all__ = ["LOCK_NAME", "StateLock"]

LOCK_NAME = "walletd.lock"


class StateLock:
    """The held lock of one state directory; release it with `close` (or use `with`)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock `state_dir` or raise StateDirBusy at once (never waits)."""
        path = state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _holder(path)
            who = f"walletd pid {holder}" if holder else "another walletd"
            raise StateDirBusy(
                f"state directory {state_dir} is in use by {who} (lock {path}); "
                "one walletd per state directory"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd)

    def close(self) -> None:
        """Release the lock (the file stays: removing it would race a starting walletd)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _holder(path: Path) -> int | None:
    """The pid the holder wrote, if it is readable yet (it writes it just after locking)."""
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text(encoding="ascii").strip()
        return int(text) if text else None
    return None
