"""This host's holdings of escrow leases: the lease-based `walletd.state.ownership.Ownership`.

One lease per escrow per host, shared by everything here that needs the escrow (its session,
a creation, a payout step, a monitor check) and counted: the first holding acquires it (epoch
+ 1), a `LeaseHolder` renews it, the last holding to end releases it. If it is lost (refused, or
not renewed in time), every holding's `on_lost` runs before it can expire in the database; the
escrow's writes are refused from then on (`tenure_of` is None, `Fenced`), and the next holding
acquires it afresh if nobody else has.

Acquiring is serialised per escrow on this host, so two local holders never race each other
for the lease (two acquires would be two epochs, the first one's writes fenced at once).

**A holding keeps the tenure it started under.** Once the lease is lost, a later holding here
acquires it afresh (epoch + 1); a holding from before the loss (a payout driver that read the
payout at `intent`) must not write under that new epoch with what it read under the old one. So a
write about an escrow uses the tenure of the holding the writing task is in, and is refused
(`Fenced`) once that holding's lease is lost, lapsed or superseded, even if this host holds the
escrow again by then. The holding is found through a context variable that `holding` sets for
its block, not passed to the store: every escrow write goes through `tenure_of` (the stores,
the wallet files) from many layers (the event log, the lifecycle, the monitor, the sessions), and
threading a token through each would change every write's signature and make each new write one
more place to forget it; the store would still need the host's tenure for writes made in no
holding. trio copies the context into every task started from inside the block, so a task a
holding starts (the payout driver started by a release call) writes under that holding or under
its own, never under a lease taken after it. A write made in no holding (an announcement written
on the way out while the lease lingers) uses this host's current lease, as before.

**Validity by the boot clock.** Each holding's lease is valid until its holder's deadline
measured on CLOCK_BOOTTIME (`LeaseHolder`), which runs on during a suspend: after one, the
lease is lapsed at once (`tenure_of` None, `check_held` Fenced), before the holder wakes to
declare it lost. `check_held` is asked right before every money-moving wallet call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType

import attrs
import structlog
import trio

from walletd.cluster.db import Connection
from walletd.cluster.holder import LeaseHolder, boottime
from walletd.cluster.hosts import Hosts
from walletd.cluster.leases import Leases, Tenure
from walletd.cluster.wallet_files import WalletFiles
from walletd.errors import ClusterUnavailable, Fenced, OwnedElsewhere, Unavailable
from walletd.ids import Role
from walletd.state.ownership import OnLost

__all__ = ["ClusterOwnership", "HoldingStats"]

log = structlog.get_logger(__name__)

RELEASE_TIMEOUT = 5.0  # seconds a release may take; else the lease just expires
RELEASE_LINGER = 2.0  # seconds an unused lease is kept before it is released


@attrs.define(eq=False)
class _Held:
    """One lease (one epoch) of an escrow as this host holds it, shared by its holdings."""

    tenure: Tenure
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    count: int = 0
    callbacks: list[OnLost] = attrs.Factory(list)
    lost: bool = False
    holder: LeaseHolder | None = None

    def valid(self) -> bool:
        """Not lost, and not past its holder's deadline by the boot clock (a suspend)."""
        return not self.lost and (self.holder is None or self.holder.valid())


_NONE: Mapping[str, _Held] = MappingProxyType({})


@attrs.frozen
class HoldingStats:
    held: int  # escrow leases this host holds now
    acquired: int  # acquires since start
    lost: int  # leases lost (self-fenced) since start


class ClusterOwnership:
    def __init__(
        self,
        leases: Leases,
        host_id: str,
        wallet_files: WalletFiles,
        wallet_dir: Path,
        *,
        hosts: Hosts | None = None,
        clock: Callable[[], float] = boottime,
    ) -> None:
        """`hosts`: the cluster's heartbeats (`live_hosts`); `clock`: what lease deadlines are
        measured on (the boot clock; tests inject one that jumps as a suspend would)."""
        self.leases = leases
        self.host_id = host_id
        self.wallet_files = wallet_files
        self.wallet_dir = wallet_dir
        self.hosts = hosts
        self.clock = clock
        # The holdings the running task is in (or was started in), by escrow: one variable per
        # ownership, so two hosts in one process (the tests) never see each other's.
        self._in: ContextVar[Mapping[str, _Held]] = ContextVar(f"holdings-{host_id}", default=_NONE)
        self._held: dict[str, _Held] = {}
        self._acquiring: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._acquired = 0
        self._lost = 0

    @property
    def host(self) -> str | None:
        return self.host_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The renewing holders live here."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def adopt_orphans(self, look: Callable[[], Awaitable[None]]) -> None:
        """Other hosts may die with payouts half done: `look` runs for as long as this host."""
        await look()

    def statistics(self) -> HoldingStats:
        return HoldingStats(held=len(self._held), acquired=self._acquired, lost=self._lost)

    def tenure_of(self, escrow_id: str) -> Tenure | None:
        """The token the running task writes about the escrow with: its holding's (see the
        module doc), else this host's current one; None if that lease is lost or lapsed."""
        held = self._in.get().get(escrow_id) or self._held.get(escrow_id)
        return held.tenure if held is not None and held.valid() else None

    def check_held(self, escrow_id: str) -> None:
        """`Fenced` unless the running task's holding of the escrow (else this host's lease of
        it) is still valid, by the boot clock: asked right before a money-moving wallet call."""
        if self.tenure_of(escrow_id) is None:
            log.warning("wallet call refused: lease lost or lapsed", escrow_id=escrow_id)
            raise Fenced(f"escrow {escrow_id}: this host's lease is lost or lapsed; no wallet call")

    async def live_hosts(self) -> set[str]:
        """The hosts whose heartbeat is fresh (`Hosts.live_within`, by the database clock)."""
        if self.hosts is None:
            return {self.host_id}
        return {h.host_id for h in await self.hosts.live_hosts(self.hosts.live_within)}

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
        entered = self._in.set(MappingProxyType({**self._in.get(), escrow_id: held}))
        try:
            yield
        finally:
            self._in.reset(entered)
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
        """Release under the escrow's acquiring lock: a holding asked for meanwhile waits for
        the release to end and then acquires afresh, instead of finding the row still ours and
        answering 503 "held by an earlier run of this host"."""
        escrow_id = held.tenure.escrow_id
        if held.count != 0 or self._held.get(escrow_id) is not held:
            return
        lock = self._acquiring.setdefault(escrow_id, trio.Lock())
        with trio.CancelScope(shield=True):
            try:
                async with lock:
                    if held.count != 0 or self._held.get(escrow_id) is not held:
                        return  # used again while we waited for the lock
                    del self._held[escrow_id]
                    held.scope.cancel()
                    with trio.move_on_after(RELEASE_TIMEOUT):
                        try:
                            await self.leases.release(held.tenure)
                        except ClusterUnavailable as exc:  # it expires by itself
                            log.warning("lease release failed", escrow_id=escrow_id, error=str(exc))
            finally:
                if not lock.locked() and self._acquiring.get(escrow_id) is lock:
                    del self._acquiring[escrow_id]

    async def _hold(self, escrow_id: str) -> _Held:
        held = self._held.get(escrow_id)
        if held is not None and held.valid():
            return held
        lock = self._acquiring.setdefault(escrow_id, trio.Lock())
        try:
            async with lock:
                held = self._held.get(escrow_id)
                if held is not None and held.valid():
                    return held
                started = self.clock()
                tenure = await self.leases.acquire(escrow_id, self.host_id)
                if tenure is None:
                    raise await self._taken(escrow_id)
                held = _Held(tenure)
                self._held[escrow_id] = held
                self._acquired += 1
                holder = held.holder = LeaseHolder(
                    self.leases,
                    tenure,
                    lambda: self._on_lost(held),
                    acquired_at=started,
                    clock=self.clock,
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
