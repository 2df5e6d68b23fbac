"""Retrying payouts: spaced by an exponential back-off, and on one host only (issue 19).

A payout attempt that fails (monerod behind, a wallet-rpc error, the database away), or whose
host dies half way, leaves the payout recorded at `intent` or `signed`. Before, every host of a
cluster resumed every such payout every 5 s, for ever, each try restoring and opening three
wallets and taking a backup. Now:

- **Each attempt is recorded on the payout** by the host that starts it (`attempted`): how many
  there were, when the last began (`tried_at`), the host driving it (`driver`), and the earliest
  time an automatic retry may begin (`next_try_at`: `retry_delay` after the attempt began,
  doubled per attempt up to RETRY_MAX). The write is compare-and-set on the payout's phase and
  txids, under the escrow's lease.
- **Who retries.** A payout's own host retries it once its back-off has passed. Another host
  adopts it only once its driver is no longer live (its heartbeat stale: `live_hosts`) and nobody
  holds the escrow's lease, and its back-off has passed too. A payout recorded by an older walletd
  names no driver: anyone may take it once it is unheld, as before. At start-up a host resumes its
  own payouts at once (its earlier run is dead), others' by the same rule.
- **Once.** The decision is made a second time under the escrow's lease, on a fresh read: of two
  survivors that both saw a dead host's payout, the second finds it recorded as driven by the
  first (alive), and leaves it.

The times are the hosts' wall clocks (`utcnow()`): a host whose clock runs ahead retries early by
as much, which back-off tolerates; whether a host is alive is the database's clock (heartbeats).
Explicit release/refund calls are not held back: a client's retry drives the payout at once.
`walletd_payout_retries_total{source}` counts the retries: restart, retry, adopted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import attrs
import structlog
import trio

from walletd.errors import OwnedElsewhere, StoreUnavailable, WalletdError
from walletd.escrows.model import EscrowRecord, EscrowState, Payout, PayoutPhase, utcnow
from walletd.escrows.service import EscrowService
from walletd.ops.metrics import Metrics
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore

__all__ = [
    "ORPHAN_CHECK_INTERVAL",
    "RESUMABLE",
    "RETRY_BASE",
    "RETRY_MAX",
    "PayoutRetries",
    "attempted",
    "retry_delay",
    "retry_source",
]

log = structlog.get_logger(__name__)

ORPHAN_CHECK_INTERVAL = 5.0  # seconds between looks for payouts to retry (a cluster)
RETRY_BASE = 5.0  # seconds after an attempt began before its first automatic retry
RETRY_MAX = 300.0  # the back-off doubles per attempt up to this
RESUMABLE = (PayoutPhase.INTENT, PayoutPhase.SIGNED)  # never REFUSED: it is not signed again


def retry_delay(attempts: int) -> float:
    """Seconds after attempt number `attempts` began before an automatic retry may begin."""
    return min(RETRY_MAX, RETRY_BASE * 2.0 ** max(0, attempts - 1))


def _utc(at: datetime) -> str:
    """A time as `utcnow()` writes it: recorded times then compare as strings."""
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attempted(payout: Payout, host: str | None) -> Payout:
    """`payout` with one more attempt, begun now by `host`."""
    attempts = payout.attempts + 1
    now = datetime.now(UTC)
    return attrs.evolve(
        payout,
        attempts=attempts,
        tried_at=_utc(now),
        driver=host,
        next_try_at=_utc(now + timedelta(seconds=retry_delay(attempts))),
    )


def retry_source(
    payout: Payout, host: str | None, live: set[str], *, starting: bool = False
) -> str | None:
    """Why `host` may drive `payout` now, or None: "restart" (its own, at start-up), "retry"
    (its own, back-off passed), "adopted" (another host's or nobody's, that host not in `live`,
    back-off passed). Whether the escrow's lease is free is the caller's to check."""
    if payout.phase not in RESUMABLE:
        return None
    own = payout.driver == host  # one host: both None, always its own
    if not own and payout.driver in live:
        return None  # its host is alive: it retries the payout itself
    if starting and own:
        return "restart"
    if payout.next_try_at is not None and payout.next_try_at > utcnow():
        return None
    return "retry" if own else "adopted"


class PayoutRetries:
    """The cluster's look for payouts to retry, every ORPHAN_CHECK_INTERVAL (see module doc)."""

    def __init__(
        self,
        *,
        store: StateStore,
        escrows: EscrowService,
        ownership: Ownership,
        metrics: Metrics,
        run_payout: Callable[[EscrowRecord], Awaitable[object]],
        driving: Callable[[str], bool],
    ) -> None:
        """`run_payout(record)`: drive the record's payout and wait for it (the payouts');
        `driving(escrow_id)`: whether this host drives it now."""
        self._store = store
        self._escrows = escrows
        self._ownership = ownership
        self._metrics = metrics
        self._run_payout = run_payout
        self._driving = driving
        self._retrying: set[str] = set()  # escrows whose retry is being decided or driven

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(ORPHAN_CHECK_INTERVAL)
                try:
                    for escrow_id in await self._due():
                        self._retrying.add(escrow_id)
                        nursery.start_soon(self._retry, escrow_id)
                except StoreUnavailable as exc:
                    log.warning("payout retry check skipped", error=exc.message)

    async def _due(self) -> list[str]:
        """The payouts this host may retry now, as far as a read without the lease can tell."""
        elsewhere = await self._ownership.owned_elsewhere()
        live: set[str] | None = None
        due = []
        for rec in await self._store.list_escrows(EscrowState.READY):
            escrow_id, payout = rec.escrow_id, rec.payout
            if payout is None or payout.phase not in RESUMABLE:
                continue
            if escrow_id in elsewhere or escrow_id in self._retrying or self._driving(escrow_id):
                continue
            if live is None:  # read once per round, and only when a payout waits
                live = await self._ownership.live_hosts()
            if retry_source(payout, self._ownership.host, live) is not None:
                due.append(escrow_id)
        return due

    async def _retry(self, escrow_id: str) -> None:
        """Decide again under the escrow's lease, on a fresh read (another host may have taken
        the payout between the list and the lease), then drive it."""
        try:
            async with self._ownership.holding(escrow_id):
                # The fresh read the decision is made on, and the record the drive starts from.
                rec = await self._escrows.get(escrow_id)
                payout = rec.payout
                if payout is None or self._driving(escrow_id):
                    return
                live = await self._ownership.live_hosts()
                source = retry_source(payout, self._ownership.host, live)
                if source is None:
                    return
                self.retried(escrow_id, payout, source)
                await self._run_payout(rec)
        except OwnedElsewhere:
            return  # another host took it first
        except WalletdError as exc:  # tried again after its back-off
            log.warning("payout retry failed", escrow_id=escrow_id, error=str(exc))
        finally:
            self._retrying.discard(escrow_id)

    def retried(self, escrow_id: str, payout: Payout, source: str) -> None:
        """Log and count one retry of `payout` (`source`: see `retry_source`)."""
        log.warning(
            "resuming a payout left by another host" if source == "adopted" else "retrying payout",
            escrow_id=escrow_id,
            phase=payout.phase.value,
            attempts=payout.attempts,
            driver=payout.driver,
            source=source,
        )
        self._metrics.payout_retry(source)
