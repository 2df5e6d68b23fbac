"""The registry's limits (its part of the `[sessions]` config) and the figures it reports.

Figures are frozen snapshots, as trio's `statistics()` gives them: an actor offers
`statistics()` (`Registry`, `EscrowSession`), and readers (`/v1/stats`, `/metrics`) only read
them; no one else bumps an actor's counters."""

from __future__ import annotations

import attrs

from walletd.jsontypes import JsonObject

__all__ = ["Limits", "RegistryStatistics", "SessionInfo", "SessionStatistics"]


@attrs.frozen
class Limits:
    max_active: int = 10
    idle_ttl: float = 7200.0
    sweep_interval: float = 600.0
    capacity_wait: float = 30.0
    # How long a money-moving caller waits for a slot: the request timeout (daemon's
    # request_timeout), so a payout fails for want of a slot only when its request would.
    payout_wait: float = 90.0
    evict_grace: float = 60.0
    # The monitor may take the slot of a session the API has not used for this long: such a
    # session is as cold as the escrows the monitor is waiting to check.
    monitor_evict_after: float = 300.0


@attrs.frozen
class SessionInfo:
    escrow_id: str
    age_s: float
    idle_s: float
    busy: bool
    exchanged: bool = False  # holds a multisig info exchange a payout may use (PreExchange)

    def to_json(self) -> JsonObject:
        return {
            "escrow_id": self.escrow_id,
            "age_s": round(self.age_s, 3),
            "idle_s": round(self.idle_s, 3),
            "busy": self.busy,
        }


@attrs.frozen
class SessionStatistics:
    """What one session did: `EscrowSession.statistics()`."""

    restores: int  # times it restored its set of handles
    wallet_rpc_restarts: int  # wallet-rpc processes replaced (one per handle lost in a restore)
    warm_payouts: int  # payouts prepared without a multisig info exchange (warm_payout)


@attrs.frozen
class RegistryStatistics:
    """The registry's figures: `Registry.statistics()` (`/v1/stats`, `/metrics`)."""

    active_sessions: int
    max_sessions: int
    utilization: float
    avg_age_s: float
    oldest_age_s: float
    opened: int
    closed: int
    evicted: int
    expired: int
    hits: int
    misses: int
    failed: int
    waiting: dict[str, int] = attrs.field(factory=dict)  # callers queued for a slot, per kind
    # wallet-rpc processes its sessions replaced since start, the sessions gone included
    wallet_rpc_restarts: int = 0
