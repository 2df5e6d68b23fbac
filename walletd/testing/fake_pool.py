"""A `ProcessPool` of fake wallet-rpc processes, for session and registry tests.

It keeps the pool's contract (a process is owned by one caller from acquire to release or discard;
a discarded dead process counts as a restart) and lets a test reach the fake behind any handle to
kill it, hang it or make it fail.
"""

from __future__ import annotations

import trio

from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_transport import FakeTransport
from walletd.testing.fake_wallet_rpc import FakeWalletRpc
from walletd.wallets.children import PoolStatistics
from walletd.wallets.process import WalletProcess
from walletd.wallets.rpc import WalletRpc

__all__ = ["FakePool", "FakeProcess"]


class FakeProcess(WalletProcess):
    def __init__(self, fake: FakeWalletRpc, timeout: float) -> None:
        rpc = WalletRpc(
            fake.url, user="u", password="p", timeout=timeout, transport=FakeTransport(fake)
        )
        super().__init__(f"fake-wallet-rpc:{fake.pid}", rpc, pid=fake.pid)
        self.fake = fake
        self.unreaped = False  # killed a moment ago: dead, but its exit not yet noticed

    def alive(self) -> bool:
        return self.unreaped or not self.fake.dead


class FakePool:
    def __init__(
        self,
        world: FakeWalletWorld,
        *,
        open_delay: float = 1.5,
        create_delay: float = 1.7,
        call_timeout: float = 30.0,
    ) -> None:
        self.world = world
        self.open_delay = open_delay
        self.create_delay = create_delay
        self.call_timeout = call_timeout
        self._restarts = 0
        self.capacity: int | None = None
        self.idle: list[FakeProcess] = []
        self.in_use: dict[int, FakeProcess] = {}
        self.started = 0
        self.discarded_damaged = 0  # processes dropped with their wallet unsaved
        self.daemon_address = "127.0.0.1:18081"  # what new processes are "started" against

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(idle=len(self.idle), busy=len(self.in_use), restarts=self._restarts)

    def set_daemon_address(self, address: str) -> None:
        self.daemon_address = address
        for proc in self.idle:
            proc.fake.terminate()
        self.idle.clear()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            for proc in [*self.idle, *self.in_use.values()]:
                proc.fake.terminate()

    async def acquire(self) -> WalletProcess:
        await trio.lowlevel.checkpoint()
        if self.idle:
            proc = self.idle.pop()
        else:
            fake = FakeWalletRpc(
                self.world, open_delay=self.open_delay, create_delay=self.create_delay
            )
            proc = FakeProcess(fake, self.call_timeout)
            proc.daemon_address = self.daemon_address
            self.started += 1
        self.in_use[proc.fake.pid] = proc
        proc.uses += 1
        return proc

    async def release(self, proc: WalletProcess) -> None:
        await trio.lowlevel.checkpoint()
        fake_proc = self.in_use.pop(proc.pid or -1)
        if fake_proc.daemon_address != self.daemon_address:
            fake_proc.fake.terminate()  # started before a daemon switch: retired
            return
        self.idle.append(fake_proc)

    async def discard(self, proc: WalletProcess, *, damaged: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        fake_proc = self.in_use.pop(proc.pid or -1, None)
        if fake_proc is None:
            return
        if fake_proc.fake.dead:
            self._restarts += 1
        if damaged:
            self.discarded_damaged += 1
            fake_proc.fake.kill()  # as ChildPool does: SIGKILL, nothing stored
        else:
            fake_proc.fake.terminate()

    async def kill_spares_unnoticed(self, n: int) -> None:
        """Add `n` spares killed so recently that they still look alive, as real spares do
        between SIGKILL and the pool reaping them."""
        procs = [await self.acquire() for _ in range(n)]
        for proc in procs:
            await self.release(proc)
        for fake_proc in self.idle[-n:]:
            fake_proc.fake.kill()
            fake_proc.unreaped = True

    def fake_of(self, escrow_wallet: str) -> FakeWalletRpc:
        """The fake process that has `escrow_wallet` open."""
        for proc in self.in_use.values():
            if proc.fake.wallet is not None and proc.fake.wallet.name == escrow_wallet:
                return proc.fake
        raise KeyError(escrow_wallet)
