"""Payouts in a cluster (issue 19, items 3 and 4): whole hosts (`App`) on one PostgreSQL, with
fake wallet-rpc and a fake monerod.

- A payout left by a dead host is resumed once, by one survivor, and a payout whose attempts
  keep failing is retried by its own host only, spaced by an exponential back-off: asserted on
  what the payout records (attempts, tried_at, next_try_at, driver), never on wall time.
- A host suspended past its lease (its boot clock jumps; trio's monotonic clock does not) makes
  no money-moving wallet call after the resume: the lease is lapsed at once by the boot clock.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import trio

from tests.fakes import FakeDaemon, call
from tests.harness import CLUSTER_TTL, fake_host, run_host, shared_multisig, two_hosts
from tests.pgtest import cluster_of
from walletd.app import App
from walletd.cluster.leases import Tenure
from walletd.cluster.postgres_store import PgStore
from walletd.escrows import retries
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    Funding,
    Payout,
    PayoutKind,
    PayoutPhase,
    utcnow,
)
from walletd.escrows.retries import retry_delay
from walletd.testing.fake_chain import FakeWalletWorld

pytestmark = pytest.mark.pg

TTL = CLUSTER_TTL
AMOUNT = 10**12
HANG = 60.0  # a bound against hangs only (each wait below is a few seconds when all is well)


async def _adopted(world: FakeWalletWorld, app: App, escrow_id: str) -> None:
    """A funded escrow adopted on `app`, whose session is then closed and lease given back."""
    s = await shared_multisig(world, escrow_id)
    status, body = await call(app, "POST", "/v1/escrows", s.adopt_body(escrow_id, AMOUNT))
    assert status == 201, body
    world.credit(s.address, AMOUNT, unlocked=True)
    await app.registry.close(escrow_id, reason="explicit")
    with trio.fail_after(HANG):  # released in the database, not only forgotten here
        while await cluster_of(app).node.ownership.owner_of(escrow_id) is not None:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def _left_by_a_dead_host(
    app: App, world: FakeWalletWorld, url: str, escrow_id: str, ready_height: int
) -> None:
    """What host "dead" left: the escrow ready and its release at intent, one attempt made and
    its back-off over, the lease released, its last heartbeat an hour old."""
    cluster = cluster_of(app).node
    assert cluster is not None
    tenure = await cluster.leases.acquire(escrow_id, "dead")
    assert tenure is not None
    held: dict[str, Tenure] = {escrow_id: tenure}
    store = PgStore(cluster.db, cluster.leases, held.get, "dead")
    await store.update_escrow(escrow_id, state=EscrowState.FUNDED)
    now = utcnow()
    intent = Payout(
        PayoutKind.RELEASE,
        world.add_wallet(f"{escrow_id}-vendor-payout", "x").address,
        PayoutPhase.INTENT,
        now,
        attempts=1,
        tried_at=now,
        driver="dead",
        next_try_at=now,
    )
    funding = Funding(AMOUNT, AMOUNT, 10, now, ready_height=ready_height)
    await store.update_escrow(escrow_id, state=EscrowState.READY, funding=funding, payout=intent)
    await cluster.hosts.heartbeat("dead", 0, 6)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE hosts SET last_seen = last_seen - interval '1 hour' WHERE host_id = 'dead'"
        )
    assert await cluster.leases.release(tenure)


async def _payout_of(app: App, escrow_id: str) -> Payout:
    rec = await app.store.get_escrow(escrow_id)
    assert rec is not None
    assert rec.payout is not None
    return rec.payout


def _retries(app: App, source: str) -> float:
    value = app.metrics.registry.get_sample_value(
        "walletd_payout_retries_total", {"source": source}
    )
    assert value is not None
    return value


def _at(stamp: str | None) -> datetime:
    assert stamp is not None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Look for payouts to retry every 0.1 s (5 s in walletd), back-off from 0.4 s up to 1.6 s
    (5 s up to 300 s): the same rules, in seconds of test."""
    monkeypatch.setattr(retries, "ORPHAN_CHECK_INTERVAL", 0.1)
    monkeypatch.setattr(retries, "RETRY_BASE", 0.4)
    monkeypatch.setattr(retries, "RETRY_MAX", 1.6)


@pytest.mark.usefixtures("quick_retries")
async def test_a_payout_left_by_a_dead_host_is_resumed_once_by_one_survivor(
    tmp_path: Path, db_url: str
) -> None:
    """Host "dead" recorded a release at intent and died (its heartbeat stale, its lease
    gone). Of the two survivors, exactly one resumes it, once: the payout is submitted, records
    its second attempt by that host, and the survivors' metrics count one adoption and nothing
    else, though each looked for payouts to retry many times meanwhile."""
    world = FakeWalletWorld()
    async with trio.open_nursery() as nursery:
        a, b, _ = await two_hosts(nursery, tmp_path, db_url, world=world, fake_monerod=True)
        await _adopted(world, a, "e1")
        await _left_by_a_dead_host(a, world, db_url, "e1", world.height)
        with trio.fail_after(HANG):
            while (await _payout_of(a, "e1")).phase is not PayoutPhase.SUBMITTED:  # noqa: ASYNC110
                await trio.sleep(0.05)
        await trio.sleep(20 * retries.ORPHAN_CHECK_INTERVAL)  # twenty more looks by each host
        payout = await _payout_of(b, "e1")
        assert payout.phase is PayoutPhase.SUBMITTED
        assert payout.attempts == 2, "the dead host's attempt, and one by a survivor"
        assert payout.driver in ("a", "b")
        assert _retries(a, "adopted") + _retries(b, "adopted") == 1
        for app in (a, b):
            assert _retries(app, "retry") == _retries(app, "restart") == 0
        assert world.call_count("submit_multisig") == 1
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("quick_retries")
async def test_a_failing_payout_is_retried_by_its_own_host_with_back_off(
    tmp_path: Path, db_url: str
) -> None:
    """A dead host's payout that cannot be made (monerod is behind the escrow's ready height)
    is adopted once by one survivor; from then on only that host retries it (the other sees it
    alive), each attempt recorded with a back-off that doubles up to its bound: every attempt
    began no earlier than the retry time the previous one recorded, and none was signed."""
    world = FakeWalletWorld()
    async with trio.open_nursery() as nursery:
        a, b, _ = await two_hosts(nursery, tmp_path, db_url, world=world, fake_monerod=True)
        await _adopted(world, a, "e2")
        await _left_by_a_dead_host(a, world, db_url, "e2", world.height + 1000)
        seen: dict[int, Payout] = {}  # each attempt as first read (attempts are >= 0.8 s apart)
        with trio.fail_after(HANG):
            while max(seen, default=0) < 6:
                payout = await _payout_of(a, "e2")
                seen.setdefault(payout.attempts, payout)
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    attempts = [seen[n] for n in sorted(seen)]
    assert attempts[0].attempts == 1
    driver = attempts[1].driver
    assert driver in ("a", "b")
    other = b if driver == "a" else a
    assert all(p.driver == driver for p in attempts[1:])
    for before, after in itertools.pairwise(attempts):
        if after.attempts == before.attempts + 1:  # both read (a loaded machine may skip one)
            assert _at(after.tried_at) >= _at(before.next_try_at), "retried before its back-off"
    for p in attempts[1:]:
        delay = (_at(p.next_try_at) - _at(p.tried_at)).total_seconds()
        assert delay == pytest.approx(retry_delay(p.attempts), abs=0.002)
    assert [retry_delay(n) for n in range(2, 7)] == [0.8, 1.6, 1.6, 1.6, 1.6]
    assert _retries(other, "adopted") == _retries(other, "retry") == 0
    assert all(p.phase is PayoutPhase.INTENT for p in attempts)
    assert "behind" in (attempts[-1].last_error or "")
    assert world.call_count("sign_multisig") == 0


class _Calls(list[tuple[int, str]]):
    """The fake world's call log, calling `on(method)` as each wallet-rpc call arrives."""

    def __init__(self, on: Callable[[str], None]) -> None:
        super().__init__()
        self._on = on

    def append(self, item: tuple[int, str]) -> None:
        super().append(item)
        self._on(item[1])


@pytest.mark.parametrize("suspended_at", ["describe_transfer", "sign_multisig"])
async def test_a_suspend_during_a_payout_sends_no_money(
    tmp_path: Path, db_url: str, suspended_at: str
) -> None:
    """The host is suspended for two lease ttls in the middle of a release (as the co-signer
    checks the proposal, or as it signs): on resume its lease is lapsed by the boot clock, so
    the co-signer does not sign, or the signed blob is not recorded, and nothing is submitted.
    The release answers 503 (retry), the payout is still at intent, and the holder declares the
    lease lost (the session's wallet-rpc processes stopped) without waiting for a renewal."""
    suspended = 0.0

    def clock() -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME) + suspended

    def on_call(method: str) -> None:
        nonlocal suspended
        if method == suspended_at and not suspended:
            suspended = 2 * TTL  # the machine slept; trio's clock saw nothing

    world = FakeWalletWorld()
    async with trio.open_nursery() as nursery:
        a = fake_host(tmp_path, world, db_url, "a", chain=FakeDaemon(world))
        cluster_of(a).node.ownership.clock = clock
        await run_host(nursery, a)
        await _adopted(world, a, "e3")
        async with cluster_of(a).node.ownership.holding("e3"):
            funding = Funding(AMOUNT, AMOUNT, 10, utcnow(), ready_height=world.height)
            await a.store.update_escrow("e3", state=EscrowState.FUNDED)
            await a.store.update_escrow("e3", state=EscrowState.READY, funding=funding)
        world.calls = _Calls(on_call)
        vendor = world.add_wallet("vendor-payout", "x")
        status, body = await call(a, "POST", "/v1/escrows/e3/release", {"address": vendor.address})
        assert status == 503, body
        assert suspended, "the payout reached the wallet call where the suspend comes"
        assert world.call_count("submit_multisig") == 0
        if suspended_at == "describe_transfer":
            assert world.call_count("sign_multisig") == 0
        with trio.fail_after(HANG):
            while cluster_of(a).node.statistics().leases_lost == 0:  # noqa: ASYNC110 - no event for it
                await trio.sleep(0.05)
        rec: EscrowRecord | None = await a.store.get_escrow("e3")
        assert rec is not None
        assert rec.payout is not None
        assert rec.payout.phase is PayoutPhase.INTENT
        assert rec.state is EscrowState.READY
        nursery.cancel_scope.cancel()
