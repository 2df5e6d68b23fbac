"""Paying escrows out, exactly once: the driver of a release or refund, and its proof.

Payout (release or refund), recorded before every step that could send money::

    intent    the kind and address are recorded; nothing signed yet. Redoing from here is safe.
    signed    the fully signed blob and its txids are recorded BEFORE submitting. From here only
              this blob is ever submitted; resubmitting it yields the same txids, never a 2nd tx.
    submitted the daemon accepted it; the monitor counts its confirmations.
    refused   the co-signer's check found the proposal was not this payout (payout_check):
              nothing was signed. Final for this attempt: no resume or recovery drives it
              again; a new release/refund call replaces it with a fresh intent (any kind and
              address: nothing was signed, so nothing can be double spent) and is checked anew.

Which phase comes next, and which wallet step takes it there, is decided by the pure rules of
`walletd.escrows.transitions`; this module does the calls and the writes they name.

Payouts run in their own nursery, not in the caller's task: a client that times out or
disconnects never cancels a payout half way; its retry finds the same payout and waits for it.

One record per payout call: read once, under the escrow's lease and its lock, and passed down
to the drive, whose every write answers the record as written. The drive reads again only if it
could not record how it ended (a store failure, or another writer took the payout further).

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

import attrs
import structlog
import trio

from walletd.errors import (
    InvalidRequest,
    NotFound,
    PayoutChanged,
    PayoutRefused,
    RpcCallError,
    StoreUnavailable,
    Unavailable,
    WalletdError,
    WalletError,
    public_error,
)
from walletd.escrows.model import (
    EscrowRecord,
    ExpectedPayout,
    Payout,
    PayoutKind,
    PayoutPhase,
    PayoutProof,
    utcnow,
)
from walletd.escrows.retries import RESUMABLE, attempted
from walletd.escrows.service import EscrowService
from walletd.escrows.transitions import (
    SIGNERS,
    Answer,
    PayoutMove,
    RecordIntent,
    Sign,
    Submit,
    SubmitResult,
    behind_ready_height,
    check_payout_outcome,
    next_payout_step,
    refused,
    request_payout,
    signed,
    submitted,
)
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
from walletd.wallets import multisig
from walletd.wallets.chain import Chain

__all__ = ["Payouts", "check_address_format"]

log = structlog.get_logger(__name__)

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


@attrs.define
class _Drive:
    """One payout being driven: set when it ends, with the record it left (None: unknown)."""

    done: trio.Event = attrs.Factory(trio.Event)
    result: EscrowRecord | None = None


class Payouts:
    def __init__(
        self,
        *,
        store: StateStore,
        escrows: EscrowService,
        registry: Registry,
        events: EventLog,
        chain: Chain,
        metrics: Metrics,
        ownership: Ownership,
        fee_priority: int = 0,
        fee_tolerance: float = 2.0,
    ) -> None:
        self._ownership = ownership
        self._metrics = metrics
        self._fee_priority = fee_priority  # wallet-rpc's priority for payout sweeps
        self._fee_tolerance = fee_tolerance  # a payout's fee may be this times the expected one
        self._store = store
        self._escrows = escrows
        self._registry = registry
        self._events = events
        self._chain = chain
        self._locks: dict[str, trio.Lock] = {}
        self._drives: dict[str, _Drive] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery payouts are driven in."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def driving(self, escrow_id: str) -> bool:
        """Whether this host drives the escrow's payout now."""
        return escrow_id in self._drives

    # ---- a payout call ---------------------------------------------------------------------------

    async def payout(self, escrow_id: str, kind: PayoutKind, address: str) -> EscrowRecord:
        """Release or refund the whole balance to `address`, at most once (see module doc)."""
        check_address_format(address)
        # NotFound before a lock is kept or a lease taken for an id that names no escrow: its
        # state, not the record, which is read under the lease below.
        if await self._store.escrow_state(escrow_id) is None:
            raise NotFound(f"no escrow {escrow_id!r}")
        lock = self._locks.setdefault(escrow_id, trio.Lock())
        try:
            # Its intent is written under the escrow's lease (a cluster), like every step.
            async with self._ownership.holding(escrow_id):
                return await self._payout_locked(lock, escrow_id, kind, address)
        finally:
            # One lock per escrow with a payout would grow without bound: drop it once nobody
            # holds or waits for it (trio hands a released lock straight to its next waiter).
            if not lock.locked() and self._locks.get(escrow_id) is lock:
                del self._locks[escrow_id]

    async def _payout_locked(
        self, lock: trio.Lock, escrow_id: str, kind: PayoutKind, address: str
    ) -> EscrowRecord:
        async with lock:
            # The call's one read: under the lease and the lock, so what it decides on is what
            # is recorded (another call or host may have written since the caller's last look).
            rec = await self._escrows.get(escrow_id)
            step = request_payout(rec, kind, address, now=utcnow())
            if isinstance(step, Answer):
                return rec
            if isinstance(step, RecordIntent):
                await self._validate(escrow_id, address)
                rec = await self._store.update_escrow(
                    escrow_id,
                    payout=step.payout,
                    # none, or the refused one read above: a concurrent new intent loses
                    expect_payout=ExpectedPayout.of(rec.payout),
                )
                log.info("payout recorded", escrow_id=escrow_id, kind=kind)
            return await self.drive(rec)

    async def _validate(self, escrow_id: str, address: str) -> None:
        # The payout's first call: it waits for a slot as a money-moving call, not as a read.
        valid = await self._registry.call(
            escrow_id, ValidateAddress(address), caller=Caller.API_MONEY
        )
        if not valid:
            raise InvalidRequest("address is not a valid Monero address for this network")

    # ---- the drive -------------------------------------------------------------------------------

    async def drive(self, rec: EscrowRecord) -> EscrowRecord:
        """Drive `rec`'s payout in the payouts' nursery (or join the drive under way); wait for
        it. The record it left; `Conflict` if refused, `Unavailable` if not submitted."""
        escrow_id = rec.escrow_id
        drive = self._drives.get(escrow_id)
        if drive is None:
            drive = self._drives[escrow_id] = _Drive()
            assert self._nursery is not None
            self._nursery.start_soon(self._drive_payout, rec, drive)
        await drive.done.wait()
        # Read again only when the drive could not tell how the payout ended.
        ended = drive.result or await self._escrows.get(escrow_id)
        check_payout_outcome(ended)
        return ended

    async def _drive_payout(self, rec: EscrowRecord, drive: _Drive) -> None:
        escrow_id = rec.escrow_id
        completed = False
        try:
            # Every step's write is fenced by the escrow's lease (a cluster): held throughout.
            async with self._ownership.holding(escrow_id):
                drive.result = await self._payout_steps(rec)
            completed = True
        except Exception as exc:  # noqa: BLE001 - a payout task must never take walletd down
            log.error("payout step failed", escrow_id=escrow_id, error=str(exc))
            drive.result = await self._record_failure(escrow_id, exc)
        finally:
            del self._drives[escrow_id]
            drive.done.set()
        if completed:
            # After the answer, not in it: the payout is recorded (submitted, or refused).
            await self._sync_after_payout(escrow_id)

    async def _record_failure(self, escrow_id: str, exc: Exception) -> EscrowRecord | None:
        """Keep why the attempt stopped on the payout, if it is still where it stopped; the
        record as it is then (None if the database refused)."""
        try:
            # Read again: the failure may be another writer's move (PayoutChanged), and the
            # error is recorded only on a payout still resumable, compare-and-set on this read.
            rec = await self._escrows.get(escrow_id)
            payout = rec.payout
            if payout is None:
                return rec
            self._metrics.payout(payout.kind.value, "failed")
            if isinstance(exc, PayoutChanged) or payout.phase not in RESUMABLE:
                return rec  # another writer took it further: what it recorded stands
            error = public_error(exc).message[:300]
            return await self._store.update_escrow(
                escrow_id,
                payout=attrs.evolve(payout, last_error=error),
                expect_payout=ExpectedPayout.of(payout),
            )
        except (StoreUnavailable, PayoutChanged) as db_exc:  # the database, the lease, a race
            log.error("payout error not recorded", escrow_id=escrow_id, error=db_exc.message)
            return None

    async def _payout_steps(self, rec: EscrowRecord) -> EscrowRecord:
        """Take the payout of `rec` (as its caller read it) as far as it goes; the record as the
        last step wrote it.

        `rec` may have been read before this holding began (recovery lists without the lease):
        the first write, the attempt, is compare-and-set on the payout's phase and txids read,
        and comes before any wallet call, so a payout another writer moved meanwhile is left as
        it is recorded (`PayoutChanged`), never signed or submitted from a stale view."""
        step = next_payout_step(rec)
        if step is None:
            return rec  # refused: never signed again; a new release/refund call replaces it
        escrow_id = rec.escrow_id
        payout = rec.payout
        assert payout is not None
        # Recorded before anything else: a retry is spaced by its back-off, and another host
        # adopts it only if this one is no longer live.
        rec = await self._store.update_escrow(
            escrow_id,
            payout=attempted(payout, self._ownership.host),
            expect_payout=ExpectedPayout.of(payout),
        )
        await self._daemon_caught_up(rec)
        if isinstance(step, Sign):
            rec = await self._sign(rec, step)
            step = next_payout_step(rec)
            if not isinstance(step, Submit):
                return rec  # refused
            await self._daemon_caught_up(rec)  # again: a switch may have come while it was signed
        return await self._submit(rec, step)

    async def _sign(self, rec: EscrowRecord, step: Sign) -> EscrowRecord:
        escrow_id = rec.escrow_id
        payout = rec.payout
        assert payout is not None
        priority = self._fee_priority
        per_byte = await self._chain.fee_per_byte(priority)
        prepare = PreparePayout(
            step.proposer,
            step.cosigner,
            step.address,
            priority=priority,
            max_fee_per_byte=math.ceil(per_byte * self._fee_tolerance),
        )
        self._ownership.check_held(escrow_id)  # signs: this holding's lease must be valid
        try:
            tx = await self._registry.call(escrow_id, prepare, caller=Caller.PAYOUT)
        except PayoutRefused as exc:
            log.error("payout refused before signing", escrow_id=escrow_id, reason=exc.reason)
            move = refused(payout, fee_priority=priority, reason=exc.reason)
            rec = await self._record(rec, move)
            self._metrics.payout(payout.kind.value, "failed")
            return rec
        # Durable before it can be sent: from here only this blob is ever submitted. Only over
        # the intent this driver read: never over what another driver signed.
        rec = await self._store.update_escrow(
            escrow_id,
            payout=signed(
                payout,
                fee_priority=priority,
                txids=tuple(tx.txids),
                signed_txset=tx.signed_txset,
                amount=tx.amount,
                fee=tx.fee,
            ),
            expect_payout=ExpectedPayout.of(payout),
        )
        failpoints.hit("after_sign")
        return rec

    async def _submit(self, rec: EscrowRecord, step: Submit) -> EscrowRecord:
        escrow_id = rec.escrow_id
        payout = rec.payout
        assert payout is not None
        self._ownership.check_held(escrow_id)  # submits: this holding's lease must be valid
        refusal: Exception | None = None
        try:
            await self._registry.call(
                escrow_id,
                SubmitPayout(step.signer, step.txids, step.signed_txset),
                caller=Caller.PAYOUT,
            )
            result = SubmitResult.ACCEPTED
        except (RpcCallError, multisig.MultisigError) as exc:
            # Already mined or in the pool (e.g. submitted before a crash): confirm it from the
            # daemon instead of failing; anything else is an error to report.
            refusal = exc
            known = await self._known_to_daemon(step.txids[0])
            result = SubmitResult.KNOWN if known else SubmitResult.REFUSED
        move = submitted(payout, result, now=utcnow())
        if move is None:
            raise WalletError(f"submit_multisig refused: {refusal}") from refusal
        failpoints.hit("after_submit")
        rec = await self._record(rec, move)
        self._metrics.payout(payout.kind.value, "submitted")
        try:
            await self._keep_proof(escrow_id, move.payout, Caller.PAYOUT)
        except Exception as exc:  # noqa: BLE001 - the proof endpoint fetches it later
            log.warning("payout proof not kept yet", escrow_id=escrow_id, error=str(exc)[:300])
        return rec

    async def _record(self, rec: EscrowRecord, move: PayoutMove) -> EscrowRecord:
        """Write a payout's move with its events, over the payout `rec` holds (compare-and-set)."""
        expect = ExpectedPayout.of(rec.payout)
        if move.state is None:
            return await self._events.change(
                rec.escrow_id, move.events, payout=move.payout, expect_payout=expect
            )
        return await self._events.change(
            rec.escrow_id, move.events, payout=move.payout, state=move.state, expect_payout=expect
        )

    async def _sync_after_payout(self, escrow_id: str) -> None:
        # So the wallet that did not sign shows the right balance; failure here is harmless.
        # Housekeeping, not a payout step: it ends the session's hold for money (reads may
        # take its slot at once) and waits for a slot like the monitor.
        try:
            await self._registry.call(escrow_id, SyncAll(), caller=Caller.MONITOR)
        except Exception as exc:  # noqa: BLE001 - outside the payout's own error handling
            log.warning("post-payout multisig sync failed", escrow_id=escrow_id, error=str(exc))

    async def _daemon_caught_up(self, rec: EscrowRecord) -> None:
        """Unavailable (503, retried) while the daemon in use is below the height at which the
        escrow was seen ready: after a switch to a daemon that lags, the deposit may not be on
        its chain yet, and a payout is never built on or submitted to such a daemon."""
        if rec.funding.ready_height is None:
            return  # no daemon call: nothing to compare with
        try:
            height = await self._chain.height()
        except WalletdError as exc:
            raise Unavailable(f"monerod unavailable: {exc}") from exc
        ready_at = behind_ready_height(rec, height)
        if ready_at is not None:
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
