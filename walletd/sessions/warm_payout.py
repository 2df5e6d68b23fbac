"""A payout on a warm session: propose, co-sign, no multisig info exchange, when that is safe.

A multisig spend needs each signer to hold the others' multisig info (export/import) for every
output it spends. The session exchanges it among all three wallets ahead of a payout
(`PreExchange`) and records what that exchange covered (`Exchanged`): the incoming transfers each
wallet had then. `PreparePayout` skips the exchange only while it still covers the escrow:

- the two signers' incoming transfers are those the exchange saw (no funds arrived since: an
  output received after it has no key image yet, and wallet-rpc's `sweep_all` silently leaves
  such outputs out of the sweep), and neither wallet says `multisig_import_needed`;
- the marker is used at most once: a proposal consumes the signing nonces it was made with, so a
  payout attempt that failed or is repeated always exchanges afresh;
- the proposal sweeps the signers' whole unlocked balance (amount + fee); anything less, or a
  wallet-rpc error that means stale or missing multisig info, falls back to a fresh exchange and
  one more proposal: the old way, which sweeps everything as before.

The marker lives in the session's memory only: a reopened or restored session has none and
exchanges afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import structlog

from walletd.errors import RpcCallError
from walletd.ids import Role
from walletd.wallets import multisig
from walletd.wallets.rpc import WalletRpc

__all__ = ["Exchanged", "incoming", "prepare", "sync_needed"]

log = structlog.get_logger(__name__)

NO_TRANSACTION_CREATED = -16  # sweep_all/transfer of a multisig wallet without imported info
SIGN_FAILED = -35  # sign_multisig: "...stale data: export fresh multisig data..."


@attrs.frozen
class Exchanged:
    """What an exchange of multisig info covered: each wallet's incoming transfers (txids)."""

    incoming: Mapping[Role, frozenset[str]]


async def incoming(rpc: WalletRpc) -> frozenset[str]:
    """The txids of the wallet's mined incoming transfers, as it sees them now."""
    answer = await rpc.call("get_transfers", {"in": True})
    return frozenset(str(t.get("txid", "")) for t in answer.get("in", []))


def sync_needed(exc: multisig.MultisigError) -> bool:
    """Whether wallet-rpc refused a proposal or signature for want of fresh multisig info."""
    rpc_error = exc.rpc_error
    if not isinstance(rpc_error, RpcCallError):
        return False
    if rpc_error.code == NO_TRANSACTION_CREATED:
        return True
    return rpc_error.code == SIGN_FAILED and "stale" in rpc_error.rpc_message.lower()


async def _covered(marker: Exchanged, signers: Mapping[Role, WalletRpc]) -> tuple[bool, int]:
    """(the exchange still covers both signers, the proposer's unlocked balance)."""
    unlocked = -1
    for index, (role, rpc) in enumerate(signers.items()):
        balance = await rpc.call("get_balance", {"account_index": 0})
        if index == 0:
            unlocked = int(balance.get("unlocked_balance", 0))
        if balance.get("multisig_import_needed") or await incoming(rpc) != marker.incoming.get(
            role
        ):
            return False, unlocked
    return True, unlocked


async def prepare(
    signers: Mapping[Role, WalletRpc],
    address: str,
    marker: Exchanged | None,
    *,
    priority: int,
    max_fee_per_byte: int,
    before_sign: Callable[[], None] = lambda: None,
) -> tuple[multisig.PayoutTx, bool]:
    """Propose and co-sign a sweep of the whole unlocked balance to `address` by the two
    `signers` (proposer first), refreshed by the caller. Returns (payout, warm): warm when the
    exchange recorded in `marker` was used instead of a fresh one. The co-signer checks every
    proposal before it signs (`multisig.check_proposal`: PayoutRefused, nothing signed), and
    `before_sign()` is called right before it signs (a cluster: raises if the lease lapsed)."""
    proposer, cosigner = signers.values()
    if marker is not None:
        covered, unlocked = await _covered(marker, signers)
        if covered:
            try:
                proposal = await multisig.propose(proposer, address, priority)
                if proposal.amount + proposal.fee == unlocked:
                    await multisig.check_proposal(cosigner, proposal, address, max_fee_per_byte)
                    before_sign()
                    return await multisig.cosign(cosigner, proposal), True
                log.info("warm proposal does not sweep the whole balance; exchanging afresh")
            except multisig.MultisigError as exc:
                if not sync_needed(exc):
                    raise
                log.info("multisig info stale on a warm payout; exchanging afresh", error=str(exc))
        else:
            log.info("funds arrived since the multisig info exchange; exchanging afresh")
    rpcs = list(signers.values())
    await multisig.sync_multisig_info(rpcs)
    proposal = await multisig.propose(proposer, address, priority)
    await multisig.check_proposal(cosigner, proposal, address, max_fee_per_byte)
    before_sign()
    return await multisig.cosign(cosigner, proposal), False
