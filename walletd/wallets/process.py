"""One monero-wallet-rpc process as its owner holds it, and what the pool keeps of its own.

`WalletProcess` is what a pool hands out (`children.ProcessPool`): a managed child or an external
endpoint, with its RPC client, its exit, and the escrow wallet it holds now (what its log lines
name). `ManagedChild` is what only the pool needs of a child it started: its Popen, pidfd, port,
output, files, and whether its exit was asked for.
"""

from __future__ import annotations

import collections

import trio

from walletd.wallets.rpc import WalletRpc
from walletd.wallets.spawning import Spawned, listener_is_owned_by

__all__ = ["OUTPUT_TAIL", "ManagedChild", "WalletProcess", "managed"]

OUTPUT_TAIL = 20  # lines of output kept for error messages


class ManagedChild:
    """What only the pool needs to know about a child it started (`children`, `child_control`)."""

    def __init__(self, spawned: Spawned) -> None:
        self.popen = spawned.popen
        self.port = spawned.port
        self.pidfd = spawned.pidfd
        self.output = spawned.output
        self.config_file = spawned.config_file
        self.record_file = spawned.record_file
        self.tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL)
        self.drained = trio.Event()
        self.gone = trio.Event()  # its supervisor finished: reaped and cleaned up
        self.stopping = False  # we asked it to stop: its exit is expected
        self.died = False  # it exited without being asked


class WalletProcess:
    """One monero-wallet-rpc: a managed child or an external endpoint, with its RPC client."""

    def __init__(
        self,
        ident: str,
        rpc: WalletRpc,
        *,
        pid: int | None = None,
        external: bool = False,
        child: ManagedChild | None = None,
    ) -> None:
        self.ident = ident
        self.rpc = rpc
        self.pid = pid
        self.external = external
        self.exited = trio.Event()
        self.uses = 0
        self.returncode: int | None = None
        self.start_seconds: float | None = None  # managed: spawn to RPC-ready
        # The monerod it was started with (--daemon-address); None: not ours to say (external).
        self.daemon_address: str | None = None
        # (escrow id, role) of the wallet this process holds now: what its log lines name.
        self.wallet_of: tuple[str, str] | None = None
        self._child = child  # None: an external endpoint

    def labels(self) -> dict[str, str]:
        """Log fields naming the escrow wallet held now; none for a spare or an empty process."""
        if self.wallet_of is None:
            return {}
        escrow_id, role = self.wallet_of
        return {"escrow_id": escrow_id, "role": role}

    def alive(self) -> bool:
        return not self.exited.is_set()

    async def still_ours(self) -> bool:
        """Before a wallet password is sent: the port still answers from this very process.

        Checked at start, but a child that died a moment ago (not yet reaped, so `alive()`)
        frees its port for anyone; the body of the next request, password included, would go
        to whoever bound it. One /proc read per open, a millisecond. External endpoints are
        the operator's to trust."""
        if self._child is None:
            return True
        return await trio.to_thread.run_sync(listener_is_owned_by, self._child.port, self.pid)

    def __repr__(self) -> str:  # never shows the credentials
        return f"WalletProcess({self.ident}, pid={self.pid})"


def managed(proc: WalletProcess) -> ManagedChild:
    """What the pool knows of `proc`, a child it started; ValueError for any other process."""
    if proc._child is None:
        raise ValueError(f"{proc!r} is not a managed child")
    return proc._child
