"""Which host may act on an escrow: the `Ownership` protocol, and one host's (`LocalOwnership`).

On one host (`LocalOwnership`) the host owns every escrow and nothing here does anything. In a
cluster (`walletd.cluster.lease_ownership`) an escrow's wallets may be open, and its durable state
written, only on the host holding the escrow's lease; `holding` takes the lease (or shares this
host's), keeps it renewed, and calls `on_lost` if it is lost, before any other host can take it.
The wallet files live in the database there: restored before an open, saved after each store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from walletd.ids import Role

__all__ = ["LocalOwnership", "OnLost", "Ownership"]

OnLost = Callable[[], Awaitable[None]]


class Ownership(Protocol):
    @property
    def host(self) -> str | None:
        """This host's id in a cluster (recorded as a payout's driver); None on one host."""
        ...

    def holding(
        self, escrow_id: str, on_lost: OnLost | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold the escrow for the block: `OwnedElsewhere` if another live host does.

        Holdings on one host share one lease. `on_lost` runs (once) if the lease is lost while
        this holding lasts: the holder must then stop touching the escrow's wallets at once.
        Writes made in the block (and by tasks started in it) are made under the lease this
        holding started with: once it is lost they are refused, even if the host holds the
        escrow again by then (a later holding's new epoch)."""
        ...

    def check_held(self, escrow_id: str) -> None:
        """Right before a money-moving wallet call (sign, submit): raise a `StoreUnavailable`
        (`Fenced` in a cluster) unless the running task's holding of the escrow is still valid,
        by a clock that runs on during a suspend."""
        ...

    async def live_hosts(self) -> set[str]:
        """The hosts alive now (fresh heartbeat): a payout one of them drives is its own."""
        ...

    async def owner_elsewhere(self, escrow_id: str) -> str | None:
        """The other live host holding the escrow, if any (a read: it may change right after)."""
        ...

    async def owned_elsewhere(self) -> set[str]:
        """Every escrow another live host holds now (the monitor leaves those to it)."""
        ...

    async def adopt_orphans(self, look: Callable[[], Awaitable[None]]) -> None:
        """Keep `look` running: it takes over what hosts that died left half done (their
        payouts). One host: no other host can leave anything behind, so it returns at once."""
        ...

    async def restore_wallets(self, escrow_id: str, files: Mapping[Role, str]) -> None:
        """Before an open: bring the escrow's wallet files up to the last stored version."""
        ...

    async def wallets_stored(self, escrow_id: str, files: Mapping[Role, str]) -> None:
        """After a store: keep the escrow's wallet files (names in `monero.wallet_dir`) off the
        host. `Fenced` if this host's lease is stale: the caller must stop."""
        ...


class LocalOwnership:
    """One host: it owns every escrow; wallet files stay in `monero.wallet_dir`."""

    @property
    def host(self) -> str | None:
        return None

    def holding(
        self, escrow_id: str, on_lost: OnLost | None = None
    ) -> AbstractAsyncContextManager[None]:
        return _nothing()

    def check_held(self, escrow_id: str) -> None:
        return None

    async def live_hosts(self) -> set[str]:
        return set()

    async def owner_elsewhere(self, escrow_id: str) -> str | None:
        return None

    async def owned_elsewhere(self) -> set[str]:
        return set()

    async def adopt_orphans(self, look: Callable[[], Awaitable[None]]) -> None:
        return None

    async def restore_wallets(self, escrow_id: str, files: Mapping[Role, str]) -> None:
        return None

    async def wallets_stored(self, escrow_id: str, files: Mapping[Role, str]) -> None:
        return None


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield
