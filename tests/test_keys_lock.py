"""Who holds a keys-file lock (wallets.keys_lock), on a real file locked by another process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from walletd.wallets.keys_lock import lock_holders

# wallet2's lock: fcntl F_SETLK, F_WRLCK over the whole file (monero src/common/util.cpp).
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(60)
"""


def test_the_process_holding_a_keys_file_lock_is_named(tmp_path: Path) -> None:
    """A wallet-rpc-style POSIX lock held by another process shows that process's pid; the
    same file unlocked, and another file, show no holder."""
    keys = tmp_path / "w.keys"
    keys.write_bytes(b"keys")
    other = tmp_path / "x.keys"
    other.write_bytes(b"keys")
    assert lock_holders(keys) == frozenset()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(keys)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holders(keys) == frozenset({holder.pid})
        assert lock_holders(other) == frozenset()
    finally:
        holder.kill()
        holder.wait()
    assert lock_holders(keys) == frozenset()
