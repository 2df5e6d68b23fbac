"""Is a proposed payout the one walletd recorded? Checked before the second signature.

A payout is a sweep: the proposer's `sweep_all` spends the escrow's whole unlocked balance to the
recorded address, less the fee. The co-signer decodes the proposal itself (`describe_transfer`
on the `multisig_txset`, which reads the transaction, not what the proposer said about it) and
`check` compares that description with what walletd expects. Anything else is refused before
it is signed, whatever made it (a bug, a damaged or tampered proposer process):

- every transaction pays exactly one destination besides change, and that destination is the
  recorded address, character for character;
- its payment id is the recorded address's: none for a standard address or subaddress, the
  integrated address's own for an integrated one. Measured on regtest (0.18.0.0): a sweep to an
  integrated address is described with that integrated address as its recipient and its payment
  id in clear in `payment_id` (the transaction carries it encrypted); a sweep to a standard
  address with `payment_id` "" (its dummy encrypted id is all zeros and not shown). A payment id
  changed or added, even with the standard part of the address right, is refused;
- `unlock_time` is 0 in every transaction: a payout the recipient cannot spend for years (a
  far-future unlock time) is not the payout, although it pays the right address the right amount;
- the transactions spend the whole unlocked balance: inputs == balance and, per transaction,
  destination + change + fee == inputs;
- change back to the escrow is at most `DUST` (a sweep makes none);
- the fee is at most `max_fee`: the daemon's fee per byte for the payout's priority, times the
  estimated weight of a sweep with this many inputs, times the configured tolerance (`Expected`).

Pure: no I/O. The caller gathers `Expected` and the description.
"""

from __future__ import annotations

from typing import Any

import attrs

from walletd.errors import PayoutRefused

__all__ = ["DUST", "Expected", "check"]

# A sweep has no change; a few piconero of rounding would be harmless, more is money left behind.
DUST = 1_000_000  # 1e-6 XMR


@attrs.frozen
class Expected:
    """What the proposal must be, from the payout record and the co-signer's own wallet."""

    address: str  # the recorded destination, as recorded (integrated addresses included)
    unlocked_balance: int  # what a sweep of the whole balance spends
    max_fee: int  # atomic units for all the proposal's transactions together
    payment_id: str = ""  # 16 hex digits for an integrated address; "" for any other


def _int(raw: dict[str, Any], key: str) -> int:  # Any: JSON values
    value = raw.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PayoutRefused(f"the proposal's description has a bad {key!r}")
    return value


def check(description: dict[str, Any], expected: Expected) -> int:  # Any: JSON values
    """Raise `PayoutRefused` naming the first mismatch; the proposal's total fee if it is the
    payout."""
    descs = description.get("desc")
    if not isinstance(descs, list) or not descs:
        raise PayoutRefused("the proposal describes no transaction")
    amount_in = fee = 0
    for desc in descs:
        if not isinstance(desc, dict):
            raise PayoutRefused("the proposal's description is not a transaction")
        recipients = desc.get("recipients")
        if not isinstance(recipients, list) or len(recipients) != 1:
            count = len(recipients) if isinstance(recipients, list) else 0
            raise PayoutRefused(f"{count} destinations besides change; a payout has exactly one")
        recipient = recipients[0]
        if not isinstance(recipient, dict) or recipient.get("address") != expected.address:
            raise PayoutRefused("the destination is not the recorded payout address")
        # Both required, not defaulted: wallet-rpc 0.18 always describes them, and a field
        # missing from a description is no proof of what the transaction holds.
        if desc.get("payment_id") != expected.payment_id:
            raise PayoutRefused("the payment id is not the recorded payout address's")
        unlock_time = desc.get("unlock_time")
        if type(unlock_time) is not int or unlock_time != 0:
            raise PayoutRefused(
                f"unlock_time {unlock_time!r}; a payout must be spendable at once (0)"
            )
        change = _int(desc, "change_amount")
        if change > DUST:
            raise PayoutRefused(f"change of {change} back to the escrow; a sweep has none")
        tx_in, tx_fee = _int(desc, "amount_in"), _int(desc, "fee")
        if _int(recipient, "amount") + change + tx_fee != tx_in:
            raise PayoutRefused("destination, change and fee do not add up to the inputs")
        amount_in += tx_in
        fee += tx_fee
    if amount_in != expected.unlocked_balance:
        raise PayoutRefused(
            f"spends {amount_in} of an unlocked balance of {expected.unlocked_balance}; "
            "a payout sweeps all of it"
        )
    if fee > expected.max_fee:
        raise PayoutRefused(f"fee {fee} is above the bound {expected.max_fee} for its size")
    return fee
