"""Who holds a wallet's keys-file lock: checked after every open, as wallet-rpc's own check races.

wallet-rpc (wallet2) marks a wallet as open with a POSIX fcntl write lock on `<w>.keys`
(`flock_exnb` in monero's src/common/util.cpp is, despite its name, `fcntl(fd, F_SETLK, F_WRLCK)`
over the whole file). But `wallet2::load` (src/wallet/wallet2.cpp, v0.18.0.0 lines 5420-5430)
takes the lock, checks it, *drops* it to read the keys file, then takes it again without checking
the result. Two processes opening one wallet at the same moment can both pass the check; the one
whose second take loses then has the wallet open with no lock at all, and both opens succeed.
Nothing in the kernel shows the lock-less one, so walletd checks its own side: once our child has
opened a wallet, it must be the only holder of that lock. Anyone else holding it has the wallet
open too (a double open); nobody holding it means our child's second take lost, so another process
had it at that instant, and no later open elsewhere would be refused. Either way the open is given
up (closed without storing) rather than used. What this cannot see: another process that lost its
own second take to our child (it holds no lock); the lock is our child's, so every open after
ours is refused, and walletd never sees that process as the wallet's second user. The check
narrows the race to that case, it does not close it: only the other party's wallet-rpc can.

The holders are read from /proc/locks, which lists every holder of every lock kind (POSIX, OFD,
flock) with its pid, matched by the keys file's device and inode (the file's current inode:
wallet2 saves keys by rename and locks the new file). F_GETLK is asked too and its answer added:
it sees POSIX and OFD locks of any other process even where /proc/locks names a device
differently (overlay file systems). OFD locks show pid -1 there: a holder we cannot name, never
ours.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

__all__ = ["lock_holder", "lock_holders"]

_FLOCK = "hhqqi"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid
PROC_LOCKS = Path("/proc/locks")


def lock_holders(path: Path, proc_locks: Path = PROC_LOCKS) -> frozenset[int]:
    """Pids holding any lock on `path` (-1: an OFD lock, holder unknown); empty if none.

    Raises FileNotFoundError if `path` does not exist."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders: set[int] = set()
    try:
        lines = proc_locks.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; "1: -> POSIX ..." is a waiter.
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        if fields[5] == key:
            holders.add(int(fields[4]))
    other = lock_holder(path)
    if other is not None:
        holders.add(other)
    return frozenset(holders)


def lock_holder(path: Path) -> int | None:
    """The pid F_GETLK reports for a write lock on `path`, or None. F_GETLK only asks; it takes no
    lock. Closing our descriptor would drop record locks this process holds on the file, and
    walletd holds none on wallet files."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    finally:
        os.close(fd)
    l_type, _, _, _, pid = struct.unpack(_FLOCK, answer)
    return None if l_type == fcntl.F_UNLCK else int(pid)
