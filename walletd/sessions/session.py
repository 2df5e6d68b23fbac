"""An escrow session: one supervised trio task owning the escrow's three wallet-rpc handles.

The session opens the buyer, vendor and arbiter wallets concurrently (each in its own process),
turns auto-refresh off (it would run on wallet-rpc's only RPC thread and stall our calls), checks
that each process holds the wallet it expects, then serves its inbox one message at a time.
How the handles open, prove their identity and close, and why a talk to the wrong wallet cannot
happen, is `handles` (the `WalletHandles` the session owns); reads of what the escrow holds go
to its reader wallet (`reader`); callers reach the session through its mailbox (`mailbox`). This
module is the actor loop, the dispatch of messages, the restart policy and the operations.

The three handles fail together (OTP's one_for_all): when a process dies, hangs or loses its
wallet, the session restores the whole set (a fresh process for each lost handle, every wallet
reopened and its address checked) before it serves again. Restorations are bounded by an
intensity/period limit on `trio.current_time()`; past it the session fails as a unit and the
registry reports it.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

import attrs
import outcome
import structlog
import trio

from walletd.errors import (
    DamagedWallet,
    Fenced,
    LeaseLost,
    MultisigError,
    NoWalletFile,
    RpcAuthError,
    RpcCallError,
    RpcError,
    RpcTimeout,
    RpcUnreachable,
    SessionFailed,
    Unavailable,
    WalletdError,
)
from walletd.escrows.model import PayoutProof
from walletd.ids import ROLES, Role
from walletd.ops import failpoints
from walletd.sessions.handles import (
    Handle,
    LockProbe,
    Repairer,
    SessionSpec,
    WalletHandles,
    WalletSpec,
    together,
)
from walletd.sessions.limits import SessionStatistics
from walletd.sessions.mailbox import Envelope, SessionHandle, answer
from walletd.sessions.messages import (
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
    ValidateAddress,
)
from walletd.sessions.reader import Reader
from walletd.sessions.warm_payout import Exchanged, incoming, prepare
from walletd.wallets import multisig
from walletd.wallets.children import ProcessPool
from walletd.wallets.rpc import WalletRpc

__all__ = ["EscrowSession", "OnStored", "SessionSpec", "WalletSpec"]

log = structlog.get_logger(__name__)

# Errors that mean "this handle's process is gone or no longer holds our wallet".
LOST = (RpcUnreachable, RpcAuthError, RpcTimeout, NoWalletFile)
NO_DAEMON_CONNECTION = -38  # wallet-rpc lost its link to monerod (monero issue 5044)


# (escrow_id, role, wallet file name), awaited after each store of that wallet succeeded:
# in a cluster, the save of its files to the database (walletd.cluster.wallet_files).
OnStored = Callable[[str, Role, str], Awaitable[object]]


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
        lock_probe: LockProbe | None = None,
        on_damage: Callable[[str, Role, str], None] | None = None,
        on_stored: OnStored | None = None,
    ) -> None:
        self.spec = spec
        self.escrow_id = spec.escrow_id
        self._wallets = WalletHandles(
            spec,
            pool,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            on_call=on_call,
            repair=repair,
            lock_probe=lock_probe,
        )
        self._reader = Reader(lambda: self._rpc("buyer"))
        self._open_timeout = open_timeout
        self._limiter = RestartLimiter(restart_intensity, restart_period)
        self._on_restart = on_restart
        self._on_backup = on_backup
        self._store_interval = store_interval
        self._daemon_address = daemon_address
        self._on_damage = on_damage  # (escrow_id, role, wallet-rpc's message) once reopened
        self._on_stored = on_stored
        # The last store's files did not all reach on_stored's keeper (the cluster database).
        self.unsaved = False
        self.leave_reason: str | None = None
        self._restores = 0  # restorations of the set of handles
        self._wallet_rpc_restarts = 0  # processes replaced by them (one per lost handle)
        self._handle: SessionHandle | None = None
        # The last exchange of multisig info among the three wallets and what it covered; None
        # when there is none a payout could use (see warm_payout).
        self._exchanged: Exchanged | None = None
        self._payout_begun = False  # a PreparePayout was served: no more pre-exchanges here
        # Called right before a money-moving wallet call (sign, submit): raises if this host
        # may no longer move the escrow's funds (a cluster: its lease lapsed, `LeasedSession`).
        self.lease_check: Callable[[], None] = lambda: None
        self._warm_payouts = 0  # payouts prepared without an exchange

    def statistics(self) -> SessionStatistics:
        """What this session did so far (the registry sums them over its sessions)."""
        return SessionStatistics(
            restores=self._restores,
            wallet_rpc_restarts=self._wallet_rpc_restarts,
            warm_payouts=self._warm_payouts,
        )

    async def fence(self) -> None:
        """The escrow's lease is lost: kill every process of the session unsaved, and open no
        wallet again (`WalletHandles.fence`; it refuses opens before its first checkpoint)."""
        await self._wallets.fence()

    # ---- the actor loop --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[SessionHandle]) -> None:
        """Open the wallets, report ready with a handle, serve until told to leave, then close."""
        send, inbox = trio.open_memory_channel[Envelope](64)
        handle = self._handle = SessionHandle(self.escrow_id, send)
        structlog.contextvars.bind_contextvars(escrow_id=self.escrow_id)
        try:
            with trio.fail_after(self._open_timeout):
                await self._wallets.open_all()
            self._reader.synced = False
            handle.address = self._wallets.address
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
                                answer(reply, outcome.Error(SessionFailed(exc.message)))
                                raise
                            except Exception as exc:  # noqa: BLE001 - every error goes to the caller
                                result = outcome.Error(exc)
                            answer(reply, result)
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
                await self._wallets.close_all()  # bounded by itself: close, else stop the processes

    async def _relink_daemon(self) -> None:
        log.warning("wallet-rpc lost its daemon connection; relinking")
        for role in ROLES:
            # Only ever the daemon this process was started with: set_daemon to another one
            # breaks multisig transaction creation (monero issue 10246); a switch restarts it.
            proc = self._wallets.proc(role)
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
            if self._wallets.any_exited():
                await self._restore("process exited")
            try:
                if message.checks_identity:
                    await self._wallets.check_identity()
                result = await self._dispatch(message)
                if message.changes_wallets:
                    await self._store_all()  # multisig state is lost on kill -9 unless stored
                return result
            except (*LOST, MultisigError, DamagedWallet) as exc:
                damage = _damage_in(exc)
                if damage is not None:
                    await self._drop_damaged(damage)
                elif isinstance(exc, MultisigError) and not isinstance(exc.rpc_error, LOST):
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
            self._reader.forget()  # anything else may have refreshed the reader wallet
        match message:
            case GetBalance(refresh=refresh):
                return await self._reader.balance(refresh)
            case GetFunding(refresh=refresh, amount=amount):
                return await self._reader.funding(refresh, amount)
            case Refresh():
                await self._rpc("buyer").call("refresh")
                return None
            case GetTransfer(txid=txid):
                return await self._reader.transfer(txid)
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
        if self._wallets.address is not None:
            return self._wallets.address  # already done (a repeated request)
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
        self._wallets.address = address
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
        self._warm_payouts += warm
        return payout

    async def _pre_exchange(self) -> bool:
        """Exchange multisig info among the three wallets ahead of a payout (`PreExchange`)."""
        if self._payout_begun or self._wallets.address is None:
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
        await together(self._store_one, self._wallets.all())
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
        return self._wallets.rpc(role)

    # ---- restoring -----------------------------------------------------------------------------

    async def _restore(self, why: str) -> None:
        self._reader.forget()
        # A reopened wallet may have lost imports it never stored: exchange afresh.
        self._set_exchanged(None)
        if not self._limiter.allow():
            raise SessionFailed(f"restart limit reached ({why}); session gives up")
        self._restores += 1
        log.warning("restoring session wallets", why=why, restart=self._restores)
        lost = await self._wallets.lost()
        with trio.fail_after(self._open_timeout):
            await together(self._reopen, lost)
        await self._wallets.check_identity()
        for handle in lost:
            self._wallet_rpc_restarts += 1
            if self._on_restart is not None:
                maybe = self._on_restart(self.escrow_id, handle.role, why)
                if maybe is not None:
                    await maybe

    async def _drop_damaged(self, exc: DamagedWallet) -> None:
        """A wallet said it is damaged (in memory or in its cache file): kill its process without
        saving anything of it, and open the wallet again from its files; a damaged cache there
        fails that open and goes to the repairer (walletd.wallets.repair), which proves the
        damage before it touches a file."""
        damaged = await self._wallets.drop_damaged(exc.url, exc.rpc_message)
        if not damaged:
            raise exc  # not one of this session's processes: nothing here to drop
        await self._restore(f"damaged wallet: {exc.rpc_message}")
        if self._on_damage is not None:
            for role in damaged:
                self._on_damage(self.escrow_id, role, exc.rpc_message)

    async def _reopen(self, handle: Handle) -> None:
        await self._wallets.reopen(handle)
        if self._wallets.address is not None:
            # A killed process lost everything since its last store, chain sync included: catch
            # up before answering, or a transaction the wallet knew a moment ago reads as unknown.
            # (Keyed on the multisig address, not spec.create: an escrow walletd created keeps
            # its creating spec for the session's whole life.)
            if handle.role == "buyer":
                await self._reader.refresh()
            else:
                await self._rpc(handle.role).call("refresh")


def _damage_in(exc: Exception) -> DamagedWallet | None:
    """The damage report in `exc`, also when a multisig step carries it."""
    if isinstance(exc, DamagedWallet):
        return exc
    if isinstance(exc, MultisigError) and isinstance(exc.rpc_error, DamagedWallet):
        return exc.rpc_error
    return None
