"""This host's holdings of escrow leases: the cluster's side of `walletd.state.ownership`.

One lease per escrow per host, shared by everything here that needs the escrow (its session,
a creation, a payout step, a monitor check) and counted: the first holding acquires it (epoch
+ 1), a `LeaseHolder` renews it, the last holding to end releases it. If it is lost (refused, or
not renewed in time), every holding's `on_lost` runs before it can expire in the database; the
escrow's writes are refused from then on (`tenure_of` is None, `Fenced`), and the next holding
acquires it afresh if nobody else has.

Acquiring is serialised per escrow on this host, so two local holders never race each other
for the lease (two acquires would be two epochs, the first one's writes fenced at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import structlog
import trio

from walletd.cluster.db import ClusterUnavailable, Connection
from walletd.cluster.holder import LeaseHolder
from walletd.cluster.leases import Leases, Tenure
from walletd.cluster.wallet_files import WalletFiles
from walletd.errors import OwnedElsewhere, Unavailable
from walletd.ids import Role
from walletd.state.ownership import OnLost

__all__ = ["ClusterOwnership", "HoldingStats"]

log = structlog.get_logger(__name__)

RELEASE_TIMEOUT = 5.0  # seconds a release may take; else the lease just expires
RELEASE_LINGER = 2.0  # seconds an unused lease is kept before it is released


@attrs.define(eq=False)
class _Held:
    tenure: Tenure
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    count: int = 0
    callbacks: list[OnLost] = attrs.Factory(list)
    lost: bool = False


@attrs.frozen
class HoldingStats:
    held: int  # escrow leases this host holds now
    acquired: int  # acquires since start
    lost: int  # leases lost (self-fenced) since start


class ClusterOwnership:
    def __init__(
        self, leases: Leases, host_id: str, wallet_files: WalletFiles, wallet_dir: Path
    ) -> None:
        self.leases = leases
        self.host_id = host_id
        self.wallet_files = wallet_files
        self.wallet_dir = wallet_dir
        self._held: dict[str, _Held] = {}
        self._acquiring: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._acquired = 0
        self._lost = 0

    @property
    def clustered(self) -> bool:
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The renewing holders live here."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def statistics(self) -> HoldingStats:
        return HoldingStats(held=len(self._held), acquired=self._acquired, lost=self._lost)

    def tenure_of(self, escrow_id: str) -> Tenure | None:
        """The token this host writes about the escrow with; None if it holds no live lease."""
        held = self._held.get(escrow_id)
        return held.tenure if held is not None and not held.lost else None

    def holding(
        self, escrow_id: str, on_lost: OnLost | None = None
    ) -> AbstractAsyncContextManager[None]:
        return self._holding(escrow_id, on_lost)

    @asynccontextmanager
    async def _holding(self, escrow_id: str, on_lost: OnLost | None) -> AsyncIterator[None]:
        held = await self._hold(escrow_id)
        held.count += 1
        if on_lost is not None:
            held.callbacks.append(on_lost)
        try:
            yield
        finally:
            held.count -= 1
            if on_lost is not None:
                held.callbacks.remove(on_lost)
            if held.count == 0 and self._held.get(escrow_id) is held and self._nursery:
                self._nursery.start_soon(self._linger_then_release, held)

    async def _linger_then_release(self, held: _Held) -> None:
        """Keep an unused lease a moment before releasing it: what its last holder announced
        on the way out (a session_closed event) is still written under it, and an escrow used
        again at once is not handed back and forth. Released at once on shutdown."""
        try:
            await trio.sleep(RELEASE_LINGER)
        finally:
            await self._release_if_unused(held)

    async def release_unused(self) -> None:
        """A graceful stop, once the sessions are closed and stored and their announcements
        written: hand back every lease nothing here uses, now rather than after the linger, so
        another host serves those escrows at once."""
        async with trio.open_nursery() as nursery:
            for held in list(self._held.values()):
                nursery.start_soon(self._release_if_unused, held)

    async def _release_if_unused(self, held: _Held) -> None:
        escrow_id = held.tenure.escrow_id
        if held.count == 0 and self._held.get(escrow_id) is held:
            del self._held[escrow_id]
            held.scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT):
                try:
                    await self.leases.release(held.tenure)
                except ClusterUnavailable as exc:  # it expires by itself
                    log.warning("lease release failed", escrow_id=escrow_id, error=str(exc))

    async def _hold(self, escrow_id: str) -> _Held:
        held = self._held.get(escrow_id)
        if held is not None and not held.lost:
            return held
        lock = self._acquiring.setdefault(escrow_id, trio.Lock())
        try:
            async with lock:
                held = self._held.get(escrow_id)
                if held is not None and not held.lost:
                    return held
                started = trio.current_time()
                tenure = await self.leases.acquire(escrow_id, self.host_id)
                if tenure is None:
                    raise await self._taken(escrow_id)
                held = _Held(tenure)
                self._held[escrow_id] = held
                self._acquired += 1
                holder = LeaseHolder(
                    self.leases, tenure, lambda: self._on_lost(held), acquired_at=started
                )
                assert self._nursery is not None, "cluster ownership is not running"
                self._nursery.start_soon(self._keep, held, holder)
                log.info("lease acquired", escrow_id=escrow_id, epoch=tenure.epoch)
                return held
        finally:
            if not lock.locked() and self._acquiring.get(escrow_id) is lock:
                del self._acquiring[escrow_id]

    async def _taken(self, escrow_id: str) -> Unavailable:
        owner = await self.owner_of(escrow_id)
        if owner is None or owner == self.host_id:
            # Ours from a run of this host that ended without releasing it (kill -9): it
            # expires within lease_ttl; taking it back sooner could meet that run still alive.
            return Unavailable(
                f"escrow {escrow_id}: its lease is still held by an earlier run of this host;"
                " free within lease_ttl"
            )
        return OwnedElsewhere(f"escrow {escrow_id} is served by host {owner}", owner)

    @staticmethod
    async def _keep(held: _Held, holder: LeaseHolder) -> None:
        with held.scope:
            await holder.run()

    async def _on_lost(self, held: _Held) -> None:
        held.lost = True
        self._lost += 1
        if self._held.get(held.tenure.escrow_id) is held:
            del self._held[held.tenure.escrow_id]
        async with trio.open_nursery() as nursery:
            for callback in list(held.callbacks):
                nursery.start_soon(callback)

    # ---- reads ------------------------------------------------------------------------------

    async def owner_of(self, escrow_id: str) -> str | None:
        """The live holder of the escrow's lease (this host included), by the database clock."""

        def job(conn: Connection) -> str | None:
            row = conn.execute(
                "SELECT host_id FROM leases WHERE escrow_id = %s AND host_id IS NOT NULL"
                " AND expires_at > cluster_now()",
                (escrow_id,),
            ).fetchone()
            return str(row[0]) if row else None

        return await self.leases.db.run(job, abandon_on_cancel=True)

    async def owner_elsewhere(self, escrow_id: str) -> str | None:
        if self.tenure_of(escrow_id) is not None:
            return None
        owner = await self.owner_of(escrow_id)
        return owner if owner != self.host_id else None

    async def owned_elsewhere(self) -> set[str]:
        def job(conn: Connection) -> set[str]:
            rows = conn.execute(
                "SELECT escrow_id FROM leases WHERE host_id IS NOT NULL AND host_id <> %s"
                " AND expires_at > cluster_now()",
                (self.host_id,),
            ).fetchall()
            return {str(r[0]) for r in rows}

        return await self.leases.db.run(job, abandon_on_cancel=True)

    # ---- wallet files -----------------------------------------------------------------------

    async def restore_wallets(self, escrow_id: str, files: Mapping[Role, str]) -> None:
        """The latest stored version of each wallet into the wallet directory. A wallet the
        database has no version of yet (adopted here from local files) is saved first, so its
        only copy is never this host's disk."""
        for role, name in files.items():
            version = await self.wallet_files.restore(escrow_id, role, self.wallet_dir, name)
            if version is not None:
                log.info("wallet files restored", escrow_id=escrow_id, role=role, version=version)
            elif (self.wallet_dir / f"{name}.keys").exists():
                await self.wallets_stored(escrow_id, {role: name})

    async def wallets_stored(self, escrow_id: str, files: Mapping[Role, str]) -> None:
        tenure = self.tenure_of(escrow_id)
        if tenure is None:
            raise self.leases.refused(escrow_id)  # counted with the other refused writes
        for role, name in files.items():
            await self.wallet_files.save(tenure, role, self.wallet_dir, name)
