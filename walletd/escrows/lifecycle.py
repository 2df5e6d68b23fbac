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
from walletd.escrows.parts import EscrowParts
from walletd.escrows.payouts import Payouts
from walletd.escrows.recovery import Recovery
from walletd.escrows.retries import PayoutRetries
from walletd.state.vault import Vault

__all__ = ["Lifecycle"]

log = structlog.get_logger(__name__)


class Lifecycle:
    def __init__(
        self,
        parts: EscrowParts,
        *,
        vault: Vault,
        wallet_dir: Path,
        state_dir: Path,
        daemon_check: float = 2.0,
        fee_priority: int = 0,
        fee_tolerance: float = 2.0,
    ) -> None:
        self._ownership = parts.ownership
        self._payouts = Payouts(parts, fee_priority=fee_priority, fee_tolerance=fee_tolerance)
        self._retries = PayoutRetries(
            parts, run_payout=self._payouts.drive, driving=self._payouts.driving
        )
        self._creation = Creation(
            parts,
            vault=vault,
            wallet_dir=wallet_dir,
            state_dir=state_dir,
            daemon_check=daemon_check,
        )
        self._recovery = Recovery(
            parts, creation=self._creation, payouts=self._payouts, retries=self._retries
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
