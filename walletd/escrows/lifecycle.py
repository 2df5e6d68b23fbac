"""Paying escrows out, exactly once, and finishing at start-up what a stopped walletd left.

Creation is `walletd.escrows.creation`; this module hands `create` to it.

Payout (release or refund), recorded before every step that could send money::

    intent    the kind and address are recorded; nothing signed yet. Redoing from here is safe.
    signed    the fully signed blob and its txids are recorded BEFORE submitting. From here only
              this blob is ever submitted; resubmitting it yields the same txids, never a 2nd tx.
    submitted the daemon accepted it; the monitor counts its confirmations.
    refused   the co-signer's check found the proposal was not this payout (payout_check):
              nothing was signed. Final for this attempt: no resume or recovery drives it
              again; a new release/refund call replaces it with a fresh intent (any kind and
              address: nothing was signed, so nothing can be double spent) and is checked anew.

Payouts run in the lifecycle's own nursery, not in the caller's task: a client that times out or
disconnects never cancels a payout half way; its retry finds the same payout and waits for it.

Every phase change is compare-and-set on the phase and txids its writer read (`ExpectedPayout`),
and each is written under the holding the driver read the payout in: a driver whose view went
stale (another took the payout further meanwhile) writes nothing (`PayoutChanged`, `Fenced`).
Right before each money-moving wallet call (sign, submit) the driver's lease must still be valid
by the boot clock (`Ownership.check_held`), and the session checks its own again (`LeasedSession`).

Each time a host starts driving a payout it records the attempt on it; which payouts a cluster
retries, when, and on which host, is `walletd.escrows.retries`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import attrs
import structlog
import trio

from walletd.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    NotReady,
    PayoutChanged,
    PayoutRefused,
    RpcCallError,
    StoreUnavailable,
    Unavailable,
    WalletdError,
    WalletError,
    public_error,
)
from walletd.escrows.creation import Creation
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    ExpectedPayout,
    Payout,
    PayoutKind,
    PayoutPhase,
    PayoutProof,
    utcnow,
)
from walletd.escrows.retries import RESUMABLE, PayoutRetries, attempted, retry_source
from walletd.escrows.service import EscrowService
from walletd.ids import Role
from walletd.ops import failpoints
from walletd.ops.metrics import Metrics
from walletd.sessions.messages import (
    GetPayoutProof,
    PreparePayout,
    SubmitPayout,
    SyncAll,
    ValidateAddress,
)
from walletd.sessions.registry import Caller, Registry
from walletd.state.events import EventLog
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore
from walletd.state.vault import Vault
from walletd.wallets import multisig
from walletd.wallets.chain import Chain

__all__ = ["SIGNERS", "Lifecycle", "check_address_format"]

log = structlog.get_logger(__name__)

# Who signs what: the arbiter co-signs both; the receiving side proposes.
SIGNERS: dict[PayoutKind, tuple[Role, Role]] = {
    PayoutKind.RELEASE: ("vendor", "arbiter"),
    PayoutKind.REFUND: ("buyer", "arbiter"),
}
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")


def check_address_format(address: str) -> str:
    """Reject anything that is not shaped like a Monero address before any wallet sees it.

    wallet-rpc treats a string that does not parse as an OpenAlias name and asks DNS, so a name
    such as `donate.getmonero.org` must never reach it."""
    if len(address) not in (95, 106) or not _BASE58.fullmatch(address) or address[0] not in "48":
        raise InvalidRequest(
            "address must be a standard (95 characters) or integrated (106) Monero address; "
            "OpenAlias names are not accepted"
        )
    return address


class Lifecycle:
    def __init__(
        self,
        *,
        store: StateStore,
        escrows: EscrowService,
        registry: Registry,
        events: EventLog,
        vault: Vault,
        chain: Chain,
        wallet_dir: Path,
        state_dir: Path,
        metrics: Metrics,
        daemon_check: float = 2.0,
        fee_priority: int = 0,
        fee_tolerance: float = 2.0,
        ownership: Ownership,
    ) -> None:
        self._ownership: Ownership = ownership
        self._metrics = metrics
        self._fee_priority = fee_priority  # wallet-rpc's priority for payout sweeps
        self._fee_tolerance = fee_tolerance  # a payout's fee may be this times the expected one
        self._store = store
        self._escrows = escrows
        self._registry = registry
        self._events = events
        self._chain = chain
        self._locks: dict[str, trio.Lock] = {}
        self._payouts: dict[str, trio.Event] = {}
        self._retries = PayoutRetries(
            store=store,
            escrows=escrows,
            ownership=self._ownership,
            metrics=metrics,
            run_payout=self._run_payout,
            driving=self._payouts.__contains__,
        )
        self._creation = Creation(
            store=store,
            escrows=escrows,
            registry=registry,
            events=events,
            vault=vault,
            chain=chain,
            wallet_dir=wallet_dir,
            state_dir=state_dir,
            daemon_check=daemon_check,
            ownership=self._ownership,
        )
        self._nursery: trio.Nursery | None = None
        self.recovered = trio.Event()  # recover() is done: walletd may report itself ready

    async def create(
        self, escrow_id: str, amount: int, confirmations: int | None, digest: str
    ) -> tuple[EscrowRecord, bool]:
        """Create the escrow's wallets and multisig (`walletd.escrows.creation`)."""
        return await self._creation.create(escrow_id, amount, confirmations, digest)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self.recover()
            except StoreUnavailable as exc:  # serve anyway: /v1/health reports the database
                log.error("start-up recovery stopped", error=exc.message)
            await self._ownership.adopt_orphans(self._retries.run)  # a cluster's dead hosts
            await trio.sleep_forever()

    # ---- payouts ---------------------------------------------------------------------------------

    async def payout(self, escrow_id: str, kind: PayoutKind, address: str) -> EscrowRecord:
        """Release or refund the whole balance to `address`, at most once (see module doc)."""
        check_address_format(address)
        escrows = self._escrows
        await escrows.get(escrow_id)  # NotFound before anything is kept for this id
        lock = self._locks.setdefault(escrow_id, trio.Lock())
        try:
            # Its intent is written under the escrow's lease (a cluster), like every step.
            async with self._ownership.holding(escrow_id):
                await self._payout_locked(lock, escrow_id, kind, address)
        finally:
            # One lock per escrow with a payout would grow without bound: drop it once nobody
            # holds or waits for it (trio hands a released lock straight to its next waiter).
            if not lock.locked() and self._locks.get(escrow_id) is lock:
                del self._locks[escrow_id]
        return await escrows.get(escrow_id)

    async def _payout_locked(
        self, lock: trio.Lock, escrow_id: str, kind: PayoutKind, address: str
    ) -> None:
        escrows = self._escrows
        async with lock:
            rec = await escrows.get(escrow_id)
            refused = rec.payout is not None and rec.payout.phase is PayoutPhase.REFUSED
            if rec.payout is not None and not refused:
                if rec.payout.kind != kind:
                    raise Conflict(
                        f"escrow {escrow_id!r} already has a {rec.payout.kind} payout; "
                        f"a {kind} cannot follow it"
                    )
                if rec.payout.address != address:
                    raise Conflict(
                        f"escrow {escrow_id!r} already has a {rec.payout.kind} payout "
                        "to another address"
                    )
            elif kind.paying_state not in rec.state.moves:
                raise NotReady(f"escrow {escrow_id!r} is {rec.state}; a payout needs ready")
            else:
                await self._validate(escrow_id, address)
                rec = await self._store.update_escrow(
                    escrow_id,
                    payout=Payout(
                        kind=kind, address=address, phase=PayoutPhase.INTENT, created_at=utcnow()
                    ),
                    # none, or the refused one read above: a concurrent new intent loses
                    expect_payout=ExpectedPayout.of(rec.payout),
                )
                log.info("payout recorded", escrow_id=escrow_id, kind=kind)
            if rec.payout is not None and rec.payout.phase in RESUMABLE:
                await self._run_payout(escrow_id)

    async def _validate(self, escrow_id: str, address: str) -> None:
        # The payout's first call: it waits for a slot as a money-moving call, not as a read.
        valid = await self._registry.call(
            escrow_id, ValidateAddress(address), caller=Caller.API_MONEY
        )
        if not valid:
            raise InvalidRequest("address is not a valid Monero address for this network")

    async def _run_payout(self, escrow_id: str) -> None:
        """Drive the payout in the lifecycle's nursery; wait for it here."""
        done = self._payouts.get(escrow_id)
        if done is None:
            done = self._payouts[escrow_id] = trio.Event()
            assert self._nursery is not None
            self._nursery.start_soon(self._drive_payout, escrow_id, done)
        await done.wait()
        rec = await self._escrows.get(escrow_id)
        error = rec.payout.last_error if rec.payout else None
        if rec.payout and rec.payout.phase is PayoutPhase.REFUSED:
            raise Conflict(f"payout refused before signing, nothing was signed: {error}")
        if rec.payout and rec.payout.phase is not PayoutPhase.SUBMITTED:
            raise Unavailable(f"payout not submitted yet ({error}); repeat the call to resume it")

    async def _drive_payout(self, escrow_id: str, done: trio.Event) -> None:
        submitted = False
        try:
            # Every step's write is fenced by the escrow's lease (a cluster): held throughout.
            async with self._ownership.holding(escrow_id):
                await self._payout_steps(escrow_id)
            submitted = True
        except Exception as exc:  # noqa: BLE001 - a payout task must never take walletd down
            log.error("payout step failed", escrow_id=escrow_id, error=str(exc))
            await self._record_failure(escrow_id, exc)
        finally:
            del self._payouts[escrow_id]
            done.set()
        if submitted:
            # After the answer, not in it: the payout is recorded and submitted already.
            await self._sync_after_payout(escrow_id)

    async def _record_failure(self, escrow_id: str, exc: Exception) -> None:
        """Keep why the attempt stopped on the payout, if it is still where it stopped."""
        try:
            rec = await self._escrows.get(escrow_id)
            payout = rec.payout
            if payout is None:
                return
            self._metrics.payout(payout.kind.value, "failed")
            if isinstance(exc, PayoutChanged) or payout.phase not in RESUMABLE:
                return  # another writer took it further: what it recorded stands
            error = public_error(exc).message[:300]
            await self._store.update_escrow(
                escrow_id,
                payout=attrs.evolve(payout, last_error=error),
                expect_payout=ExpectedPayout.of(payout),
            )
        except (StoreUnavailable, PayoutChanged) as db_exc:  # the database, the lease, a race
            log.error("payout error not recorded", escrow_id=escrow_id, error=db_exc.message)

    async def _payout_steps(self, escrow_id: str) -> None:
        registry = self._registry
        rec = await self._escrows.get(escrow_id)
        assert rec.payout is not None
        payout = rec.payout
        proposer, cosigner = SIGNERS[payout.kind]
        if payout.phase is PayoutPhase.REFUSED:
            return  # never signed again (RESUMABLE); a new release/refund call replaces it
        # Recorded before anything else: a retry is spaced by its back-off, and another host
        # adopts it only if this one is no longer live.
        tried = attempted(payout, self._ownership.host)
        await self._store.update_escrow(
            escrow_id, payout=tried, expect_payout=ExpectedPayout.of(payout)
        )
        payout = tried
        await self._daemon_caught_up(rec)
        if payout.phase is PayoutPhase.INTENT:
            priority = self._fee_priority
            per_byte = await self._chain.fee_per_byte(priority)
            prepare = PreparePayout(
                proposer,
                cosigner,
                payout.address,
                priority=priority,
                max_fee_per_byte=math.ceil(per_byte * self._fee_tolerance),
            )
            payout = attrs.evolve(payout, fee_priority=priority)
            self._ownership.check_held(escrow_id)  # signs: this holding's lease must be valid
            try:
                tx = await registry.call(escrow_id, prepare, caller=Caller.PAYOUT)
            except PayoutRefused as exc:
                await self._refuse(escrow_id, payout, exc.reason)
                return
            intent = ExpectedPayout.of(payout)
            payout = attrs.evolve(
                payout,
                phase=PayoutPhase.SIGNED,
                txids=tuple(tx.txids),
                signed_txset=tx.signed_txset,
                amount=tx.amount,
                fee=tx.fee,
                last_error=None,
            )
            # Durable before it can be sent: from here only this blob is ever submitted. Only
            # over the intent this driver read: never over what another driver signed.
            await self._store.update_escrow(escrow_id, payout=payout, expect_payout=intent)
            failpoints.hit("after_sign")
        # Both recorded when it was signed.
        assert payout.txids is not None
        assert payout.signed_txset is not None
        txids = payout.txids
        await self._daemon_caught_up(rec)  # again: a switch may have come while it was signed
        signed = ExpectedPayout.of(payout)
        self._ownership.check_held(escrow_id)  # submits: this holding's lease must be valid
        try:
            await registry.call(
                escrow_id,
                SubmitPayout(cosigner, txids, payout.signed_txset),
                caller=Caller.PAYOUT,
            )
        except (RpcCallError, multisig.MultisigError) as exc:
            # Already mined or in the pool (e.g. submitted before a crash): confirm it from the
            # daemon instead of failing; anything else is an error to report.
            if not await self._known_to_daemon(txids[0]):
                raise WalletError(f"submit_multisig refused: {exc}") from exc
        failpoints.hit("after_submit")
        payout = attrs.evolve(
            payout,
            phase=PayoutPhase.SUBMITTED,
            txid=txids[0],
            submitted_at=utcnow(),
            last_error=None,
        )
        submitted = {
            "kind": payout.kind.value,
            "txid": txids[0],
            "amount": payout.amount,
            "fee": payout.fee,
        }
        await self._events.change(
            escrow_id,
            [("payout_submitted", submitted)],
            payout=payout,
            state=payout.kind.paying_state,
            expect_payout=signed,
        )
        self._metrics.payout(payout.kind.value, "submitted")
        try:
            await self._keep_proof(escrow_id, payout, Caller.PAYOUT)
        except Exception as exc:  # noqa: BLE001 - the proof endpoint fetches it later
            log.warning("payout proof not kept yet", escrow_id=escrow_id, error=str(exc)[:300])

    async def _sync_after_payout(self, escrow_id: str) -> None:
        # So the wallet that did not sign shows the right balance; failure here is harmless.
        # Housekeeping, not a payout step: it ends the session's hold for money (reads may
        # take its slot at once) and waits for a slot like the monitor.
        try:
            await self._registry.call(escrow_id, SyncAll(), caller=Caller.MONITOR)
        except Exception as exc:  # noqa: BLE001 - outside the payout's own error handling
            log.warning("post-payout multisig sync failed", escrow_id=escrow_id, error=str(exc))

    # ---- payout proofs ---------------------------------------------------------------------------

    async def payout_proof(self, escrow_id: str) -> PayoutProof:
        """The tx key and proof of the escrow's submitted payout, kept at submission or, if
        walletd stopped (or a wallet failed) before it was kept, fetched and kept now."""
        payout = (await self._escrows.get(escrow_id)).payout
        if payout is None or payout.phase is not PayoutPhase.SUBMITTED:
            raise NotFound(f"escrow {escrow_id!r} has no submitted payout")
        kept = await self._store.get_payout_proof(escrow_id)
        if kept is not None:
            return kept
        try:
            async with self._ownership.holding(escrow_id):  # the proof is kept under the lease
                return await self._keep_proof(escrow_id, payout, Caller.API)
        except (RpcCallError, multisig.MultisigError) as exc:
            raise WalletError(f"the payout's proof could not be made yet: {exc}") from exc

    async def _keep_proof(self, escrow_id: str, payout: Payout, caller: Caller) -> PayoutProof:
        assert payout.txid is not None  # submitted
        proposer, cosigner = SIGNERS[payout.kind]
        # The co-signer signed the final transaction and holds its key; the proposer may too.
        ask = GetPayoutProof((cosigner, proposer), payout.txid, payout.address)
        proof = await self._registry.call(escrow_id, ask, caller=caller)
        await self._store.put_payout_proof(escrow_id, proof)
        log.info("payout proof kept", escrow_id=escrow_id, txid=payout.txid)
        return proof

    async def _refuse(self, escrow_id: str, payout: Payout, reason: str) -> None:
        """Record a refused proposal: the payout is failed with the reason, and says so."""
        log.error("payout refused before signing", escrow_id=escrow_id, reason=reason)
        refused = attrs.evolve(payout, phase=PayoutPhase.REFUSED, last_error=reason[:300])
        event = {"kind": payout.kind.value, "reason": reason[:300]}
        await self._events.change(
            escrow_id,
            [("payout_refused", event)],
            payout=refused,
            expect_payout=ExpectedPayout.of(payout),
        )
        self._metrics.payout(payout.kind.value, "failed")

    async def _daemon_caught_up(self, rec: EscrowRecord) -> None:
        """Unavailable (503, retried) while the daemon in use is below the height at which the
        escrow was seen ready: after a switch to a daemon that lags, the deposit may not be on
        its chain yet, and a payout is never built on or submitted to such a daemon."""
        ready_at = rec.funding.ready_height
        if ready_at is None:
            return
        try:
            height = await self._chain.height()
        except WalletdError as exc:
            raise Unavailable(f"monerod unavailable: {exc}") from exc
        if height < ready_at:
            raise Unavailable(
                f"monerod in use is at height {height}, behind {ready_at} where the escrow was "
                "seen ready; retry later"
            )

    async def _known_to_daemon(self, txid: str) -> bool:
        try:
            status = await self._chain.tx_status(txid)
        except WalletdError:
            return False
        return status is not None

    # ---- start-up recovery -----------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish what a previous walletd left half done, most urgent first: creations are
        undone, payouts in flight resumed, then sessions reopened for ready and funded escrows
        (up to the cap) so the monitor and the API find them warm."""
        try:
            # In a cluster, only what no other live host holds: another host's creation in
            # flight is a CREATING record too, and its payouts are its own to resume.
            elsewhere = await self._ownership.owned_elsewhere()
            for rec in await self._store.list_escrows(EscrowState.CREATING):
                if rec.escrow_id in elsewhere:
                    continue
                try:
                    async with self._ownership.holding(rec.escrow_id):
                        await self._creation.abandon(rec, "walletd stopped during creation")
                except Unavailable as exc:  # taken meanwhile, or the database refused
                    log.warning("creation not undone", escrow_id=rec.escrow_id, error=exc.message)
            live: set[str] | None = None
            for rec in await self._store.list_escrows(EscrowState.READY):
                if rec.escrow_id in elsewhere:
                    continue
                if rec.payout is not None and rec.payout.phase in RESUMABLE:
                    # In a cluster another live host's payout is its own to resume.
                    if live is None:
                        live = await self._ownership.live_hosts()
                    source = retry_source(rec.payout, self._ownership.host, live, starting=True)
                    if source is None:
                        continue
                    self._retries.retried(rec.escrow_id, rec.payout, source)
                    try:
                        await self._run_payout(rec.escrow_id)
                    except WalletdError as exc:
                        log.error("payout resume failed", escrow_id=rec.escrow_id, error=str(exc))
            await self._reopen_warm()
        finally:
            self.recovered.set()

    async def _reopen_warm(self) -> None:
        registry = self._registry
        wanted = [r for r in await self._store.list_escrows(EscrowState.READY) if r.payout is None]
        wanted += await self._store.list_escrows(EscrowState.FUNDED)
        elsewhere = await self._ownership.owned_elsewhere()
        wanted = [r for r in wanted if r.escrow_id not in elsewhere]
        room = registry.limits.max_active - registry.statistics().active_sessions
        for rec in wanted[: max(0, room)]:
            try:
                # Reopened for the monitor: first to leave if the API needs a slot.
                await registry.open(rec.escrow_id, caller=Caller.MONITOR)
            except WalletdError as exc:
                log.warning("could not reopen session", escrow_id=rec.escrow_id, error=str(exc))
