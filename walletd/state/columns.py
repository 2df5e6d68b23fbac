"""An escrow record's JSON columns (wallets, funding, payout) as walletd writes and reads them.

Shared by the SQLite store and the cluster's PostgreSQL store, so that both keep exactly the same
JSON (older rows included) and an `EscrowRecord` reads back identical from either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from walletd.escrows.model import Funding, Payout, PayoutKind, PayoutPhase, WalletRef
from walletd.ids import ROLES, Role
from walletd.jsontypes import JsonObject

__all__ = [
    "funding_from_json",
    "funding_to_json",
    "payout_from_json",
    "payout_to_json",
    "wallets_from_json",
    "wallets_to_json",
]


def wallets_to_json(wallets: Mapping[Role, WalletRef]) -> str:
    return json.dumps(
        {r: {"file": w.file, "sealed_password": w.sealed_password} for r, w in wallets.items()}
    )


def wallets_from_json(text: str) -> dict[Role, WalletRef]:
    raw = json.loads(text)
    return {r: WalletRef(raw[r]["file"], raw[r].get("sealed_password")) for r in ROLES}


def funding_to_json(funding: Funding) -> str:
    raw: dict[str, object] = {
        "balance": funding.balance,
        "unlocked_balance": funding.unlocked_balance,
        "confirmations": funding.confirmations,
        "checked_at": funding.checked_at,
    }
    if funding.ready_height is not None:  # only once seen ready: older rows stay as they were
        raw["ready_height"] = funding.ready_height
    return json.dumps(raw)


def funding_from_json(text: str) -> Funding:
    raw = json.loads(text)
    return Funding(
        balance=raw.get("balance", 0),
        unlocked_balance=raw.get("unlocked_balance", 0),
        confirmations=raw.get("confirmations", 0),
        checked_at=raw.get("checked_at"),
        ready_height=raw.get("ready_height"),
    )


def payout_to_json(payout: Payout) -> str:
    """The payout column as walletd has always written it: the intent's keys always, what
    signing adds (txids, signed_txset, amount, fee), last_error and the attempts' record
    (attempts, tried_at, driver, next_try_at) only once known: older rows, without them, read
    back as a payout never attempted by any known host."""
    raw: JsonObject = {  # Any: JSON values
        "kind": payout.kind.value,
        "address": payout.address,
        "phase": payout.phase.value,
        "created_at": payout.created_at,
        "txid": payout.txid,
        "confirmations": payout.confirmations,
        "submitted_at": payout.submitted_at,
    }
    later = {
        "txids": list(payout.txids) if payout.txids is not None else None,
        "signed_txset": payout.signed_txset,
        "amount": payout.amount,
        "fee": payout.fee,
        "last_error": payout.last_error,
        "fee_priority": payout.fee_priority,
        "attempts": payout.attempts or None,
        "tried_at": payout.tried_at,
        "driver": payout.driver,
        "next_try_at": payout.next_try_at,
    }
    raw.update((key, value) for key, value in later.items() if value is not None)
    return json.dumps(raw)


def payout_from_json(text: str) -> Payout:
    raw = json.loads(text)
    txids = raw.get("txids")
    return Payout(
        kind=PayoutKind(raw["kind"]),
        address=raw["address"],
        phase=PayoutPhase(raw["phase"]),
        created_at=raw["created_at"],
        txid=raw.get("txid"),
        confirmations=raw.get("confirmations", 0),
        submitted_at=raw.get("submitted_at"),
        txids=tuple(txids) if txids is not None else None,
        signed_txset=raw.get("signed_txset"),
        amount=raw.get("amount"),
        fee=raw.get("fee"),
        last_error=raw.get("last_error"),
        fee_priority=raw.get("fee_priority"),
        attempts=raw.get("attempts", 0),
        tried_at=raw.get("tried_at"),
        driver=raw.get("driver"),
        next_try_at=raw.get("next_try_at"),
    )
