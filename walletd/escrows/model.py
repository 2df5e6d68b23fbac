"""The escrow model: the records walletd keeps about an escrow, shared by every layer.

A leaf: it imports nothing of walletd's layers, so the durable state (`walletd.state`) can store
it and the escrow service, lifecycle, monitor and API can all speak it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from walletd.ids import Role

__all__ = ["EscrowRecord", "WalletRef", "utcnow"]


def utcnow() -> str:
    """Now as an RFC 3339 UTC string with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen
class WalletRef:
    """Where one role's wallet lives and how to get its password (never the password itself)."""

    file: str
    sealed_password: str | None = attrs.field(default=None, repr=False)  # adopted wallets only


@attrs.frozen
class EscrowRecord:
    escrow_id: str
    state: str
    amount: int
    required_confirmations: int
    multisig_address: str | None
    origin: str  # "created" or "adopted"
    wallets: Mapping[Role, WalletRef]
    request_digest: str
    funding: Mapping[str, Any]
    payout: Mapping[str, Any] | None
    created_at: str
    updated_at: str
