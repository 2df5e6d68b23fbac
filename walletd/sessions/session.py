"""An escrow session: one supervised trio task owning the escrow's three wallet-rpc handles.

The session opens the buyer, vendor and arbiter wallets concurrently (each in its own process),
turns auto-refresh off (it would run on wallet-rpc's only RPC thread and stall our calls), checks
that each process holds the wallet it expects, then serves its inbox one message at a time.
How the handles open, prove their identity and close, and why a talk to the wrong wallet cannot
happen, is `handles` (`WalletHandles`, a base class of `EscrowSession`); this module is the
actor loop, the dispatch of messages, the restart policy and the operations.

The three handles fail together (OTP's one_for_all): when a process dies, hangs or loses its
wallet, the session restores the whole set (a fresh process for each lost handle, every wallet
reopened and its address checked) before it serves again. Restorations are bounded by an
intensity/period limit on `trio.current_time()`; past it the session fails as a unit and the
registry reports it.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import attrs
import outcome
import structlog
import trio

from walletd.errors import (
    DamagedWallet,
    Fenced,
    LeaseLost,
    NoWalletFile,
    RpcAuthError,
    RpcCallError,
    RpcError,
    RpcTimeout,
    RpcUnreachable,
    SessionClosed,
    SessionFailed,
    Unavailable,
    WalletdError,
)
from walletd.escrows.model import PayoutProof
from walletd.ids import ROLES, Role
from walletd.ops import failpoints
from walletd.sessions.handles import (
    CLOSE_WALLET_TIMEOUT,
    Handle,
    LockProbe,
    Repairer,
    SessionSpec,
    WalletHandles,
    WalletSpec,
    together,
)
from walletd.sessions.messages import (
    Balance,
    Funding,
    GetBalance,
    GetFunding,
    GetPayoutProof,
    GetTransfer,
    Leave,
    Message,
    MultisigInfo,
    MultisigStatus,
    PreExchange,
    PreparePayout,
    Refresh,
    SetupMultisig,
    Store,
    SubmitPayout,
    SyncAll,
    Transfer,
    ValidateAddress,
)
from walletd.sessions.warm_payout import Exchanged, incoming, prepare
from walletd.wallets import multisig
from walletd.wallets.children import ProcessPool
from walletd.wallets.rpc import WalletRpc

__all__ = [
    "EscrowSession",
    "OnStored",
    "SessionFailed",
    "SessionHandle",
    "SessionSpec",
    "WalletSpec",
]

log = structlog.get_logger(__name__)

R = TypeVar("R")
Reply = trio.MemorySendChannel[outcome.Outcome[object]]
Envelope = tuple[Message[object], Reply]

# Errors that mean "this handle's process is gone or no longer holds our wallet".
LOST = (RpcUnreachable, RpcAuthError, RpcTimeout, NoWalletFile)
TX_NOT_FOUND = -8
NO_DAEMON_CONNECTION = -38  # wallet-rpc lost its link to monerod (monero issue 5044)


# (escrow_id, role, wallet file name), awaited after each store of that wallet succeeded:
# in a cluster, the save of its files to the database (walletd.cluster.wallet_files).
OnStored = Callable[[str, Role, str], Awaitable[object]]


class SessionHandle:
    """The registry's and callers' side of a session: a mailbox and nothing else."""

    def __init__(self, escrow_id: str, send: trio.MemorySendChannel[Envelope]) -> None:
        self.escrow_id = escrow_id
        self._send = send
        self.address: str | None = None
        # The session holds a multisig info exchange that a payout may use (`PreExchange`).
        self.exchanged = False

    async def request(self, message: Message[R]) -> R:
        """Send `message` and wait for its reply; SessionClosed if the session is gone."""
        reply_send, reply_recv = trio.open_memory_channel[outcome.Outcome[object]](1)
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
        reply_send, _ = trio.open_memory_channel[outcome.Outcome[object]](1)
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


class EscrowSession(WalletHandles):
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
        lock_probe: LockProbe | None = None,
        on_damage: Callable[[str, Role, str], None] | None = None,
        on_stored: OnStored | None = None,
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
        self._lock_probe = lock_probe
        self._on_damage = on_damage  # (escrow_id, role, wallet-rpc's message) once reopened
        self._on_stored = on_stored
        # The last store's files did not all reach on_stored's keeper (the cluster database).
        self.unsaved = False
        self._handles = {role: Handle(role, spec.wallets[role]) for role in ROLES}
        self.address = spec.address
        self.leave_reason: str | None = None
        self.restarts = 0
        self._reader_height: int | None = None
        # The reader wallet synced with the chain since this process opened it: until then a
        # transaction it does not know may be one it has not scanned yet.
        self._reader_synced = False
        self._handle: SessionHandle | None = None
        # The last exchange of multisig info among the three wallets and what it covered; None
        # when there is none a payout could use (see warm_payout).
        self._exchanged: Exchanged | None = None
        self._payout_begun = False  # a PreparePayout was served: no more pre-exchanges here
        # Called right before a money-moving wallet call (sign, submit): raises if this host
        # may no longer move the escrow's funds (a cluster: its lease lapsed, `LeasedSession`).
        self.lease_check: Callable[[], None] = lambda: None
        self.warm_payouts = 0  # payouts prepared without an exchange (tests, bench)

    # ---- the actor loop --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[SessionHandle]) -> None:
        """Open the wallets, report ready with a handle, serve until told to leave, then close."""
        send, inbox = trio.open_memory_channel[Envelope](64)
        handle = self._handle = SessionHandle(self.escrow_id, send)
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
                                result: outcome.Outcome[object] = outcome.Value(
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
            # Only ever the daemon this process was started with: set_daemon to another one
            # breaks multisig transaction creation (monero issue 10246); a switch restarts it.
            proc = self._handles[role].proc
            address = (proc.daemon_address if proc else None) or self._daemon_address
            try:
                await self._rpc(role).call("set_daemon", {"address": address, "trusted": True})
            except RpcError as exc:
                log.warning("set_daemon failed", role=role, error=str(exc))

    async def _periodic_store(self) -> None:
        try:
            await self._serve(Store())
        except LeaseLost:
            raise  # the session must stop: another host may own these wallets now
        except (WalletdError, RpcError) as exc:
            # Including a save that failed (database down): the next store saves again.
            log.warning("periodic store failed", error=str(exc))

    async def _serve(self, message: Message[object]) -> object:
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
            except (*LOST, multisig.MultisigError, DamagedWallet) as exc:
                damage = _damage_in(exc)
                if damage is not None:
                    await self._drop_damaged(damage)
                elif isinstance(exc, multisig.MultisigError) and not isinstance(
                    exc.rpc_error, LOST
                ):
                    raise  # a wallet refused a multisig step: the caller gets the step and why
                else:
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

    async def _dispatch(self, message: Message[object]) -> object:
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
            case PreparePayout():
                return await self._prepare_payout(message)
            case PreExchange():
                return await self._pre_exchange()
            case GetPayoutProof(roles=roles, txid=txid, address=address):
                return await self._payout_proof(roles, txid, address)
            case SubmitPayout(role=role, txids=txids, signed_txset=signed):
                payout = multisig.PayoutTx(txids=txids, signed_txset=signed, amount=0, fee=0)
                self.lease_check()
                return await multisig.submit(self._rpc(role), payout)
            case SyncAll():
                self._set_exchanged(None)  # fresh exports: older imports no longer match them
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

    async def _payout_proof(self, roles: tuple[Role, ...], txid: str, address: str) -> PayoutProof:
        """The tx key and an outgoing proof from the first signer that has the key. Neither
        is logged: a failure names the wallet and the RPC error only."""
        refusal: RpcCallError | None = None
        for role in roles:
            rpc = self._rpc(role)
            try:
                key = await rpc.call("get_tx_key", {"txid": txid})
                params = {"txid": txid, "address": address, "message": ""}
                proof = await rpc.call("get_tx_proof", params)
            except RpcCallError as exc:  # this wallet has no key for it: ask the next
                refusal = exc
                continue
            return PayoutProof(txid, address, str(key["tx_key"]), str(proof["signature"]))
        raise refusal or RpcCallError("get_tx_key", 0, "no wallet to ask")

    async def _prepare_payout(self, message: PreparePayout) -> object:
        proposer, cosigner, address = message.proposer, message.cosigner, message.address
        signers = {proposer: self._rpc(proposer), cosigner: self._rpc(cosigner)}
        # Used once at most, whatever happens next: a proposal consumes its signing nonces.
        marker = self._exchanged
        self._set_exchanged(None)
        self._payout_begun = True
        await self._store_and_backup("before payout")
        await multisig.refresh(list(signers.values()))
        payout, warm = await prepare(
            signers,
            address,
            marker,
            priority=message.priority,
            max_fee_per_byte=message.max_fee_per_byte,
            before_sign=self.lease_check,
        )
        self.warm_payouts += warm
        return payout

    async def _pre_exchange(self) -> bool:
        """Exchange multisig info among the three wallets ahead of a payout (`PreExchange`)."""
        if self._payout_begun or self.address is None:
            return False
        rpcs = {role: self._rpc(role) for role in ROLES}
        await multisig.refresh(list(rpcs.values()))
        if self._exchanged is not None:
            now = {role: await incoming(rpc) for role, rpc in rpcs.items()}
            if now == self._exchanged.incoming:
                return False  # nothing arrived since: the last exchange still stands
        self._set_exchanged(None)
        await multisig.sync_multisig_info(list(rpcs.values()))
        # No refresh since the exports: they covered exactly the transfers seen now.
        self._set_exchanged(Exchanged({role: await incoming(rpc) for role, rpc in rpcs.items()}))
        return True

    def _set_exchanged(self, marker: Exchanged | None) -> None:
        self._exchanged = marker
        if self._handle is not None:
            self._handle.exchanged = marker is not None

    async def _store_all(self) -> None:
        await together(self._store_one, self._handles.values())
        await self._saved()

    async def _saved(self) -> None:
        """Hand each stored wallet to `on_stored` (in a cluster: its files to the database).

        A refusal because the lease is stale (`Fenced`) stops the session (`LeaseLost`). Any
        other failure (the database unreachable...) is logged, the other wallets are still
        handed over, and the store then fails with Unavailable: a message that changed the
        wallets is not answered as done while the only copy of the change is on this host's disk
        (a creation is then undone, a payout step retried), and a periodic store logs it and
        saves again next time (`save` adds a version only when the files changed)."""
        if self._on_stored is None:
            return
        failed: list[Role] = []
        for role in ROLES:  # one at a time: a lost lease stops the rest at once
            try:
                await self._on_stored(self.escrow_id, role, self.spec.wallets[role].file)
            except Fenced as exc:
                log.error("wallet files refused, lease lost: session stops", role=role)
                raise LeaseLost(f"escrow {self.escrow_id}: lease lost, wallets closed") from exc
            except Exception as exc:  # noqa: BLE001 - any failure of the keeper is reported, below
                log.warning(
                    "wallet stored but not saved off the host",
                    role=role,
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
                failed.append(role)
        self.unsaved = bool(failed)
        if failed:
            raise Unavailable(
                f"wallets stored, but not saved off the host ({', '.join(failed)}); retry"
            )

    async def _store_one(self, handle: Handle) -> None:
        await self._rpc(handle.role).call("store")

    async def _store_and_backup(self, label: str) -> None:
        """Store every wallet, then copy their files aside (wallet-rpc writes only on store)."""
        await self._store_all()
        if self._on_backup is not None:
            files = [self.spec.wallets[role].file for role in ROLES]
            await trio.to_thread.run_sync(self._on_backup, self.escrow_id, files, label)

    def _rpc(self, role: Role) -> WalletRpc:
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

    # ---- restoring -----------------------------------------------------------------------------

    async def _restore(self, why: str) -> None:
        self._reader_height = None
        # A reopened wallet may have lost imports it never stored: exchange afresh.
        self._set_exchanged(None)
        if not self._limiter.allow():
            raise SessionFailed(f"restart limit reached ({why}); session gives up")
        self.restarts += 1
        log.warning("restoring session wallets", why=why, restart=self.restarts)
        lost: list[Handle] = []
        for handle in self._handles.values():
            if handle.proc is None or not handle.proc.alive() or not await self._still_open(handle):
                lost.append(handle)
        with trio.fail_after(self._open_timeout):
            await together(self._reopen, lost)
        await self._check_identity()
        for handle in lost:
            if self._on_restart is not None:
                maybe = self._on_restart(self.escrow_id, handle.role, why)
                if maybe is not None:
                    await maybe

    async def _drop_damaged(self, exc: DamagedWallet) -> None:
        """A wallet said it is damaged (in memory or in its cache file): kill its process without
        saving anything of it, and open the wallet again from its files; a damaged cache there
        fails that open and goes to the repairer (walletd.wallets.repair), which proves the
        damage before it touches a file."""
        damaged = [
            h
            for h in self._handles.values()
            if h.proc is not None and h.proc.rpc.base_url == exc.url
        ]
        if not damaged:
            raise exc  # not one of this session's processes: nothing here to drop
        for handle in damaged:
            log.error(
                "wallet reports damage; dropped unsaved and reopened",
                role=handle.role,
                error=exc.rpc_message,
            )
            proc, handle.proc = handle.proc, None
            assert proc is not None
            await self._pool.discard(proc, damaged=True)
        await self._restore(f"damaged wallet: {exc.rpc_message}")
        if self._on_damage is not None:
            for handle in damaged:
                self._on_damage(self.escrow_id, handle.role, exc.rpc_message)

    async def _reopen(self, handle: Handle) -> None:
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


def _damage_in(exc: Exception) -> DamagedWallet | None:
    """The damage report in `exc`, also when a multisig step carries it."""
    if isinstance(exc, DamagedWallet):
        return exc
    if isinstance(exc, multisig.MultisigError) and isinstance(exc.rpc_error, DamagedWallet):
        return exc.rpc_error
    return None


def _answer(reply: Reply, result: outcome.Outcome[object]) -> None:
    # The caller may have timed out and gone: that must never crash the actor.
    try:
        reply.send_nowait(result)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        log.debug("reply dropped: caller gone")
