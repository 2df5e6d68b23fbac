"""The three wallet handles of a session: how they open, prove their identity and close.

Each handle is one role's wallet (buyer, vendor, arbiter) in one monero-wallet-rpc process taken
from the pool. Opening is concurrent, one process per handle; a -1 on open goes to the repairer,
which repairs only damage it can prove. Closing hands a process back to the pool only once its
wallet is closed, and stops any process left holding one.

Why a talk to the wrong wallet cannot happen: each process has its own random digest credentials,
so if a dead child's port is taken by another process our calls get HTTP 401, not an answer
(`_open_in` also refuses a process that `still_ours` says lost its port); a process is owned by
exactly one session from `acquire` to `release` (`open_one`, `_close_one`); and before every
message that moves money the session checks each wallet's address again (`check_identity`,
which discards a process holding anything else).

A session owns one `WalletHandles` (its `_wallets`): this machinery reads on its own, and the
session's actor loop, its restart policy and its operations stay in `session`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import structlog
import trio

from walletd.errors import (
    OPEN_FAILED,
    HeldElsewhere,
    NoWalletFile,
    RpcCallError,
    RpcError,
    RpcUnreachable,
    SessionFailed,
    Unavailable,
    first_error,
)
from walletd.ids import ROLES, Role
from walletd.wallets.children import ProcessPool
from walletd.wallets.process import WalletProcess
from walletd.wallets.rpc import WalletRpc

__all__ = [
    "CLOSE_WALLET_TIMEOUT",
    "Handle",
    "LockProbe",
    "Opener",
    "Repairer",
    "SessionSpec",
    "WalletHandles",
    "WalletSpec",
    "together",
]

# The session's logger: these lines keep the logger name they had before the split.
log = structlog.get_logger("walletd.sessions.session")

FRESH_PROCESS_TRIES = 3  # processes tried for one open when the ones handed over turn out dead
CLOSE_WALLET_TIMEOUT = 10.0  # close_wallet stores (ms normally); longer means a hung process


# (escrow_id, role, file, multisig address or None, opener, the -1 the open got): opens the
# wallet in the opener's process after a proven repair, or raises (walletd.wallets.repair).
Repairer = Callable[[str, Role, str, "str | None", "Opener", RpcCallError], Awaitable[None]]

# wallet file name -> pids holding its keys-file lock (walletd.wallets.keys_lock.lock_holders);
# None: cannot tell (no such file where walletd looks).
LockProbe = Callable[[str], Awaitable["frozenset[int] | None"]]


@attrs.frozen
class WalletSpec:
    file: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class SessionSpec:
    """What a session opens: three wallet files and the multisig address they must all show."""

    escrow_id: str
    wallets: Mapping[Role, WalletSpec]
    address: str | None  # None while adopting (learnt and checked equal) or creating
    create: bool = False  # create the three wallets instead of opening them


@attrs.define
class Handle:
    role: Role
    spec: WalletSpec
    proc: WalletProcess | None = None
    created: bool = False  # create mode: the wallet file exists now, reopen rather than recreate


@attrs.frozen
class Opener:
    """Opens wallets, with one escrow wallet's password, in the process that failed to open it
    (walletd.wallets.repair.Opener): a backup is checked there before it may replace anything."""

    rpc: WalletRpc
    password: str = attrs.field(repr=False)
    timeout: float

    async def open(self, filename: str) -> str:
        params = {"filename": filename, "password": self.password}
        await self.rpc.call("open_wallet", params, timeout=self.timeout)
        result = await self.rpc.call("get_address", {"account_index": 0})
        return str(result.get("address", ""))

    async def close(self) -> None:
        params = {"autosave_current": True}
        await self.rpc.call("close_wallet", params, timeout=CLOSE_WALLET_TIMEOUT)


class WalletHandles:
    """Opening, identity checks and closing of a session's three handles (see the module doc).

    `address` is the escrow's multisig address as the wallets proved it (`check_identity`),
    None until known (adopting, creating); `fenced` once the escrow's lease was lost."""

    def __init__(
        self,
        spec: SessionSpec,
        pool: ProcessPool,
        *,
        open_timeout: float,
        close_timeout: float,
        on_call: Callable[[str, float], None] | None = None,
        repair: Repairer | None = None,
        lock_probe: LockProbe | None = None,
    ) -> None:
        self.spec = spec
        self.escrow_id = spec.escrow_id
        self.address = spec.address
        self.fenced = False  # the escrow's lease was lost (a cluster): never open a wallet again
        self._pool = pool
        self._open_timeout = open_timeout
        # close_wallet gets at most half of the close bound: it always ends (answered or timed
        # out) before the bound, leaving time to stop the process rather than abandon it.
        self._close_timeout = close_timeout
        self._close_wallet_timeout = min(CLOSE_WALLET_TIMEOUT, close_timeout / 2)
        self._on_call = on_call
        self._repair = repair
        self._lock_probe = lock_probe
        self._handles = {role: Handle(role, spec.wallets[role]) for role in ROLES}

    def all(self) -> list[Handle]:
        """The three handles, in role order."""
        return list(self._handles.values())

    def rpc(self, role: Role) -> WalletRpc:
        """The client of `role`'s process; Unavailable while it has none."""
        proc = self._handles[role].proc
        if proc is None:
            raise Unavailable(f"{role} wallet is not open")
        return proc.rpc

    def proc(self, role: Role) -> WalletProcess | None:
        return self._handles[role].proc

    def any_exited(self) -> bool:
        """Some handle has no process, or its process exited."""
        return any(not h.proc or not h.proc.alive() for h in self._handles.values())

    async def lost(self) -> list[Handle]:
        """The handles whose process is gone or no longer holds a wallet."""
        return [
            h
            for h in self._handles.values()
            if h.proc is None or not h.proc.alive() or not await self._still_open(h)
        ]

    async def open_all(self) -> None:
        try:
            await together(self.open_one, self._handles.values())
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close_all()
            raise
        await self.check_identity()
        log.info("session opened", address=short(self.address))

    async def reopen(self, handle: Handle) -> None:
        """Open `handle`'s wallet again in a fresh process (its old one discarded)."""
        proc, handle.proc = handle.proc, None
        if proc is not None:
            await self._pool.discard(proc)
        await self.open_one(handle)

    async def open_one(self, handle: Handle) -> None:
        if self.fenced:
            raise SessionFailed("this host lost the escrow's lease; its wallets stay closed")
        fresh = 0
        while True:
            if handle.proc is None or not handle.proc.alive():
                if handle.proc is not None:
                    await self._pool.discard(handle.proc)
                    handle.proc = None
                handle.proc = await self._pool.acquire()
                handle.proc.rpc.observer = self._on_call
                fresh += 1
            try:
                await self._open_in(handle, handle.proc.rpc)
                return
            except RpcUnreachable:
                # A spare killed a moment ago can still look alive (its exit not yet reaped):
                # take another process rather than fail the open; bounded, a broken binary fails.
                if fresh == 0 or fresh >= FRESH_PROCESS_TRIES:
                    raise
                proc, handle.proc = handle.proc, None
                await self._pool.discard(proc)

    async def _open_in(self, handle: Handle, rpc: WalletRpc) -> None:
        assert handle.proc is not None
        if not await handle.proc.still_ours():
            # Taken for a lost process: discarded, and the open moves to a fresh one.
            raise RpcUnreachable("open_wallet", f"{handle.proc!r} no longer holds its port")
        params = {"filename": handle.spec.file, "password": handle.spec.password}
        if self.spec.create and not handle.created:
            await rpc.call(
                "create_wallet", {**params, "language": "English"}, timeout=self._open_timeout
            )
            handle.created = True
        else:
            await self._open_or_repair(handle, rpc, params)
        await self._check_sole_holder(handle, rpc)
        handle.proc.wallet_of = (self.escrow_id, handle.role)  # what its log lines name now
        await rpc.call("auto_refresh", {"enable": False})

    async def _open_or_repair(self, handle: Handle, rpc: Any, params: dict[str, str]) -> None:
        """open_wallet; a -1 goes to the repairer (repair), which repairs only damage it
        can prove (never a lock held by another process, never a wrong password) and otherwise
        raises, leaving the files as they were."""
        try:
            await rpc.call("open_wallet", params, timeout=self._open_timeout)
            return
        except RpcCallError as exc:
            if exc.code != OPEN_FAILED or self._repair is None:
                raise
            failure = exc
        opener = Opener(rpc, handle.spec.password, self._open_timeout)
        await self._repair(
            self.escrow_id, handle.role, handle.spec.file, self.address, opener, failure
        )

    async def _check_sole_holder(self, handle: Handle, rpc: WalletRpc) -> None:
        """After an open: our child must be the only holder of the wallet's keys-file lock.

        wallet-rpc checks that lock before loading the keys and takes it again after, without
        checking the second take, so two processes opening one wallet at once can both succeed
        (walletd.wallets.keys_lock). Another holder means the wallet is open there too; no holder
        means our child's second take lost to another process and later opens elsewhere would
        not be refused. Either way the wallet is closed without storing (the other process may
        be the one whose saves count) and the open fails as a wallet held by another process:
        never a session on a wallet someone else also has open. A process that cannot close is
        killed unsaved. External endpoints are skipped: their files may not be ours to see."""
        proc = handle.proc
        if self._lock_probe is None or proc is None or proc.pid is None or proc.external:
            return
        holders = await self._lock_probe(handle.spec.file)
        if holders is None:
            log.warning("keys file not found after open; lock not checked", role=handle.role)
            return
        if holders == {proc.pid}:
            return
        others = sorted(holders - {proc.pid})
        try:
            await rpc.call(
                "close_wallet", {"autosave_current": False}, timeout=self._close_wallet_timeout
            )
        except (RpcError, OSError) as exc:
            log.error("unsaved close failed; killing process", role=handle.role, error=str(exc))
            handle.proc = None
            await self._pool.discard(proc, damaged=True)  # SIGKILL: SIGTERM would store
        if others:
            pids = ", ".join(str(p) for p in others)
            reason = (
                f"{handle.role} wallet {handle.spec.file} is held open by another process "
                f"(pid {pids}); opened concurrently, closed again unsaved"
            )
        else:
            reason = (
                f"{handle.role} wallet {handle.spec.file} opened without its keys-file lock "
                "(another process took it during the open); closed again unsaved"
            )
        log.error("open given up: not the sole keys-lock holder", role=handle.role, holders=others)
        raise HeldElsewhere(reason)

    async def check_identity(self) -> None:
        """Every process must hold a wallet whose address is the escrow's multisig address."""
        if self.spec.create and self.address is None:
            return  # three distinct plain wallets until SetupMultisig makes them one
        addresses: dict[Role, str] = {}
        for role, handle in self._handles.items():
            assert handle.proc is not None
            result = await handle.proc.rpc.call("get_address", {"account_index": 0})
            addresses[role] = str(result.get("address", ""))
        expected = self.address or addresses["buyer"]
        wrong = [r for r, a in addresses.items() if a != expected]
        if wrong:
            # Never go on with a process that holds something else: discard it.
            for role in wrong:
                proc = self._handles[role].proc
                self._handles[role].proc = None
                if proc is not None:
                    await self._pool.discard(proc)
            raise SessionFailed(
                f"wallet address mismatch for {', '.join(wrong)}: refusing to use those wallets"
            )
        self.address = expected

    async def fence(self) -> None:
        """The escrow's lease is lost (a cluster): another host may open these wallets as soon
        as it expires, so every process of this session is killed now, unsaved (SIGKILL: a
        SIGTERM would store), and no wallet of it is opened again. What was not stored is not
        lost to the escrow: payouts are recorded in the database before they are sent, and the
        next owner opens the files last saved there."""
        self.fenced = True  # first, before anything can yield: no reopen from here on
        procs = [h.proc for h in self._handles.values() if h.proc is not None]
        for handle in self._handles.values():
            handle.proc = None
        async with trio.open_nursery() as nursery:
            for proc in procs:
                nursery.start_soon(functools.partial(self._pool.discard, proc, damaged=True))

    async def drop_damaged(self, url: str, error: str) -> list[Role]:
        """Kill, unsaved, the processes at `url` (a wallet there reported damage `error`); their
        roles. SIGKILL: a SIGTERM would store the damaged wallet."""
        damaged = [
            h for h in self._handles.values() if h.proc is not None and h.proc.rpc.base_url == url
        ]
        for handle in damaged:
            log.error(
                "wallet reports damage; dropped unsaved and reopened", role=handle.role, error=error
            )
            proc, handle.proc = handle.proc, None
            assert proc is not None
            await self._pool.discard(proc, damaged=True)
        return [h.role for h in damaged]

    async def _still_open(self, handle: Handle) -> bool:
        assert handle.proc is not None
        try:
            await handle.proc.rpc.call("get_address", {"account_index": 0}, timeout=5.0)
        except (RpcError, OSError):
            return False
        return True

    async def close_all(self) -> None:
        """Close every wallet within `close_timeout`; stop whatever process is left holding one.

        The session's end frees its registry slot, and a freed slot means the escrow may be
        opened again at once: a process still holding a wallet then makes that open fail with
        -1, which is not damage (see repair). So a process is handed back to the pool
        only once its wallet is closed, and when the bound runs out every process not yet
        handed back is discarded (stopped, with escalation to SIGKILL) before this returns.
        The bound is strictly longer than close_wallet's own timeout, so a hung close_wallet
        normally ends in its own timeout and a discard, and the outer bound is the backstop."""
        with trio.move_on_after(self._close_timeout) as scope:
            async with trio.open_nursery() as nursery:
                for handle in self._handles.values():
                    nursery.start_soon(self._close_one, handle)
        if scope.cancelled_caught:
            log.error("session close timed out; stopping its wallet-rpc processes")
        for handle in self._handles.values():
            proc, handle.proc = handle.proc, None
            if proc is not None:
                await self._pool.discard(proc)  # bounded by the pool (SIGTERM, then SIGKILL)

    async def _close_one(self, handle: Handle) -> None:
        proc = handle.proc  # stays ours (and discarded by close_all) until handed back below
        if proc is None:
            return
        clean = True
        try:
            # close_wallet stores first; a clean close makes the process reusable.
            await proc.rpc.call(
                "close_wallet", {"autosave_current": True}, timeout=self._close_wallet_timeout
            )
        except NoWalletFile:
            pass  # it never opened (a failed open): the process is clean
        except (RpcError, OSError) as exc:
            log.warning("close_wallet failed; discarding process", role=handle.role, error=str(exc))
            clean = False
        if clean:
            proc.wallet_of = None  # closed: the process holds no escrow's wallet any more
            await self._pool.release(proc)
        else:
            await self._pool.discard(proc)
        handle.proc = None  # only now: a hand-back cut short is finished by close_all's discard


async def together(fn: Callable[[Handle], Awaitable[None]], handles: Iterable[Handle]) -> None:
    """Run `fn` on each handle concurrently (one per process); raise the first real error
    rather than an ExceptionGroup, so callers see e.g. RpcCallError(-1) as such."""
    try:
        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(fn, handle)
    except BaseExceptionGroup as group:
        raise first_error(group) from group


def short(address: str | None) -> str | None:
    return f"{address[:8]}…{address[-6:]}" if address else None
