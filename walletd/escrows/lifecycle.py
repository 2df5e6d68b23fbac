"""An escrow's life after the request that makes it: the one surface the API and the app use.

It composes the jobs, each in its own module, and runs their background work:

- creation (`walletd.escrows.creation`): a new escrow's wallets made one multisig;
- payouts (`walletd.escrows.payouts`): a release or refund, exactly once, and its proof;
- retries (`walletd.escrows.retries`): a cluster's payouts retried after a failure, on one host;
- recovery (`walletd.escrows.recovery`): at start-up, what a stopped walletd left half done.
"""

from __future__ import annotations

from pathlib import Path

import structlog
import trio

from walletd.errors import StoreUnavailable
from walletd.escrows.creation import Creation
from walletd.escrows.model import EscrowRecord, PayoutKind, PayoutProof
from walletd.escrows.payouts import Payouts
from walletd.escrows.recovery import Recovery
from walletd.escrows.retries import PayoutRetries
from walletd.escrows.service import EscrowService
from walletd.ops.metrics import Metrics
from walletd.sessions.registry import Registry
from walletd.state.events import EventLog
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore
from walletd.state.vault import Vault
from walletd.wallets.chain import Chain

__all__ = ["Lifecycle"]

log = structlog.get_logger(__name__)


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
        self._payouts = Payouts(
            store=store,
            escrows=escrows,
            registry=registry,
            events=events,
            chain=chain,
            metrics=metrics,
            ownership=self._ownership,
            fee_priority=fee_priority,
            fee_tolerance=fee_tolerance,
        )
        self._retries = PayoutRetries(
            store=store,
            escrows=escrows,
            ownership=self._ownership,
            metrics=metrics,
            run_payout=self._payouts.drive,
            driving=self._payouts.driving,
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
        self._recovery = Recovery(
            store=store,
            registry=registry,
            ownership=self._ownership,
            creation=self._creation,
            payouts=self._payouts,
            retries=self._retries,
        )
        self.recovered = self._recovery.recovered  # recover() is done: walletd may report ready

    async def create(
        self, escrow_id: str, amount: int, confirmations: int | None, digest: str
    ) -> tuple[EscrowRecord, bool]:
        """Create the escrow's wallets and multisig (`walletd.escrows.creation`)."""
        return await self._creation.create(escrow_id, amount, confirmations, digest)

    async def payout(self, escrow_id: str, kind: PayoutKind, address: str) -> EscrowRecord:
        """Release or refund the whole balance to `address`, at most once (`payouts`)."""
        return await self._payouts.payout(escrow_id, kind, address)

    async def payout_proof(self, escrow_id: str) -> PayoutProof:
        """The submitted payout's tx key and proof (`payouts`)."""
        return await self._payouts.payout_proof(escrow_id)

    async def recover(self) -> None:
        """Finish what a stopped walletd left half done (`walletd.escrows.recovery`)."""
        await self._recovery.recover()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._payouts.run)  # payouts are driven in its nursery
            task_status.started()
            try:
                await self.recover()
            except StoreUnavailable as exc:  # serve anyway: /v1/health reports the database
                log.error("start-up recovery stopped", error=exc.message)
            await self._ownership.adopt_orphans(self._retries.run)  # a cluster's dead hosts
            await trio.sleep_forever()
