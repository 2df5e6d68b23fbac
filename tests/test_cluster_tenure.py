"""A holding keeps the tenure it started under (issue 19, item 2), on the private PostgreSQL.

One host's holdings of an escrow share its lease; when that lease is lost and a later holding on
the same host acquires it again (epoch + 1), a holding from before the loss must write nothing:
what it read (a payout at `intent`) may be stale by then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from tests.harness import escrow_record
from tests.pgtest import advance_db_clock
from walletd.cluster.db import Database
from walletd.cluster.lease_ownership import ClusterOwnership
from walletd.cluster.leases import Leases, Tenure
from walletd.cluster.migrations import migrate
from walletd.cluster.postgres_store import PgStore
from walletd.cluster.wallet_files import WalletFiles
from walletd.errors import Fenced
from walletd.escrows.model import (
    EscrowRecord,
    EscrowState,
    Funding,
    Payout,
    PayoutKind,
    PayoutPhase,
    utcnow,
)

pytestmark = pytest.mark.pg

TTL = 3.0


@attrs.define
class Host:
    ownership: ClusterOwnership
    store: PgStore


@pytest.fixture
async def host(db_url: str, tmp_path: Path) -> AsyncIterator[Host]:
    db = Database(db_url)
    await db.open()
    try:
        await migrate(db)
        leases = Leases(db, TTL)
        ownership = ClusterOwnership(leases, "A", WalletFiles(db, leases), tmp_path)
        store = PgStore(db, leases, ownership.tenure_of, "A")
        async with trio.open_nursery() as nursery:
            await nursery.start(ownership.run)
            yield Host(ownership, store)
            nursery.cancel_scope.cancel()
    finally:
        await db.close()


def _ready(escrow_id: str, payout: Payout) -> EscrowRecord:
    funding = Funding(5, 5, 1, utcnow(), ready_height=1)
    return escrow_record(
        escrow_id,
        state=EscrowState.READY,
        required_confirmations=1,
        sealed=None,
        funding=funding,
        payout=payout,
    )


async def test_a_holding_from_before_a_lost_lease_writes_nothing_after_it_is_taken_again(
    db_url: str, host: Host
) -> None:
    """A payout driver holds the escrow and reads its payout at `intent`. The host then loses the
    lease (not renewed in time) and another task of the same host takes it again (epoch + 1),
    signs Y and records it submitted. The first driver, still inside its holding, then tries to
    record the X it signed: refused (`Fenced`), and the record still names Y, submitted."""
    intent = Payout(PayoutKind.RELEASE, "4dest", PayoutPhase.INTENT, utcnow())
    ownership, store = host.ownership, host.store
    read = trio.Event()
    retaken = trio.Event()
    outcome: list[BaseException | None] = []

    async def old_driver() -> None:
        async with ownership.holding("e1"):
            rec = await store.get_escrow("e1")
            assert rec is not None
            assert rec.payout == intent
            read.set()
            await retaken.wait()
            signed_x = attrs.evolve(
                intent, phase=PayoutPhase.SIGNED, txids=("x",), signed_txset="00"
            )
            try:
                await store.update_escrow("e1", payout=signed_x)
                outcome.append(None)
            except Fenced as exc:
                outcome.append(exc)

    async with ownership.holding("e1"):
        await store.insert_escrow(_ready("e1", intent))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(old_driver)
        await read.wait()
        first = ownership.tenure_of("e1")
        assert first is not None
        advance_db_clock(db_url, TTL + 1)  # the next renew is refused: the lease is lost
        with trio.fail_after(TTL * 3):  # a hang, not a timing: renews run every ttl/3
            while ownership.statistics().lost == 0:  # noqa: ASYNC110 - no event to wait on
                await trio.sleep(0.05)
        async with ownership.holding("e1"):  # the same host takes it again: epoch + 1
            second = ownership.tenure_of("e1")
            assert second is not None
            assert second.epoch == first.epoch + 1
            submitted_y = attrs.evolve(
                intent,
                phase=PayoutPhase.SUBMITTED,
                txids=("y",),
                txid="y",
                signed_txset="11",
                submitted_at=utcnow(),
            )
            await store.update_escrow("e1", payout=submitted_y)
            retaken.set()
            with trio.fail_after(10):
                while not outcome:  # noqa: ASYNC110 - no event to wait on
                    await trio.sleep(0.01)
    assert isinstance(outcome[0], Fenced), "the old holding wrote under the new epoch"
    rec = await store.get_escrow("e1")
    assert rec is not None
    assert rec.payout == submitted_y


async def test_a_holding_asked_while_the_lease_is_being_released_acquires_it_afresh(
    host: Host,
) -> None:
    """An escrow used again while its idle lease is being handed back gets a new lease (the next
    epoch) once the release ends, not a 503 "held by an earlier run of this host": the release
    and the acquire are serialised per escrow."""
    ownership = host.ownership
    leases = ownership.leases
    release = leases.release
    releasing = trio.Event()

    async def slow_release(tenure: Tenure) -> bool:
        releasing.set()
        await trio.sleep(0.5)  # the database is slow to answer: the row is still ours meanwhile
        return await release(tenure)

    leases.release = slow_release  # type: ignore[method-assign]
    async with ownership.holding("e9"):
        first = ownership.tenure_of("e9")
    assert first is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ownership.release_unused)
        await releasing.wait()
        async with ownership.holding("e9"):
            again = ownership.tenure_of("e9")
    assert again is not None
    assert again.epoch == first.epoch + 1
