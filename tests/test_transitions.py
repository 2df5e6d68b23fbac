"""The escrow's rules (`walletd.escrows.transitions`), one transition at a time, with no I/O.

Each test builds a record as the store would hold it, shows the transition what was seen, and
checks the next state, payout phase, events and wallet step it answers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import attrs
import pytest

from walletd.errors import Conflict, NotReady, Unavailable
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
AMOUNT = 10**12
NOW = "2026-01-02T03:04:05.678Z"
ADDRESS = "4" + "A" * 94
OTHER = "4" + "B" * 94
TXIDS = ("a" * 64, "b" * 64)


def record(
    state: EscrowState = S.AWAITING_FUNDING,
    *,
    funding: Funding | None = None,
    payout: Payout | None = None,
    confirmations: int = 10,
) -> EscrowRecord:
    return EscrowRecord(
        escrow_id="e1",
        state=state,
        amount=AMOUNT,
        required_confirmations=confirmations,
        multisig_address="4" + "M" * 94,
        origin="created",
        wallets={r: WalletRef(f"e1-{r}") for r in ("buyer", "vendor", "arbiter")},
        request_digest="d",
        funding=funding or Funding(),
        payout=payout,
        created_at=NOW,
        updated_at=NOW,
    )


def payout(
    phase: PayoutPhase, kind: PayoutKind = PayoutKind.RELEASE, address: str = ADDRESS
) -> Payout:
    signed = phase in (PayoutPhase.SIGNED, PayoutPhase.SUBMITTED)
    return Payout(
        kind=kind,
        address=address,
        phase=phase,
        created_at=NOW,
        txids=TXIDS if signed else None,
        signed_txset="blob" if signed else None,
        amount=AMOUNT - 100 if signed else None,
        fee=100 if signed else None,
        txid=TXIDS[0] if phase is PayoutPhase.SUBMITTED else None,
    )


def seen(
    balance: int = 0, unlocked: int = 0, confirmations: int = 0, height: int = 100
) -> t.FundingSeen:
    return t.FundingSeen(balance, unlocked, confirmations, height)


READY_FUNDING = Funding(AMOUNT, AMOUNT, 10, NOW, ready_height=120)


# ---- funding -------------------------------------------------------------------------------------


def test_a_deposit_covering_the_amount_funds_an_awaiting_escrow() -> None:
    """A balance that covers the amount, still locked: funded, the `funded` event with what was
    seen, the funding recorded as checked now, and the wallets stored at once."""
    move = t.funding_seen(record(), seen(AMOUNT, 0, 1), height=100, now=NOW)
    assert move is not None
    assert move.state is S.FUNDED
    data = {"balance": AMOUNT, "unlocked_balance": 0, "confirmations": 1}
    assert move.events == (("funded", data),)
    assert move.funding == Funding(AMOUNT, 0, 1, NOW, ready_height=None)
    assert move.step == t.StoreWallets()
    assert move.reorged_from is None


def test_a_deposit_short_of_the_amount_only_records_the_funding() -> None:
    """Less than the amount: the state stays, no event, no wallet store; the funding is still
    recorded (the API shows what the wallets last saw)."""
    move = t.funding_seen(record(), seen(AMOUNT - 1, AMOUNT - 1, 20), height=100, now=NOW)
    assert move is not None
    assert (move.state, move.events, move.step) == (S.AWAITING_FUNDING, (), None)
    assert move.funding.balance == AMOUNT - 1


def test_an_unlocked_confirmed_deposit_makes_an_awaiting_escrow_ready_at_once() -> None:
    """A deposit seen already unlocked with the required confirmations: funded and ready in one
    move, both events in order, the ready height recorded."""
    move = t.funding_seen(record(), seen(AMOUNT, AMOUNT, 10, height=90), height=100, now=NOW)
    assert move is not None
    assert move.state is S.READY
    assert [e[0] for e in move.events] == ["funded", "ready"]
    assert move.funding.ready_height == 100


@pytest.mark.parametrize(("daemon", "wallet", "ready"), [(100, 90, 100), (100, 105, 105)])
def test_the_ready_height_is_the_higher_of_the_daemon_and_the_wallet(
    daemon: int, wallet: int, ready: int
) -> None:
    """The ready height is the higher of the check's daemon height and the wallet's own height
    after its refresh: a payout never goes to a daemon that may not have the deposit."""
    rec = record(S.FUNDED, funding=Funding(AMOUNT, 0, 1, NOW))
    move = t.funding_seen(rec, seen(AMOUNT, AMOUNT, 10, height=wallet), height=daemon, now=NOW)
    assert move is not None
    assert (move.state, move.funding.ready_height) == (S.READY, ready)


def test_ready_needs_the_required_confirmations() -> None:
    """Unlocked but one confirmation short: the escrow stays funded, and nothing is told."""
    rec = record(S.FUNDED, funding=Funding(AMOUNT, 0, 1, NOW))
    move = t.funding_seen(rec, seen(AMOUNT, AMOUNT, 9), height=100, now=NOW)
    assert move is not None
    assert (move.state, move.events, move.funding.ready_height) == (S.FUNDED, (), None)


def test_a_reorg_taking_the_deposit_is_told_once_and_the_escrow_stays_funded() -> None:
    """A funded escrow whose balance drops below the amount stays funded (states only move
    forward) and gets one `funding_reorged` event naming the previous balance; the next check
    at the lower balance tells nothing more."""
    rec = record(S.FUNDED, funding=Funding(AMOUNT, 0, 1, NOW))
    move = t.funding_seen(rec, seen(AMOUNT // 2), height=100, now=NOW)
    assert move is not None
    assert move.state is S.FUNDED
    assert move.events == (
        (
            "funding_reorged",
            {
                "balance": AMOUNT // 2,
                "unlocked_balance": 0,
                "confirmations": 0,
                "previous_balance": AMOUNT,
            },
        ),
    )
    assert move.reorged_from == AMOUNT
    again = t.funding_seen(
        attrs.evolve(rec, funding=move.funding), seen(AMOUNT // 2), height=101, now=NOW
    )
    assert again is not None
    assert again.events == ()


@pytest.mark.parametrize("state", [S.READY, S.RELEASING, S.COMPLETED, S.REFUNDED, S.CREATING])
def test_an_escrow_no_longer_watched_is_left_alone(state: EscrowState) -> None:
    """Past funding (a payout started meanwhile) or not yet made: nothing to write."""
    assert t.funding_seen(record(state), seen(AMOUNT, AMOUNT, 99), height=100, now=NOW) is None


def test_multisig_info_is_exchanged_ahead_only_for_a_ready_escrow_without_payout() -> None:
    """Ready and no payout: exchange ahead; a payout recorded, or not ready: never."""
    assert t.exchange_ahead(record(S.READY))
    assert not t.exchange_ahead(record(S.READY, payout=payout(PayoutPhase.INTENT)))
    assert not t.exchange_ahead(record(S.FUNDED))


# ---- a payout, requested -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(PayoutKind))
def test_a_payout_of_a_ready_escrow_records_an_intent(kind: PayoutKind) -> None:
    """A release or refund of a ready escrow: record an intent of that kind to that address,
    nothing signed, created now."""
    step = t.request_payout(record(S.READY, funding=READY_FUNDING), kind, ADDRESS, now=NOW)
    assert step == t.RecordIntent(Payout(kind, ADDRESS, PayoutPhase.INTENT, NOW))


@pytest.mark.parametrize("state", [S.CREATING, S.AWAITING_FUNDING, S.FUNDED])
def test_a_payout_before_ready_is_refused(state: EscrowState) -> None:
    """No payout before the escrow is ready: NotReady, naming the state."""
    with pytest.raises(NotReady, match=f"escrow 'e1' is {state}; a payout needs ready"):
        t.request_payout(record(state), PayoutKind.RELEASE, ADDRESS, now=NOW)


@pytest.mark.parametrize(
    ("phase", "answer"),
    [
        (PayoutPhase.INTENT, t.Drive()),
        (PayoutPhase.SIGNED, t.Drive()),
        (PayoutPhase.SUBMITTED, t.Answer()),
    ],
)
def test_repeating_the_recorded_payout_resumes_or_answers_it(
    phase: PayoutPhase, answer: t.Drive | t.Answer
) -> None:
    """The same call again: a payout not yet submitted is driven on, a submitted one answered
    as it is; no new intent either way."""
    state = S.RELEASING if phase is PayoutPhase.SUBMITTED else S.READY
    rec = record(state, funding=READY_FUNDING, payout=payout(phase))
    assert t.request_payout(rec, PayoutKind.RELEASE, ADDRESS, now=NOW) == answer


def test_a_second_payout_of_another_kind_or_address_conflicts() -> None:
    """Once a payout is recorded, a refund cannot follow a release, nor a release go to
    another address: Conflict, with the reason."""
    rec = record(S.READY, funding=READY_FUNDING, payout=payout(PayoutPhase.SIGNED))
    with pytest.raises(Conflict, match="already has a release payout; a refund cannot follow it"):
        t.request_payout(rec, PayoutKind.REFUND, ADDRESS, now=NOW)
    with pytest.raises(Conflict, match="already has a release payout to another address"):
        t.request_payout(rec, PayoutKind.RELEASE, OTHER, now=NOW)


def test_a_refused_payout_is_replaced_by_a_new_intent() -> None:
    """Over a refused payout (nothing signed) any kind and address may be asked: a fresh intent."""
    rec = record(S.READY, funding=READY_FUNDING, payout=payout(PayoutPhase.REFUSED))
    step = t.request_payout(rec, PayoutKind.REFUND, OTHER, now=NOW)
    assert step == t.RecordIntent(Payout(PayoutKind.REFUND, OTHER, PayoutPhase.INTENT, NOW))


def test_the_outcome_of_a_drive_answers_refused_unfinished_or_submitted() -> None:
    """After a drive: a refused payout is a Conflict with its reason, one not submitted is
    Unavailable (repeat the call), a submitted one is the answer."""
    refused = attrs.evolve(payout(PayoutPhase.REFUSED), last_error="wrong fee")
    with pytest.raises(Conflict, match="nothing was signed: wrong fee"):
        t.check_payout_outcome(record(S.READY, payout=refused))
    stuck = attrs.evolve(payout(PayoutPhase.SIGNED), last_error="daemon down")
    with pytest.raises(Unavailable, match=r"not submitted yet \(daemon down\); repeat the call"):
        t.check_payout_outcome(record(S.READY, payout=stuck))
    t.check_payout_outcome(record(S.RELEASING, payout=payout(PayoutPhase.SUBMITTED)))


# ---- a payout, driven ----------------------------------------------------------------------------


def test_signers_the_arbiter_cosigns_both_kinds() -> None:
    """The receiving side proposes (vendor for a release, buyer for a refund); the arbiter
    co-signs, submits and holds the transaction key, for both."""
    assert t.SIGNERS[PayoutKind.RELEASE] == ("vendor", "arbiter")
    assert t.SIGNERS[PayoutKind.REFUND] == ("buyer", "arbiter")


@pytest.mark.parametrize(
    ("kind", "proposer"), [(PayoutKind.RELEASE, "vendor"), (PayoutKind.REFUND, "buyer")]
)
def test_an_intent_is_signed_by_its_kinds_signers(kind: PayoutKind, proposer: str) -> None:
    """An intent on a ready escrow: the next step is to sign it, proposed by the receiving
    side and co-signed by the arbiter, to the recorded address."""
    rec = record(S.READY, funding=READY_FUNDING, payout=payout(PayoutPhase.INTENT, kind))
    assert t.next_payout_step(rec) == t.Sign(proposer, "arbiter", ADDRESS)  # type: ignore[arg-type]


def test_a_signed_payout_is_submitted_as_recorded() -> None:
    """A signed payout: the next step submits the recorded blob and txids, by the co-signer."""
    rec = record(S.READY, funding=READY_FUNDING, payout=payout(PayoutPhase.SIGNED))
    assert t.next_payout_step(rec) == t.Submit("arbiter", TXIDS, "blob")


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        (S.READY, None),
        (S.READY, PayoutPhase.REFUSED),
        (S.RELEASING, PayoutPhase.SUBMITTED),
        (S.FUNDED, PayoutPhase.INTENT),  # never recorded so; and never signed if it were
        (S.AWAITING_FUNDING, PayoutPhase.SIGNED),
    ],
)
def test_nothing_to_drive(state: EscrowState, phase: PayoutPhase | None) -> None:
    """No payout, a refused one (never signed again), a submitted one (the monitor has it),
    or an escrow that is not ready: no wallet step."""
    rec = record(state, payout=None if phase is None else payout(phase))
    assert t.next_payout_step(rec) is None


def test_a_signed_proposal_records_the_blob_before_it_can_be_sent() -> None:
    """The co-signer signed: the payout is `signed` with its txids, blob, amount, fee and fee
    priority, and the last attempt's error cleared."""
    intent = attrs.evolve(payout(PayoutPhase.INTENT), last_error="earlier")
    done = t.signed(intent, fee_priority=2, txids=TXIDS, signed_txset="blob", amount=5, fee=1)
    assert (done.phase, done.txids, done.signed_txset) == (PayoutPhase.SIGNED, TXIDS, "blob")
    assert (done.amount, done.fee, done.fee_priority, done.last_error) == (5, 1, 2, None)
    assert done.txid is None  # not sent yet


def test_a_refused_proposal_is_recorded_with_its_reason_and_told() -> None:
    """The co-signer's check refused: the payout is `refused` with the reason (cut to 300
    characters), nothing signed, the state unchanged, and a `payout_refused` event."""
    move = t.refused(payout(PayoutPhase.INTENT), fee_priority=1, reason="x" * 400)
    assert move.payout.phase is PayoutPhase.REFUSED
    assert move.payout.last_error == "x" * 300
    assert move.payout.txids is None
    assert move.state is None
    assert move.events == (("payout_refused", {"kind": "release", "reason": "x" * 300}),)


@pytest.mark.parametrize("result", [t.SubmitResult.ACCEPTED, t.SubmitResult.KNOWN])
def test_a_submitted_payout_makes_the_escrow_pay(result: t.SubmitResult) -> None:
    """Accepted, or refused but already known to the daemon (sent before a crash): the payout
    is submitted with the first txid, the escrow releasing, and `payout_submitted` told."""
    move = t.submitted(payout(PayoutPhase.SIGNED), result, now=NOW)
    assert move is not None
    assert (move.payout.phase, move.payout.txid) == (PayoutPhase.SUBMITTED, TXIDS[0])
    assert (move.payout.submitted_at, move.state) == (NOW, S.RELEASING)
    data = {"kind": "release", "txid": TXIDS[0], "amount": AMOUNT - 100, "fee": 100}
    assert move.events == (("payout_submitted", data),)


def test_a_refused_submit_unknown_to_the_daemon_records_nothing() -> None:
    """Refused and unknown to the daemon: nothing to record (the driver reports the error)."""
    assert t.submitted(payout(PayoutPhase.SIGNED), t.SubmitResult.REFUSED, now=NOW) is None


@pytest.mark.parametrize(
    ("ready", "height", "behind"),
    [(None, 5, None), (120, 119, 120), (120, 120, None), (120, None, None)],
)
def test_a_daemon_below_the_ready_height_is_behind(
    ready: int | None, height: int | None, behind: int | None
) -> None:
    """A daemon below the height where the escrow was seen ready is behind (the deposit may not
    be on its chain); at it, with no ready height recorded, or no height known, it is not."""
    rec = record(S.READY, funding=attrs.evolve(READY_FUNDING, ready_height=ready))
    assert t.behind_ready_height(rec, height) == behind


# ---- a submitted payout, watched -----------------------------------------------------------------


def test_a_lost_payout_is_resubmitted_from_its_blob_by_the_cosigner() -> None:
    """The daemon does not know the submitted payout: resubmit the recorded blob and txids
    (the same transaction), by the co-signer (the one table, not a hard-coded role)."""
    rec = record(
        S.REFUNDING, funding=READY_FUNDING, payout=payout(PayoutPhase.SUBMITTED, PayoutKind.REFUND)
    )
    assert t.lost_payout(rec, 130) == t.Submit("arbiter", TXIDS, "blob")


def test_a_lost_payout_waits_for_a_daemon_behind_the_ready_height() -> None:
    """Never resubmitted to a daemon below the ready height: wait, saying both heights."""
    rec = record(S.RELEASING, funding=READY_FUNDING, payout=payout(PayoutPhase.SUBMITTED))
    assert t.lost_payout(rec, 110) == t.WaitForDaemon(110, 120)


def test_confirmations_are_recorded_when_they_change() -> None:
    """A new confirmation count is written; the same count is not written again."""
    rec = record(S.RELEASING, payout=payout(PayoutPhase.SUBMITTED))
    changed = t.confirmations_seen(rec, 3)
    assert changed is not None
    assert changed.confirmations == 3
    assert t.confirmations_seen(attrs.evolve(rec, payout=changed), 3) is None


@pytest.mark.parametrize(
    ("state", "kind", "end"),
    [(S.RELEASING, PayoutKind.RELEASE, S.COMPLETED), (S.REFUNDING, PayoutKind.REFUND, S.REFUNDED)],
)
def test_the_required_confirmations_end_the_escrow(
    state: EscrowState, kind: PayoutKind, end: EscrowState
) -> None:
    """At the required confirmations a release completes and a refund ends refunded, told
    with the txid and confirmations; one short, nothing yet."""
    rec = record(state, payout=payout(PayoutPhase.SUBMITTED, kind), confirmations=10)
    assert t.finished(rec, 9) is None
    assert t.finished(rec, 10) == t.Finish(end, (end, {"txid": TXIDS[0], "confirmations": 10}))


def test_an_ended_escrow_does_not_end_again() -> None:
    """An escrow already completed (ended by another check meanwhile) has no end left."""
    rec = record(S.COMPLETED, payout=payout(PayoutPhase.SUBMITTED))
    assert t.finished(rec, 50) is None


# ---- the module itself ---------------------------------------------------------------------------

ALLOWED = {
    "__future__",
    "enum",
    "collections.abc",
    "typing",
    "attrs",
    "walletd.errors",
    "walletd.escrows.model",
    "walletd.ids",
    "walletd.jsontypes",
}


def test_the_transitions_import_nothing_but_the_model_and_shared_leaves() -> None:
    """The transitions' modules import only the escrow model, each other, the shared leaves
    (ids, errors, JSON types), attrs and the standard library's typing helpers: no layer, no
    trio, no I/O."""
    package = Path(t.__file__).parent
    imported = set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.module is not None
                imported.add(node.module)
    own = {m for m in imported if m.startswith("walletd.escrows.transitions.")}
    assert own  # the walk saw the package's modules
    assert imported - own <= ALLOWED, imported - own - ALLOWED
