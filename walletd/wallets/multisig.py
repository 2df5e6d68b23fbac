"""The 2-of-3 multisig recipe of monero-facts.md, as trio functions over three `WalletRpc` clients.

Setting up (each step runs concurrently across the three processes: a process serves one call at a
time, so the win is across processes)::

    await create_wallets(rpcs, names, passwords)      # create_wallet + auto_refresh off
    address = await make_multisig(rpcs, passwords)    # prepare, make, exchange x2, check

Spending the whole unlocked balance::

    await refresh([proposer, cosigner])               # exports only cover outputs seen
    await sync_multisig_info([proposer, cosigner])    # export + import, before every spend
    proposal = await propose(proposer, destination)   # sweep_all -> multisig_txset
    await check_proposal(cosigner, proposal, ...)     # describe_transfer: is it the payout?
    payout = await cosign(cosigner, proposal)         # sign_multisig -> signed blob + txids
    ...record payout.signed_txset durably...
    await submit(cosigner, payout)                    # submit_multisig; safe to repeat

Submitting the same signed blob again returns the same txids (even after it is mined) and never
makes a second transaction, so a caller that records the blob before submitting can resubmit after
a crash. Every failure is a `MultisigError` naming the step and the wallets that refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import attrs
import structlog
import trio

from walletd.errors import MultisigError, MultisigSetupError, MultisigSpendError, RpcError
from walletd.ids import ROLES, Role
from walletd.jsontypes import JsonObject
from walletd.wallets import payout_check
from walletd.wallets.rpc import WalletRpc

__all__ = [
    "ROLES",
    "THRESHOLD",
    "TOTAL",
    "MultisigError",
    "PayoutTx",
    "Proposal",
    "Role",
    "check_proposal",
    "cosign",
    "create_wallets",
    "make_multisig",
    "propose",
    "propose_sign_submit",
    "refresh",
    "submit",
    "sync_multisig_info",
    "validate_address",
]

log = structlog.get_logger(__name__)

THRESHOLD = 2
TOTAL = 3
EXCHANGE_ROUNDS = 2  # 2-of-3 in 0.18: make_multisig, then two key exchange rounds

K = TypeVar("K", bound=str)


@attrs.frozen
class Proposal:
    """An unsigned-by-the-cosigner sweep: what `propose` made, for `cosign`."""

    multisig_txset: str = attrs.field(repr=False)
    amount: int  # what the destination receives, in atomic units
    fee: int


@attrs.frozen
class PayoutTx:
    """A fully signed payout. Record `signed_txset` before submitting: resubmitting it is safe."""

    txids: tuple[str, ...]
    signed_txset: str = attrs.field(repr=False)
    amount: int  # what the destination receives (the swept balance less `fee`)
    fee: int


async def _each(
    step: str,
    method: str,
    requests: Mapping[K, tuple[WalletRpc, JsonObject]],
    error: type[MultisigError],
) -> dict[K, JsonObject]:
    """Call `method` on every wallet concurrently; one error naming every wallet that refused.

    The other calls are left to finish rather than cancelled: a cancelled wallet-rpc call keeps
    running in the process anyway.
    """
    results: dict[K, JsonObject] = {}
    failures: dict[K, RpcError] = {}

    async def one(key: K, rpc: WalletRpc, params: JsonObject) -> None:
        try:
            results[key] = await rpc.call(method, params)
        except RpcError as exc:
            failures[key] = exc

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for key, (rpc, params) in requests.items():
            nursery.start_soon(one, key, rpc, params)
    if failures:
        first = next(iter(failures.values()))
        raise error(step, list(failures), first) from first
    elapsed_ms = round((trio.current_time() - started) * 1000)
    log.debug("multisig step", step=step, wallets=len(requests), elapsed_ms=elapsed_ms)
    return results


async def _one(
    step: str, label: str, rpc: WalletRpc, params: JsonObject, error: type[MultisigError]
) -> JsonObject:
    """`_each` for a single wallet."""
    return (await _each(step, step, {label: (rpc, params)}, error))[label]


def _others(values: Mapping[Role, str], role: Role) -> list[str]:
    """The other two parties' values, in role order."""
    return [values[other] for other in ROLES if other != role]


async def create_wallets(
    rpcs: Mapping[Role, WalletRpc],
    names: Mapping[Role, str],
    passwords: Mapping[Role, str],
) -> None:
    """Create one wallet in each process and turn its auto-refresh off.

    Auto-refresh runs on the process's only RPC thread every 20 s and would delay our calls;
    walletd refreshes when it needs to.
    """
    params = {
        role: {"filename": names[role], "password": passwords[role], "language": "English"}
        for role in ROLES
    }
    await _each(
        "create_wallet",
        "create_wallet",
        {role: (rpcs[role], params[role]) for role in ROLES},
        MultisigSetupError,
    )
    await _each(
        "auto_refresh",
        "auto_refresh",
        {role: (rpcs[role], {"enable": False}) for role in ROLES},
        MultisigSetupError,
    )


async def make_multisig(rpcs: Mapping[Role, WalletRpc], passwords: Mapping[Role, str]) -> str:
    """Turn three fresh wallets into one 2-of-3 multisig and return its address.

    `prepare_multisig` is the only RPC that can set the persisted experimental-multisig flag,
    without which the key exchange fails with -48; so it is always set here.
    """
    infos = await _prepare(rpcs)
    infos = await _make(rpcs, passwords, infos)
    answers: dict[Role, JsonObject] = {}
    for round_no in range(1, EXCHANGE_ROUNDS + 1):
        answers = await _exchange(rpcs, passwords, infos, round_no)
        infos = {role: str(answers[role]["multisig_info"]) for role in ROLES}
    address = _common_address(answers)
    await _check_ready(rpcs)
    return address


async def _prepare(rpcs: Mapping[Role, WalletRpc]) -> dict[Role, str]:
    """Step 1: each wallet's first multisig info (and the experimental flag, persisted)."""
    answers = await _each(
        "prepare_multisig",
        "prepare_multisig",
        {role: (rpcs[role], {"enable_multisig_experimental": True}) for role in ROLES},
        MultisigSetupError,
    )
    return {role: str(answers[role]["multisig_info"]) for role in ROLES}


async def _make(
    rpcs: Mapping[Role, WalletRpc], passwords: Mapping[Role, str], infos: Mapping[Role, str]
) -> dict[Role, str]:
    """Step 2: `make_multisig` with the other two infos; returns the infos for round 1."""
    requests = {
        role: (
            rpcs[role],
            {
                "multisig_info": _others(infos, role),
                "threshold": THRESHOLD,
                "password": passwords[role],
            },
        )
        for role in ROLES
    }
    answers = await _each("make_multisig", "make_multisig", requests, MultisigSetupError)
    return {role: str(answers[role]["multisig_info"]) for role in ROLES}


async def _exchange(
    rpcs: Mapping[Role, WalletRpc],
    passwords: Mapping[Role, str],
    infos: Mapping[Role, str],
    round_no: int,
) -> dict[Role, JsonObject]:
    """Step 3: one round of `exchange_multisig_keys`; the last round returns the address."""
    requests = {
        role: (rpcs[role], {"multisig_info": _others(infos, role), "password": passwords[role]})
        for role in ROLES
    }
    return await _each(
        f"exchange_multisig_keys round {round_no}",
        "exchange_multisig_keys",
        requests,
        MultisigSetupError,
    )


def _common_address(answers: Mapping[Role, JsonObject]) -> str:
    """The final address, which all three wallets must agree on."""
    addresses = {role: str(answers[role].get("address", "")) for role in ROLES}
    if len(set(addresses.values())) != 1 or not addresses["buyer"]:
        raise MultisigSetupError(
            "exchange_multisig_keys", list(ROLES), "the wallets disagree on the final address"
        )
    return addresses["buyer"]


async def _check_ready(rpcs: Mapping[Role, WalletRpc]) -> None:
    """Step 4: every wallet says it is a ready 2-of-3 multisig."""
    answers = await _each(
        "is_multisig",
        "is_multisig",
        {role: (rpcs[role], {}) for role in ROLES},
        MultisigSetupError,
    )
    expected = {"multisig": True, "ready": True, "threshold": THRESHOLD, "total": TOTAL}
    wrong = [
        role for role in ROLES if {key: answers[role].get(key) for key in expected} != expected
    ]
    if wrong:
        raise MultisigSetupError("is_multisig", wrong, "not a ready 2-of-3 multisig")


def _labelled(rpcs: Sequence[WalletRpc]) -> dict[str, WalletRpc]:
    """Unique labels for error messages: position and URL (never the credentials)."""
    return {f"#{index} {rpc.base_url}": rpc for index, rpc in enumerate(rpcs)}


async def refresh(rpcs: Sequence[WalletRpc]) -> None:
    """Refresh the wallets concurrently (auto-refresh is off: nothing else makes them look)."""
    await _each(
        "refresh",
        "refresh",
        {label: (rpc, {}) for label, rpc in _labelled(rpcs).items()},
        MultisigSpendError,
    )


async def sync_multisig_info(rpcs: Sequence[WalletRpc]) -> None:
    """Export multisig info on each wallet and import the others' on each.

    Needed before every spend (without it `sweep_all` finds no unlocked balance and `transfer`
    fails with -16) and again after one. Refresh the wallets first: an export only covers the
    outputs the wallet has seen.
    """
    if len(rpcs) < THRESHOLD:
        raise ValueError(f"sync_multisig_info needs at least {THRESHOLD} wallets")
    labels = _labelled(rpcs)
    exported = await _each(
        "export_multisig_info",
        "export_multisig_info",
        {label: (rpc, {}) for label, rpc in labels.items()},
        MultisigSpendError,
    )
    infos = {label: str(answer["info"]) for label, answer in exported.items()}
    requests = {
        label: (rpc, {"info": [info for other, info in infos.items() if other != label]})
        for label, rpc in labels.items()
    }
    await _each("import_multisig_info", "import_multisig_info", requests, MultisigSpendError)


async def propose(proposer: WalletRpc, address: str, priority: int = 0) -> Proposal:
    """Sweep the whole unlocked balance to `address`; the result still needs one more signature.

    `sweep_all` works for multisig wallets in 0.18 and returns `multisig_txset`; the destination
    receives the balance less the fee (a `transfer` would need the fee guessed in advance).
    `priority` is wallet-rpc's fee priority (0: the wallet's default, 1-4: low to highest).
    """
    params: JsonObject = {"address": address, "priority": priority}
    answer = await _one("sweep_all", "proposer", proposer, params, MultisigSpendError)
    txset = str(answer.get("multisig_txset", ""))
    if not txset:
        raise MultisigSpendError("sweep_all", ["proposer"], "no multisig_txset in the answer")
    return Proposal(
        multisig_txset=txset,
        amount=sum(int(a) for a in answer.get("amount_list", [])),
        fee=sum(int(f) for f in answer.get("fee_list", [])),
    )


RING_SIZE = 16  # fixed by consensus since v15
INTEGRATED_LENGTH = 106  # characters of an integrated address (standard and subaddresses: 95)
SWEEP_OUTPUTS = 2  # the destination and a (zero or dummy) change output


async def check_proposal(
    cosigner: WalletRpc, proposal: Proposal, address: str, max_fee_per_byte: int
) -> None:
    """Decode `proposal` on the co-signer and refuse it unless it is the payout (`payout_check`).

    Everything compared comes from the co-signer's own wallet, not from the proposer: the
    description of the transaction, the unlocked balance, the number of unlocked outputs a
    sweep spends (for the weight estimate). `max_fee_per_byte` already holds the tolerance.
    Raises `PayoutRefused`, or `MultisigSpendError` if a wallet call fails."""

    async def call(method: str, params: JsonObject) -> JsonObject:
        return await _one(method, "cosigner", cosigner, params, MultisigSpendError)

    described = await call("describe_transfer", {"multisig_txset": proposal.multisig_txset})
    balance = await call("get_balance", {"account_index": 0})
    available = await call("incoming_transfers", {"transfer_type": "available"})
    n_inputs = sum(1 for t in available.get("transfers", []) if t.get("unlocked"))
    size = await call(
        "estimate_tx_size_and_weight",
        {
            "n_inputs": max(1, n_inputs),
            "n_outputs": SWEEP_OUTPUTS,
            "ring_size": RING_SIZE,
            "rct": True,
        },
    )
    payment_id = ""
    if len(address) == INTEGRATED_LENGTH:  # described as itself, its payment id in clear
        split = await call("split_integrated_address", {"integrated_address": address})
        payment_id = str(split.get("payment_id", ""))
    weight = int(size.get("weight", 0))
    expected = payout_check.Expected(
        address=address,
        unlocked_balance=int(balance.get("unlocked_balance", 0)),
        max_fee=max_fee_per_byte * weight,
        payment_id=payment_id,
    )
    fee = payout_check.check(described, expected)
    log.info(
        "payout proposal checked", inputs=n_inputs, weight=weight, fee=fee, max_fee=expected.max_fee
    )


async def cosign(cosigner: WalletRpc, proposal: Proposal) -> PayoutTx:
    """Add the second signature; the answer is the fully signed blob and its txids."""
    answer = await _one(
        "sign_multisig",
        "cosigner",
        cosigner,
        {"tx_data_hex": proposal.multisig_txset},
        MultisigSpendError,
    )
    txids = tuple(str(txid) for txid in answer.get("tx_hash_list", []))
    signed = str(answer.get("tx_data_hex", ""))
    if not txids or not signed:
        raise MultisigSpendError("sign_multisig", ["cosigner"], "answer has no signed transaction")
    return PayoutTx(txids=txids, signed_txset=signed, amount=proposal.amount, fee=proposal.fee)


async def submit(rpc: WalletRpc, payout: PayoutTx) -> tuple[str, ...]:
    """Relay the signed blob (any of the three wallets can). Repeating it is harmless."""
    answer = await _one(
        "submit_multisig",
        "submitter",
        rpc,
        {"tx_data_hex": payout.signed_txset},
        MultisigSpendError,
    )
    txids = tuple(str(txid) for txid in answer.get("tx_hash_list", []))
    if txids != payout.txids:
        raise MultisigSpendError(
            "submit_multisig", ["submitter"], f"relayed {txids}, expected {payout.txids}"
        )
    return txids


async def propose_sign_submit(proposer: WalletRpc, cosigner: WalletRpc, address: str) -> PayoutTx:
    """`propose`, `cosign` and `submit` in one go (for callers that need not record the blob)."""
    payout = await cosign(cosigner, await propose(proposer, address))
    await submit(cosigner, payout)
    return payout


async def validate_address(rpc: WalletRpc, address: str) -> bool:
    """True if `address` is a standard, integrated or subaddress of wallet-rpc's own network.

    Never resolves OpenAlias names (no DNS). A wallet-rpc started without --testnet/--stagenet is
    on mainnet, and so are the addresses used on a regtest chain (they start with 4 or 8).
    """
    answer = await rpc.call(
        "validate_address", {"address": address, "any_net_type": False, "allow_openalias": False}
    )
    return bool(answer.get("valid")) and not answer.get("openalias_address")
