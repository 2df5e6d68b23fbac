"""A session that may run only while this host holds its escrow (a cluster, issue 14).

Around an `EscrowSession`: hold the escrow's lease (`OwnedElsewhere` if another live host does:
the open fails and the API forwards the request there), bring the wallet files up to the last
version stored in the database, run the session, and save the files once it has closed them.
If the lease is lost meanwhile, the holder calls back before the lease can expire anywhere:
the session is cancelled and its wallet-rpc processes killed unsaved (`WalletHandles.fence`),
so no two hosts ever have one escrow's wallets open. Right before a money-moving wallet call
(sign, submit) the session asks whether that lease is still valid by the boot clock
(`Ownership.check_held`, in this task: the session's own holding): after a suspend it is not,
and the call is refused (`Fenced`) before the holder has even woken to declare the lease lost.
"""

from __future__ import annotations

import structlog
import trio

from walletd.errors import SessionFailed
from walletd.ids import ROLES
from walletd.sessions.limits import SessionStatistics
from walletd.sessions.mailbox import SessionHandle
from walletd.sessions.session import EscrowSession
from walletd.state.ownership import Ownership

__all__ = ["LeasedSession"]

log = structlog.get_logger(__name__)


class LeasedSession:
    def __init__(self, session: EscrowSession, ownership: Ownership) -> None:
        self.session = session
        self._ownership = ownership

    def statistics(self) -> SessionStatistics:
        return self.session.statistics()

    async def run(self, *, task_status: trio.TaskStatus[SessionHandle]) -> None:
        session = self.session
        escrow_id = session.escrow_id
        files = {role: session.spec.wallets[role].file for role in ROLES}
        scope = trio.CancelScope()

        async def lost() -> None:
            log.error("lease lost: killing the escrow's wallet-rpc processes", escrow_id=escrow_id)
            scope.cancel()
            # Its first step, before anything can yield, refuses every reopen from here on.
            await session.fence()

        session.lease_check = lambda: self._ownership.check_held(escrow_id)
        with scope:
            async with self._ownership.holding(escrow_id, on_lost=lost):
                if not session.spec.create:
                    await self._ownership.restore_wallets(escrow_id, files)
                await session.run(task_status=task_status)
                # Closed: close_wallet stored each wallet; keep that version off the host.
                await self._ownership.wallets_stored(escrow_id, files)
        if scope.cancelled_caught:
            raise SessionFailed(f"escrow {escrow_id}: this host lost its lease; session stopped")
