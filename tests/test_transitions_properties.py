"""Properties of the escrow's rules (`walletd.escrows.transitions`), checked by hypothesis.

Two kinds: each transition over any record at all (consistent or not, so the rules hold even
for a record no driver should ever write), and whole lives of an escrow, where a driver applies
what the transitions answer to a record as the store would (refusing a state move the model
does not allow) over any sequence of observations: funding checks, payout calls, the
co-signer's verdicts, submit results, confirmations, a daemon that lost the payout.

What must hold: states only move forward; never two payouts (no second payout starts over the
same funds, and only the one signed blob is ever submitted); never a payout before ready; a
refused check never leads to a sign step.
"""

from __future__ import annotations

import itertools

import attrs
import hypothesis.strategies as st
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from walletd.errors import Conflict, NotReady
from walletd.escrows import transitions as t
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    Funding,
    Payout,
    PayoutKind,
    PayoutPhase,
    WalletRef,
)

S = EscrowState
NOW = "2026-01-02T03:04:05.678Z"
ADDRESSES = ("4" + "A" * 94, "4" + "B" * 94)
SIGNING = (t.Sign, t.Submit)

amounts = st.integers(min_value=1, max_value=10**13)
counts = st.integers(min_value=0, max_value=30)
heights = st.integers(min_value=0, max_value=10**6)
kinds = st.sampled_from(PayoutKind)
addresses = st.sampled_from(ADDRESSES)
txid_sets = st.lists(st.text("0123456789abcdef", min_size=64, max_size=64), min_size=1, max_size=3)


@st.composite
def payouts(draw: st.DrawFn) -> Payout | None:
    phase = draw(st.sampled_from(PayoutPhase) | st.none())
    if phase is None:
        return None
    signed = phase in (PayoutPhase.SIGNED, PayoutPhase.SUBMITTED)
    txids = tuple(draw(txid_sets)) if signed else None
    return Payout(
        kind=draw(kinds),
        address=draw(addresses),
        phase=phase,
        created_at=NOW,
        txids=txids,
        signed_txset="blob" if signed else None,
        txid=txids[0] if txids and phase is PayoutPhase.SUBMITTED else None,
        confirmations=draw(counts),
        amount=draw(amounts) if signed else None,
        fee=draw(counts) if signed else None,
    )


@st.composite
def records(draw: st.DrawFn) -> EscrowRecord:
    return EscrowRecord(
        escrow_id="e1",
        # Ready half the time: where payouts are asked for, signed and submitted.
        state=draw(st.just(S.READY) | st.sampled_from(EscrowState)),
        amount=draw(amounts),
        required_confirmations=draw(counts),
        multisig_address="4" + "M" * 94,
        origin="created",
        wallets={r: WalletRef(f"e1-{r}") for r in ("buyer", "vendor", "arbiter")},
        request_digest="d",
        funding=Funding(
            balance=draw(amounts | st.just(0)),
            unlocked_balance=draw(amounts | st.just(0)),
            confirmations=draw(counts),
            ready_height=draw(st.none() | heights),
        ),
        payout=draw(payouts()),
        created_at=NOW,
        updated_at=NOW,
    )


EVERY_RECORD = settings(max_examples=300, deadline=None)  # cheap: pure functions, no I/O
fundings_seen = st.builds(
    t.FundingSeen, amounts | st.just(0), amounts | st.just(0), counts, heights
)


def _request(rec: EscrowRecord, kind: PayoutKind, address: str) -> object:
    try:
        return t.request_payout(rec, kind, address, now=NOW)
    except (Conflict, NotReady) as exc:
        return exc


# ---- each transition, over any record ------------------------------------------------------------


@EVERY_RECORD
@given(records(), fundings_seen, heights)
def test_funding_only_moves_forward(rec: EscrowRecord, seen: t.FundingSeen, height: int) -> None:
    """Whatever the wallets report, a funding check moves the state along the model's moves
    (or leaves it), tells an event for each step, and records a ready height only on ready."""
    move = t.funding_seen(rec, seen, height=height, now=NOW)
    if move is None:
        assert rec.state not in t.WATCHED
        return
    rec.state.check_move(move.state)
    assert move.state in (S.AWAITING_FUNDING, S.FUNDED, S.READY)
    assert (move.funding.ready_height is not None) == (move.state is S.READY)
    assert (move.step is not None) == bool(move.events)


@EVERY_RECORD
@given(records())
def test_no_wallet_step_before_ready_nor_after_a_refusal(rec: EscrowRecord) -> None:
    """A sign or submit step comes only for a ready escrow's intent or signed payout: never
    before ready, never for a refused payout, never for none."""
    step = t.next_payout_step(rec)
    if step is None:
        return
    assert rec.state is S.READY
    assert rec.payout is not None
    assert rec.payout.phase in (PayoutPhase.INTENT, PayoutPhase.SIGNED)
    if isinstance(step, t.Submit):
        assert (step.txids, step.signed_txset) == (rec.payout.txids, rec.payout.signed_txset)


@EVERY_RECORD
@given(records(), kinds, addresses)
def test_a_second_payout_never_starts_over_the_same_funds(
    rec: EscrowRecord, kind: PayoutKind, address: str
) -> None:
    """A new intent is recorded only for a ready escrow with no payout or a refused one (which
    signed nothing): over any other recorded payout, a call resumes it, answers it, or
    conflicts."""
    answer = _request(rec, kind, address)
    if isinstance(answer, t.RecordIntent):
        assert rec.state is S.READY
        assert rec.payout is None or rec.payout.phase is PayoutPhase.REFUSED
        assert (answer.payout.kind, answer.payout.address) == (kind, address)
        assert answer.payout.phase is PayoutPhase.INTENT
    elif isinstance(answer, t.Drive | t.Answer):
        assert rec.payout is not None
        assert (rec.payout.kind, rec.payout.address) == (kind, address)
    elif isinstance(answer, NotReady):
        assert rec.state is not S.READY
    else:
        assert isinstance(answer, Conflict)
        assert rec.payout is not None
        assert (rec.payout.kind, rec.payout.address) != (kind, address)


@EVERY_RECORD
@given(records(), heights | st.none(), counts)
def test_a_watched_payout_only_resubmits_its_blob_and_only_ends(
    rec: EscrowRecord, height: int | None, confirmations: int
) -> None:
    """A lost payout is resubmitted only as its recorded blob, never to a daemon below the
    ready height; confirmations end a paying escrow by its one move, and nothing else."""
    step = t.lost_payout(rec, height)
    if isinstance(step, t.Submit):
        assert rec.payout is not None
        assert (step.txids, step.signed_txset) == (rec.payout.txids, rec.payout.signed_txset)
        assert t.behind_ready_height(rec, height) is None
    end = t.finished(rec, confirmations)
    if end is not None:
        assert rec.state in t.PAYING
        assert end.state in rec.state.moves
        assert confirmations >= rec.required_confirmations


# ---- whole lives of an escrow --------------------------------------------------------------------


class EscrowLife(RuleBasedStateMachine):
    """A driver applying the transitions' answers to one escrow's record, as the store would."""

    def __init__(self) -> None:
        super().__init__()
        self.rec = EscrowRecord.new(
            escrow_id="e1",
            state=S.AWAITING_FUNDING,
            amount=10**12,
            required_confirmations=10,
            multisig_address="4" + "M" * 94,
            origin="created",
            wallets={r: WalletRef(f"e1-{r}") for r in ("buyer", "vendor", "arbiter")},
            request_digest="d",
        )
        self.ready_seen = False  # the escrow was made ready by a funding check
        self.signed: set[tuple[str, ...]] = set()  # every txid set ever signed
        self.submitted: list[tuple[str, ...]] = []  # the txids of every submit and resubmit
        self.fresh = (f"{n:064x}" for n in itertools.count(1))

    def _apply(
        self, state: EscrowState | None = None, payout: Payout | None = None, **more: object
    ) -> None:
        if state is not None:
            self.rec.state.check_move(state)  # the store refuses any other move
        changes: dict[str, object] = dict(more)
        if state is not None:
            changes["state"] = state
        if payout is not None:
            changes["payout"] = payout
        self.rec = attrs.evolve(self.rec, **changes)  # type: ignore[arg-type]

    @rule(seen=fundings_seen, height=heights)
    def funding_check(self, seen: t.FundingSeen, height: int) -> None:
        move = t.funding_seen(self.rec, seen, height=height, now=NOW)
        if move is not None:
            self._apply(move.state, funding=move.funding)
            self.ready_seen |= move.state is S.READY

    @rule(seen=st.builds(t.FundingSeen, st.just(10**12), st.just(10**12), st.just(10), heights))
    def deposit_confirmed(self, seen: t.FundingSeen) -> None:
        self.funding_check(seen, 0)

    @rule(kind=kinds, address=addresses)
    def payout_call(self, kind: PayoutKind, address: str) -> None:
        answer = _request(self.rec, kind, address)
        if isinstance(answer, t.RecordIntent):
            assert self.rec.state is S.READY
            assert self.ready_seen
            self._apply(payout=answer.payout)

    @rule(verdict=st.booleans(), reason=st.text(max_size=400))
    def sign(self, verdict: bool, reason: str) -> None:
        step = t.next_payout_step(self.rec)
        if not isinstance(step, t.Sign):
            return
        assert self.rec.state is S.READY  # never a payout before ready
        assert self.ready_seen
        payout = self.rec.payout
        assert payout is not None
        assert payout.phase is PayoutPhase.INTENT  # a refused one is never signed
        assert step.cosigner == t.SIGNERS[payout.kind].cosigner
        if verdict:
            txids = (next(self.fresh),)
            self.signed.add(txids)
            self._apply(
                payout=t.signed(
                    payout, fee_priority=0, txids=txids, signed_txset="b", amount=1, fee=1
                )
            )
        else:
            self._apply(payout=t.refused(payout, fee_priority=0, reason=reason).payout)

    @rule(result=st.sampled_from(t.SubmitResult))
    def submit(self, result: t.SubmitResult) -> None:
        step = t.next_payout_step(self.rec)
        if not isinstance(step, t.Submit):
            return
        self.submitted.append(step.txids)
        assert self.rec.payout is not None
        move = t.submitted(self.rec.payout, result, now=NOW)
        if move is not None:
            self._apply(move.state, move.payout)

    @precondition(lambda self: self.rec.state in t.PAYING)
    @rule(height=heights)
    def payout_lost(self, height: int) -> None:
        step = t.lost_payout(self.rec, height)
        if isinstance(step, t.Submit):
            self.submitted.append(step.txids)

    @precondition(lambda self: self.rec.state in t.PAYING)
    @rule(confirmations=counts)
    def confirmations(self, confirmations: int) -> None:
        payout = t.confirmations_seen(self.rec, confirmations)
        if payout is not None:
            self._apply(payout=payout)
        end = t.finished(self.rec, confirmations)
        if end is not None:
            self._apply(end.state)

    @invariant()
    def never_two_payouts(self) -> None:
        assert len(self.signed) <= 1
        assert set(self.submitted) <= self.signed

    @invariant()
    def a_refused_payout_signs_nothing(self) -> None:
        payout = self.rec.payout
        if payout is not None and payout.phase is PayoutPhase.REFUSED:
            assert payout.txids is None
            assert t.next_payout_step(self.rec) is None

    @invariant()
    def paying_means_its_payout_was_submitted(self) -> None:
        ends = {S.RELEASING: S.COMPLETED, S.REFUNDING: S.REFUNDED}
        payout = self.rec.payout
        if self.rec.state in (*ends, *ends.values()):
            assert payout is not None
            assert payout.phase is PayoutPhase.SUBMITTED
            paying = payout.kind.paying_state
            assert self.rec.state in (paying, ends[paying])


EscrowLife.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestEscrowLife = EscrowLife.TestCase
