"""An escrow session: one supervised trio task owning the escrow's three wallet-rpc handles.

The session opens the buyer, vendor and arbiter wallets concurrently (each in its own process),
turns auto-refresh off (it would run on wallet-rpc's only RPC thread and stall our calls), checks
that each process holds the wallet it expects, then serves its inbox one message at a time.

The three handles fail together (OTP's one_for_all): when a process dies, hangs or loses its
wallet, the session restores the whole set (a fresh process for each lost handle, every wallet
reopened and its address checked) before it serves again. Restorations are bounded by an
intensity/period limit on `trio.current_time()`; past it the session fails as a unit and the
registry reports it.

Why a talk to the wrong wallet cannot happen: each process has its own random digest credentials,
so if a dead child's port is taken by another process our calls get HTTP 401, not an answer; a
process is owned by exactly one session from `acquire` to `release`; and before every message that
moves money the session checks each wallet's address again.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import attrs
import outcome
import structlog
import trio

from walletd.errors import (
    NoWalletFile,
    RpcAuthError,
    RpcCallError,
    RpcError,
    RpcTimeout,
    RpcUnreachable,
    SessionFailed,
    Unavailable,
    WalletdError,
    first_error,
)
from walletd.ids import ROLES, Role
from walletd.ops import failpoints
from walletd.sessions.messages import (
    Balance,
    Funding,
    GetBalance,
    GetFunding,
    GetTransfer,
    Leave,
    Message,
    MultisigInfo,
    MultisigStatus,
    PreparePayout,
    Refresh,
    SetupMultisig,
    Store,
    SubmitPayout,
    SyncAll,
    Transfer,
    ValidateAddress,
)
from walletd.wallets import multisig
from walletd.wallets.children import ProcessPool, WalletProcess

__all__ = [
    "EscrowSession",
    "SessionClosed",
    "SessionFailed",
    "SessionHandle",
    "SessionSpec",
    "WalletSpec",
]

log = structlog.get_logger(__name__)

R = TypeVar("R")
Reply = trio.MemorySendChannel[outcome.Outcome[Any]]
Envelope = tuple[Message[object], Reply]

# Errors that mean "this handle's process is gone or no longer holds our wallet".
LOST = (RpcUnreachable, RpcAuthError, RpcTimeout, NoWalletFile)
TX_NOT_FOUND = -8
OPEN_FAILED = -1
FRESH_PROCESS_TRIES = 3  # processes tried for one open when the ones handed over turn out dead
CLOSE_WALLET_TIMEOUT = 10.0  # close_wallet stores (ms normally); longer means a hung process
NO_DAEMON_CONNECTION = -38  # wallet-rpc lost its link to monerod (monero issue 5044)


# (escrow_id, role, file, multisig address or None, opener, the -1 the open got): opens the
# wallet in the opener's process after a proven repair, or raises (walletd.wallets.repair).
Repairer = Callable[[str, Role, str, "str | None", "_Opener", RpcCallError], Awaitable[None]]


class SessionClosed(WalletdError):
    """The session stopped before it could take the request; the caller may open a new one."""


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
class _Handle:
    role: Role
    spec: WalletSpec
    proc: WalletProcess | None = None
    created: bool = False  # create mode: the wallet file exists now, reopen rather than recreate


@attrs.frozen
class _Opener:
    """Opens wallets, with one escrow wallet's password, in the process that failed to open it
    (walletd.wallets.repair.Opener): a backup is checked there before it may replace anything."""

    rpc: Any
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


class SessionHandle:
    """The registry's and callers' side of a session: a mailbox and nothing else."""

    def __init__(self, escrow_id: str, send: trio.MemorySendChannel[Envelope]) -> None:
        self.escrow_id = escrow_id
        self._send = send
        self.address: str | None = None

    async def request(self, message: Message[R]) -> R:
        """Send `message` and wait for its reply; SessionClosed if the session is gone."""
        reply_send, reply_recv = trio.open_memory_channel[outcome.Outcome[Any]](1)
        try:
            await self._send.send((message, reply_send))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SessionClosed(self.escrow_id) from None
        with reply_recv:
            try:
                result = await reply_recv.receive()
            except trio.EndOfChannel:
                raise SessionClosed(self.escrow_id) from None
        # The session answers each message with its declared reply type (`_dispatch`).
        return cast("R", result.unwrap())

    def tell(self, message: Message[object]) -> bool:
        """Deliver `message` without waiting for a reply (Leave); False if the inbox is gone."""
        reply_send, _ = trio.open_memory_channel[outcome.Outcome[Any]](1)
        try:
            self._send.send_nowait((message, reply_send))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


@attrs.define
class RestartLimiter:
    """At most `intensity` restarts within any `period` seconds (OTP's MaxR/MaxT)."""

    intensity: int
    period: float
    _times: collections.deque[float] = attrs.field(factory=collections.deque)

    def allow(self) -> bool:
        now = trio.current_time()
        while self._times and now - self._times[0] > self.period:
            self._times.popleft()
        if len(self._times) >= self.intensity:
            return False
        self._times.append(now)
        return True


class EscrowSession:
    def __init__(
        self,
        spec: SessionSpec,
        pool: ProcessPool,
        *,
        open_timeout: float = 120.0,
        close_timeout: float = 30.0,
        restart_intensity: int = 3,
        restart_period: float = 60.0,
        on_restart: Callable[[str, Role, str], Awaitable[None] | None] | None = None,
        on_backup: Callable[[str, list[str], str], object] | None = None,
        on_call: Callable[[str, float], None] | None = None,
        store_interval: float = 300.0,
        daemon_address: str = "127.0.0.1:18081",
        repair: Repairer | None = None,
    ) -> None:
        self.spec = spec
        self.escrow_id = spec.escrow_id
        self._pool = pool
        self._open_timeout = open_timeout
        # close_wallet gets at most half of the close bound: it always ends (answered or timed
        # out) before the bound, leaving time to stop the process rather than abandon it.
        self._close_timeout = close_timeout
        self._close_wallet_timeout = min(CLOSE_WALLET_TIMEOUT, close_timeout / 2)
        self._limiter = RestartLimiter(restart_intensity, restart_period)
        self._on_restart = on_restart
        self._on_backup = on_backup
        self._on_call = on_call
        self._store_interval = store_interval
        self._daemon_address = daemon_address
        self._repair = repair
        self._handles = {role: _Handle(role, spec.wallets[role]) for role in ROLES}
        self.address = spec.address
        self.leave_reason: str | None = None
        self.restarts = 0
        self._reader_height: int | None = None
        # The reader wallet synced with the chain since this process opened it: until then a
        # transaction it does not know may be one it has not scanned yet.
        self._reader_synced = False

    # ---- the actor loop --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[SessionHandle]) -> None:
        """Open the wallets, report ready with a handle, serve until told to leave, then close."""
        send, inbox = trio.open_memory_channel[Envelope](64)
        handle = SessionHandle(self.escrow_id, send)
        structlog.contextvars.bind_contextvars(escrow_id=self.escrow_id)
        try:
            with trio.fail_after(self._open_timeout):
                await self._open_all()
            handle.address = self.address
            task_status.started(handle)
            async with inbox:
                try:
                    next_store = trio.current_time() + self._store_interval
                    while True:
                        with trio.move_on_at(next_store) as waiting:
                            try:
                                message, reply = await inbox.receive()
                            except trio.EndOfChannel:
                                break
                        if waiting.cancelled_caught:
                            # Periodic store: wallet-rpc saves nothing by itself, and kill -9
                            # loses whatever happened since the last store.
                            await self._periodic_store()
                            next_store = trio.current_time() + self._store_interval
                            continue
                        # The reply is closed however this ends, cancellation included (evict
                        # grace or shutdown running out, a failure): its caller then gets
                        # SessionClosed instead of waiting forever, and a payout's retries do
                        # not queue behind a call nobody will ever answer.
                        with reply:
                            if isinstance(message, Leave):
                                self.leave_reason = message.reason
                                break
                            try:
                                result: outcome.Outcome[Any] = outcome.Value(
                                    await self._serve(message)
                                )
                            except SessionFailed as exc:
                                _answer(reply, outcome.Error(SessionFailed(exc.message)))
                                raise
                            except Exception as exc:  # noqa: BLE001 - every error goes to the caller
                                result = outcome.Error(exc)
                            _answer(reply, result)
                finally:  # answer what is still queued: its caller retries
                    while True:
                        try:
                            _, queued = inbox.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        queued.close()
                # Whatever is still queued gets SessionClosed (channel closed) and is retried
                # by the registry on a new session: nothing is silently dropped.
        finally:
            send.close()
            with trio.CancelScope(shield=True):
                await self._close_all()  # bounded by itself: close, else stop the processes

    async def _relink_daemon(self) -> None:
        log.warning("wallet-rpc lost its daemon connection; relinking")
        for role in ROLES:
            try:
                await self._rpc(role).call(
                    "set_daemon", {"address": self._daemon_address, "trusted": True}
                )
            except RpcError as exc:
                log.warning("set_daemon failed", role=role, error=str(exc))

    async def _periodic_store(self) -> None:
        try:
            await self._serve(Store())
        except (WalletdError, RpcError) as exc:
            log.warning("periodic store failed", error=str(exc))

    async def _serve(self, message: Message[object]) -> Any:
        repeated = False
        relinked = False
        while True:
            if any(not h.proc or not h.proc.alive() for h in self._handles.values()):
                await self._restore("process exited")
            try:
                if message.checks_identity:
                    await self._check_identity()
                result = await self._dispatch(message)
                if message.changes_wallets:
                    await self._store_all()  # multisig state is lost on kill -9 unless stored
                return result
            except (*LOST, multisig.MultisigError) as exc:
                if isinstance(exc, multisig.MultisigError) and not isinstance(exc.rpc_error, LOST):
                    raise  # a wallet refused a multisig step: the caller gets the step and why
                log.warning("wallet-rpc lost", error=str(exc))
                await self._restore(type(exc).__name__)
                if not message.idempotent or repeated:
                    raise Unavailable(
                        f"wallet-rpc lost during {type(message).__name__}; wallets restored, "
                        "retry the call"
                    ) from exc
                repeated = True
            except RpcCallError as exc:
                if exc.code != NO_DAEMON_CONNECTION or relinked or not message.idempotent:
                    raise
                # Many wallet-rpc processes on one monerod sometimes lose the daemon link:
                # point them at the daemon again (set_daemon) and retry once.
                relinked = True
                await self._relink_daemon()

    async def _dispatch(self, message: Message[object]) -> Any:
        if not isinstance(message, GetBalance | GetTransfer | Store):
            self._reader_height = None  # anything else may have refreshed the reader wallet
        match message:
            case GetBalance(refresh=refresh):
                return await self._balance(refresh)
            case GetFunding(refresh=refresh, amount=amount):
                return await self._funding(refresh, amount)
            case Refresh():
                await self._rpc("buyer").call("refresh")
                return None
            case GetTransfer(txid=txid):
                return await self._transfer(txid)
            case Store():
                await self._store_all()
                return None
            case ValidateAddress(address=address):
                params = {"address": address, "any_net_type": False, "allow_openalias": False}
                answer = await self._rpc("arbiter").call("validate_address", params)
                return bool(answer.get("valid")) and not answer.get("openalias_address")
            case MultisigStatus():
                return {
                    role: MultisigInfo.from_rpc(await self._rpc(role).call("is_multisig"))
                    for role in ROLES
                }
            case SetupMultisig():
                return await self._setup_multisig()
            case PreparePayout(proposer=proposer, cosigner=cosigner, address=address):
                signers = [self._rpc(proposer), self._rpc(cosigner)]
                await self._store_and_backup("before payout")
                await multisig.refresh(signers)
                await multisig.sync_multisig_info(signers)
                proposal = await multisig.propose(signers[0], address)
                return await multisig.cosign(signers[1], proposal)
            case SubmitPayout(role=role, txids=txids, signed_txset=signed):
                payout = multisig.PayoutTx(txids=txids, signed_txset=signed, amount=0, fee=0)
                return await multisig.submit(self._rpc(role), payout)
            case SyncAll():
                rpcs = [self._rpc(role) for role in ROLES]
                await multisig.refresh(rpcs)
                await multisig.sync_multisig_info(rpcs)
                return None
            case _:
                raise TypeError(f"unknown message {message!r}")

    # ---- operations ------------------------------------------------------------------------------

    async def _setup_multisig(self) -> str:
        if self.address is not None:
            return self.address  # already done (a repeated request)
        rpcs = {role: self._rpc(role) for role in ROLES}
        passwords = {role: self.spec.wallets[role].password for role in ROLES}
        # A wallet created while its wallet-rpc could not reach monerod takes an estimated
        # restore height (a mainnet one, useless on regtest) and never sees its funds: refresh
        # now, so such a wallet fails the creation (which is undone and can be retried) instead
        # of becoming an escrow that silently never gets funded.
        await multisig.refresh(list(rpcs.values()))
        await self._store_and_backup("before multisig setup")
        failpoints.hit("creating_multisig")
        address = await multisig.make_multisig(rpcs, passwords)
        await self._store_all()
        self.address = address
        return address

    async def _store_all(self) -> None:
        await _together(self._store_one, self._handles.values())

    async def _store_one(self, handle: _Handle) -> None:
        await self._rpc(handle.role).call("store")

    async def _store_and_backup(self, label: str) -> None:
        """Store every wallet, then copy their files aside (wallet-rpc writes only on store)."""
        await self._store_all()
        if self._on_backup is not None:
            files = [self.spec.wallets[role].file for role in ROLES]
            await trio.to_thread.run_sync(self._on_backup, self.escrow_id, files, label)

    def _rpc(self, role: Role) -> Any:
        proc = self._handles[role].proc
        if proc is None:
            raise Unavailable(f"{role} wallet is not open")
        return proc.rpc

    async def _balance(self, refresh: bool) -> Balance:
        rpc = self._rpc("buyer")
        if refresh:
            await self._refresh_reader()
        if self._reader_height is None:
            # Auto-refresh is off, so the wallet's height moves only when we refresh it: one
            # get_height after each refresh serves every balance read until the next one.
            self._reader_height = int((await rpc.call("get_height")).get("height", 0))
        bal = await rpc.call("get_balance", {"account_index": 0})
        return Balance(
            balance=int(bal.get("balance", 0)),
            unlocked_balance=int(bal.get("unlocked_balance", 0)),
            blocks_to_unlock=int(bal.get("blocks_to_unlock", 0)),
            height=self._reader_height,
        )

    async def _funding(self, refresh: bool, amount: int | None = None) -> Funding:
        """The escrow's funding, its confirmations counted on the payments that cover `amount`.

        Not the minimum over every incoming transfer: anyone can send the address 1 piconero
        every few blocks, and the newest dust would then hold a fully funded escrow out of
        `ready` for ever. The oldest (most confirmed) transfers are taken first until they
        add up to the amount; the last one taken is the least confirmed of that set."""
        bal = await self._balance(refresh)
        incoming = await self._rpc("buyer").call("get_transfers", {"in": True})
        transfers = sorted(
            (
                (int(t.get("confirmations", 0)), int(t.get("amount", 0)))
                for t in incoming.get("in", [])
            ),
            reverse=True,
        )
        confirmations = transfers[-1][0] if transfers else 0
        if amount is not None:
            covered = 0
            for conf, value in transfers:
                covered += value
                if covered >= amount:
                    confirmations = conf
                    break
        return Funding(
            balance=bal.balance,
            unlocked_balance=bal.unlocked_balance,
            confirmations=confirmations,
            height=bal.height,
        )

    async def _refresh_reader(self) -> None:
        """Scan the chain in the reader wallet; its cached height is stale from here on."""
        await self._rpc("buyer").call("refresh")
        self._reader_height = None
        self._reader_synced = True

    async def _transfer(self, txid: str) -> Transfer | None:
        rpc = self._rpc("buyer")
        try:
            result = await rpc.call("get_transfer_by_txid", {"txid": txid})
        except RpcCallError as exc:
            if exc.code != TX_NOT_FOUND:
                raise
            if self._reader_synced:
                return None
            # Not found in a wallet that has not scanned the chain since it was opened (a
            # cache stored before the transaction arrived): scan, then ask once more.
            await self._refresh_reader()
            return await self._transfer(txid)
        t = result.get("transfer") or {}
        kind = str(t.get("type", "in"))
        return Transfer(
            txid=str(t.get("txid", txid)),
            direction="out" if kind in ("out", "pending", "failed") else "in",
            amount=int(t.get("amount", 0)),
            height=int(t.get("height", 0)),
            confirmations=int(t.get("confirmations", 0)),
            in_pool=kind in ("pool", "pending"),
        )

    # ---- opening, identity, restoring, closing ---------------------------------------------------

    async def _open_all(self) -> None:
        try:
            await _together(self._open_one, self._handles.values())
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._close_all()
            raise
        await self._check_identity()
        self._reader_synced = False
        log.info("session opened", address=_short(self.address))

    async def _open_one(self, handle: _Handle) -> None:
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

    async def _open_in(self, handle: _Handle, rpc: Any) -> None:
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
        await rpc.call("auto_refresh", {"enable": False})

    async def _open_or_repair(self, handle: _Handle, rpc: Any, params: dict[str, str]) -> None:
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
        opener = _Opener(rpc, handle.spec.password, self._open_timeout)
        await self._repair(
            self.escrow_id, handle.role, handle.spec.file, self.address, opener, failure
        )

    async def _check_identity(self) -> None:
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

    async def _restore(self, why: str) -> None:
        self._reader_height = None
        if not self._limiter.allow():
            raise SessionFailed(f"restart limit reached ({why}); session gives up")
        self.restarts += 1
        log.warning("restoring session wallets", why=why, restart=self.restarts)
        lost: list[_Handle] = []
        for handle in self._handles.values():
            if handle.proc is None or not handle.proc.alive() or not await self._still_open(handle):
                lost.append(handle)
        with trio.fail_after(self._open_timeout):
            await _together(self._reopen, lost)
        await self._check_identity()
        for handle in lost:
            if self._on_restart is not None:
                maybe = self._on_restart(self.escrow_id, handle.role, why)
                if maybe is not None:
                    await maybe

    async def _still_open(self, handle: _Handle) -> bool:
        assert handle.proc is not None
        try:
            await handle.proc.rpc.call("get_address", {"account_index": 0}, timeout=5.0)
        except (RpcError, OSError):
            return False
        return True

    async def _reopen(self, handle: _Handle) -> None:
        proc, handle.proc = handle.proc, None
        if proc is not None:
            await self._pool.discard(proc)
        await self._open_one(handle)
        if self.address is not None:
            # A killed process lost everything since its last store, chain sync included: catch
            # up before answering, or a transaction the wallet knew a moment ago reads as unknown.
            # (Keyed on the multisig address, not spec.create: an escrow walletd created keeps
            # its creating spec for the session's whole life.)
            if handle.role == "buyer":
                await self._refresh_reader()
            else:
                await self._rpc(handle.role).call("refresh")

    async def _close_all(self) -> None:
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

    async def _close_one(self, handle: _Handle) -> None:
        proc = handle.proc  # stays ours (and discarded by _close_all) until handed back below
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
            await self._pool.release(proc)
        else:
            await self._pool.discard(proc)
        handle.proc = None  # only now: a hand-back cut short is finished by _close_all's discard


async def _together(fn: Callable[[_Handle], Awaitable[None]], handles: Iterable[_Handle]) -> None:
    """Run `fn` on each handle concurrently (one per process); raise the first real error
    rather than an ExceptionGroup, so callers see e.g. RpcCallError(-1) as such."""
    try:
        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(fn, handle)
    except BaseExceptionGroup as group:
        raise first_error(group) from group


def _answer(reply: Reply, result: outcome.Outcome[Any]) -> None:
    # The caller may have timed out and gone: that must never crash the actor.
    try:
        reply.send_nowait(result)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        log.debug("reply dropped: caller gone")


def _short(address: str | None) -> str | None:
    return f"{address[:8]}…{address[-6:]}" if address else None
