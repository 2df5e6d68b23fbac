"""What every escrow job works with, built once by the app and handed to each.

Creation, payouts, retries and recovery (and the lifecycle that composes them), and the monitor
above them, act on the same store, records, sessions, event log, chain, metrics and ownership;
naming them once here keeps each one's constructor down to what is its own (a vault and
directories for creation, fee settings for payouts, the payout drive for retries, the
`[monitor]` section for the monitor).
"""

from __future__ import annotations

import attrs

from walletd.escrows.service import EscrowService
from walletd.ops.metrics import Metrics
from walletd.sessions.registry import Registry
from walletd.state.events import EventLog
from walletd.state.ownership import Ownership
from walletd.state.store import StateStore
from walletd.wallets.chain import Chain

__all__ = ["EscrowParts"]


@attrs.frozen
class EscrowParts:
    store: StateStore  # durable records (SQLite on one host, PostgreSQL in a cluster)
    escrows: EscrowService  # escrow records, claims, the specs sessions open from
    registry: Registry  # the sessions: every wallet call goes through one
    events: EventLog  # state changes and their events, written together
    chain: Chain  # monerod (whichever is in use)
    metrics: Metrics
    ownership: Ownership  # which host may act on an escrow, and its lease while it does
