"""The fake chain and wallet directory that every fake wallet-rpc process shares.

`FakeWalletWorld` is the one piece of state the fake processes have in common, as the real ones
share a wallet directory and a daemon: the wallet files (keys fields and cache), the keys-file
locks, the chain with its pool, and a log of calls. It also computes what one wallet sees of the
chain (outputs, balances, transfers), which is where the faithful rules of syncing, unlocking and
multisig key images live. Kept apart from the process (`fake_wallet_rpc`) so the chain's rules can
be read without the HTTP and fault-injection machinery around them.

Addresses, multisig infos and txsets are opaque blobs that only this world can read back.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs

__all__ = [
    "ACCOUNT_0",
    "FEE",
    "FEE_PER_BYTE",
    "UNLOCK_CONFIRMATIONS",
    "ExportInfo",
    "FakeTx",
    "FakeWallet",
    "FakeWalletWorld",
    "JsonObject",
    "KexMsg",
    "OutputId",
    "Owned",
    "Proposal",
    "TxSet",
    "WalletCache",
    "digest",
    "fake_address",
    "is_fake_address",
]

JsonObject = dict[str, Any]
OutputId = tuple[str, int]  # (txid, output index)

FEE: Final = 30_000_000  # atomic units per transaction, whatever its size
FEE_PER_BYTE: Final = 20_000  # what the fake daemon quotes: FEE is this for a 1-input sweep
UNLOCK_CONFIRMATIONS: Final = 10

_BASE58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ACCOUNT_0: Final = {"major": 0, "minor": 0}


def digest(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def _b58(seed: str, length: int) -> str:
    raw = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(length // 32 + 1))
    return "".join(_BASE58[byte % 58] for byte in raw[:length])


def fake_address(seed: str) -> str:
    """A deterministic mainnet-looking standard address (95 base58 characters, "4...")."""
    return "4" + _b58(f"address:{seed}", 94)


def is_fake_address(address: object) -> bool:
    """The fake's whole address check: 95 base58 characters starting with 4 or 8."""
    return (
        isinstance(address, str)
        and len(address) == 95
        and address[0] in "48"
        and all(c in _BASE58 for c in address)
    )


@attrs.define(eq=False)
class FakeTx:
    """A transaction on the fake chain, or in its pool while `height` is None."""

    txid: str
    sender: str | None  # the address owning `inputs`; None: money from outside the world
    inputs: tuple[OutputId, ...]
    outputs: tuple[tuple[str, int], ...]  # (address, amount); an output to `sender` is change
    fee: int = FEE
    height: int | None = None


@attrs.define
class WalletCache:
    """What the wallet's cache file holds: lost on kill -9 unless stored."""

    height: int  # blocks synced: the wallet sees transactions below this height
    known_spends: set[str] = attrs.Factory(set)  # relayed here, or found by an import's rescan
    key_images: set[OutputId] = attrs.Factory(set)  # multisig outputs an import covered
    import_epoch: int | None = None  # spends of the group when the imported info was exported

    def copy(self) -> WalletCache:
        return WalletCache(
            self.height, set(self.known_spends), set(self.key_images), self.import_epoch
        )


@attrs.define(eq=False)
class FakeWallet:
    """A wallet in the fake wallet directory: keys-file fields are saved at once, `cache` is not."""

    name: str
    password: str
    address: str
    saved: WalletCache  # the cache file on disk
    cache: WalletCache  # the live state in the process that has the wallet open
    multisig_enabled: bool = False
    kex_round: int = 0  # 0: plain; make_multisig sets 1, each key exchange adds 1
    threshold: int = 0
    group: tuple[str, ...] = ()  # the names of all members, sorted
    cache_damaged: bool = False

    @property
    def is_multisig(self) -> bool:
        return self.kex_round > 0

    @property
    def ready(self) -> bool:
        # 0.18 kex: make_multisig, then (total - threshold + 1) exchange rounds.
        return self.is_multisig and self.kex_round > len(self.group) - self.threshold + 1


@attrs.frozen
class KexMsg:
    wallet: str
    round: int  # 0: from prepare_multisig; n >= 1: after make_multisig and n - 1 exchanges


@attrs.frozen
class ExportInfo:
    wallet: str
    address: str
    epoch: int
    n_outputs: int


@attrs.frozen
class Proposal:
    txid: str
    address: str
    inputs: tuple[OutputId, ...]
    outputs: tuple[tuple[str, int], ...]
    epoch: int
    unlock_time: int = 0
    payment_id: str = ""  # as describe_transfer shows it: "" for none


@attrs.frozen
class TxSet:
    proposal: Proposal
    signers: frozenset[str]


@attrs.frozen
class Owned:
    """An output as one wallet sees it."""

    oid: OutputId
    amount: int
    tx: FakeTx
    spent: bool
    confirmations: int
    key_image_known: bool

    @property
    def unlocked(self) -> bool:
        return self.confirmations >= UNLOCK_CONFIRMATIONS


_Blob = KexMsg | ExportInfo | TxSet


@attrs.define(eq=False)
class FakeWalletWorld:
    """State shared by every fake process: wallet directory, keys-file locks, chain, call log."""

    height: int = 100
    wallets: dict[str, FakeWallet] = attrs.Factory(dict)
    locks: dict[str, int] = attrs.Factory(dict)  # wallet name -> pid of the process holding it
    txs: dict[str, FakeTx] = attrs.Factory(dict)
    calls: list[tuple[int, str]] = attrs.Factory(list)  # (pid, method), in arrival order
    stores: Counter[str] = attrs.Factory(Counter)  # wallet name -> times saved
    # Fault injection: a multisig sweep_all proposes `sweep_outputs(wallet address, destination,
    # swept total)` as its outputs (the fee is what they leave of the total) instead of the honest
    # (destination, total - FEE). None: honest.
    sweep_priorities: list[int] = attrs.Factory(list)  # the priority of every sweep_all call
    sweep_outputs: Callable[[str, str, int], tuple[tuple[str, int], ...]] | None = None
    # Fault injection, the same way: the unlock time and payment id a multisig sweep_all puts in
    # its proposal (honest: 0 and none).
    sweep_unlock_time: int = 0
    sweep_payment_id: str = ""
    # Directories where a store also writes the wallet's two files (keys, cache), as wallet-rpc
    # does in its wallet dir: for the cluster, which keeps those files in its database.
    file_dirs: list[Path] = attrs.Factory(list)
    _blobs: dict[str, _Blob] = attrs.field(factory=dict, init=False)
    _serial: itertools.count[int] = attrs.field(factory=itertools.count, init=False)

    # ---- helpers for tests ----

    def write_files(self, name: str) -> None:
        """A store of wallet `name`: its files in every `file_dirs` directory (the cache's
        content is its saved state, so a change of state is a change of file)."""
        wallet = self.wallets[name]
        for directory in self.file_dirs:
            (directory / f"{name}.keys").write_bytes(f"keys of {name}".encode())
            (directory / name).write_bytes(repr(wallet.saved).encode())

    def add_wallet(self, name: str, password: str, address: str | None = None) -> FakeWallet:
        """Put a wallet in the directory (as if created earlier), synced to the current height."""
        if name in self.wallets:
            raise ValueError(f"wallet {name!r} exists")
        cache = WalletCache(self.height)
        wallet = FakeWallet(name, password, address or fake_address(name), cache, cache.copy())
        self.wallets[name] = wallet
        return wallet

    def credit(self, name_or_address: str, amount: int, *, unlocked: bool) -> str:
        """Pay `amount` from outside and mine it (with 10 blocks if `unlocked`); returns the txid.

        Paying a multisig address credits every member. Mining also confirms the pool.
        """
        wallet = self.wallets.get(name_or_address)
        address = wallet.address if wallet is not None else name_or_address
        txid = digest("credit", next(self._serial), address, amount)
        self.txs[txid] = FakeTx(txid, None, (), ((address, amount),))
        self.mine(UNLOCK_CONFIRMATIONS if unlocked else 1)
        return txid

    def mine(self, blocks: int = 1) -> None:
        """Add `blocks` blocks; the first one takes every pooled transaction."""
        if blocks < 1:
            raise ValueError("mine at least one block")
        for tx in self.txs.values():
            if tx.height is None:
                tx.height = self.height
        self.height += blocks

    def reorg_away(self, txid: str) -> None:
        """A reorg replaced the block holding `txid` and the transaction is gone from the chain
        (a double spend won): no wallet sees it any more. Mine afterwards, as the longer chain
        that won brings blocks of its own."""
        del self.txs[txid]

    def truncate_cache(self, name: str) -> None:
        """Damage the cache file: opening the wallet fails with -1 until `repair` (or a store)."""
        self.wallets[name].cache_damaged = True

    def repair(self, name: str) -> None:
        """Delete the cache file: the wallet opens again and rebuilds from the chain."""
        wallet = self.wallets[name]
        wallet.cache_damaged = False
        wallet.saved = WalletCache(0)

    def balance(self, name: str) -> tuple[int, int]:
        """(balance, unlocked_balance) as the wallet would answer get_balance now."""
        total, unlocked, _ = self._balances(self.wallets[name])
        return total, unlocked

    def transfers(self, name: str) -> dict[str, JsonObject]:
        """The wallet's transfer entries by txid, as get_transfer_by_txid would show them now."""
        return {entry["txid"]: entry for entry in self._transfers(self.wallets[name])}

    def call_count(self, method: str, pid: int | None = None) -> int:
        return sum(1 for p, m in self.calls if m == method and (pid is None or p == pid))

    def epoch(self, address: str) -> int:
        """How many spends left `address`: multisig info exported before the last one is stale."""
        return sum(1 for tx in self.txs.values() if tx.sender == address)

    # ---- what one wallet sees ----

    def _confirmations(self, wallet: FakeWallet, tx: FakeTx) -> int:
        height = tx.height
        return max(0, wallet.cache.height - height) if height is not None else 0

    def _known_spends(self, wallet: FakeWallet) -> set[str]:
        # A wallet spots its spends in blocks it synced, if it knows the key images (a multisig
        # wallet only for outputs an import covered), plus the ones it relayed or rescanned.
        known = set(wallet.cache.known_spends)
        for tx in self.txs.values():
            if (
                tx.sender == wallet.address
                and self._confirmations(wallet, tx) > 0
                and (not wallet.is_multisig or any(i in wallet.cache.key_images for i in tx.inputs))
            ):
                known.add(tx.txid)
        return known

    def _owned(self, wallet: FakeWallet) -> list[Owned]:
        known = self._known_spends(wallet)
        spent = {oid for txid in known for oid in self.txs[txid].inputs}
        owned = []
        for tx in sorted(
            self.txs.values(), key=lambda t: math.inf if t.height is None else t.height
        ):
            confirmations = self._confirmations(wallet, tx)
            if confirmations == 0 and tx.txid not in known:
                continue  # not synced yet, or someone else's transaction in the pool
            for index, (address, amount) in enumerate(tx.outputs):
                if address == wallet.address:
                    oid = (tx.txid, index)
                    ki_known = not wallet.is_multisig or oid in wallet.cache.key_images
                    owned.append(Owned(oid, amount, tx, oid in spent, confirmations, ki_known))
        return owned

    def _balances(self, wallet: FakeWallet) -> tuple[int, int, int]:
        unspent = [o for o in self._owned(wallet) if not o.spent]
        locked = [UNLOCK_CONFIRMATIONS - o.confirmations for o in unspent if not o.unlocked]
        unlocked = sum(o.amount for o in unspent if o.unlocked)
        return sum(o.amount for o in unspent), unlocked, max(locked, default=0)

    def _stale(self, wallet: FakeWallet) -> bool:
        return wallet.cache.import_epoch != self.epoch(wallet.address)

    def _import_needed(self, wallet: FakeWallet) -> bool:
        mined = [o for o in self._owned(wallet) if o.confirmations > 0 and not o.spent]
        return (
            wallet.ready
            and bool(mined)
            and (self._stale(wallet) or not all(o.key_image_known for o in mined))
        )

    def _sync(self, wallet: FakeWallet) -> tuple[int, bool]:
        old = wallet.cache.height
        wallet.cache.height = max(old, self.height)
        received = any(
            tx.height is not None
            and old <= tx.height < wallet.cache.height
            and any(address == wallet.address for address, _ in tx.outputs)
            for tx in self.txs.values()
        )
        return wallet.cache.height - old, received

    def _transfers(self, wallet: FakeWallet) -> list[JsonObject]:
        known = self._known_spends(wallet)
        entries = []
        for tx in self.txs.values():
            confirmations = self._confirmations(wallet, tx)
            if tx.txid in known:
                entries.append(self._entry(wallet, tx, "out" if confirmations else "pending"))
            elif any(a == wallet.address for a, _ in tx.outputs):  # change of an unknown spend too
                if confirmations:
                    entries.append(self._entry(wallet, tx, "in"))
                elif tx.height is None:
                    entries.append(self._entry(wallet, tx, "pool"))
        return entries

    def _entry(self, wallet: FakeWallet, tx: FakeTx, kind: str) -> JsonObject:
        confirmations = self._confirmations(wallet, tx) if kind in ("in", "out") else 0
        height = tx.height if tx.height is not None and confirmations else 0
        mine = [amount for address, amount in tx.outputs if address == wallet.address]
        others = [(address, amount) for address, amount in tx.outputs if address != wallet.address]
        outgoing = kind in ("out", "pending")
        entry: JsonObject = {
            "txid": tx.txid,
            "type": kind,
            "amount": sum(a for _, a in others) if outgoing else sum(mine),
            "fee": tx.fee,
            "height": height,
            "confirmations": confirmations,
            "locked": confirmations < UNLOCK_CONFIRMATIONS,
            "unlock_time": 0,
            "timestamp": 1_600_000_000 + 120 * height,
            "address": wallet.address,
            "payment_id": "0000000000000000",
            "subaddr_index": ACCOUNT_0,
            "subaddr_indices": [ACCOUNT_0],
            "double_spend_seen": False,
            "note": "",
            "suggested_confirmations_threshold": 1,
        }
        if outgoing:
            entry["destinations"] = [{"address": a, "amount": n} for a, n in others]
            entry["change_amount"] = sum(mine)
        else:
            entry["amounts"] = mine
        return entry

    # ---- opaque blobs: only this world can read them ----

    def _put(self, blob: str, record: _Blob) -> str:
        self._blobs[blob] = record
        return blob

    def _blob(self, blob: str) -> _Blob | None:
        return self._blobs.get(blob)

    def _kex_msg(self, wallet: str, round_no: int) -> str:
        blob = f"MultisigxV2R{round_no + 1}" + _b58(f"kex:{wallet}:{round_no}", 120)
        return self._put(blob, KexMsg(wallet, round_no))

    def _export(self, wallet: FakeWallet) -> str:
        n_outputs = sum(1 for o in self._owned(wallet) if o.confirmations > 0)
        record = ExportInfo(wallet.name, wallet.address, self.epoch(wallet.address), n_outputs)
        return self._put(digest("export", wallet.name, next(self._serial)) * 4, record)

    def _txset(self, proposal: Proposal, signers: frozenset[str]) -> str:
        # Deterministic: the same signatures give the same blob, so resubmitting is recognised.
        blob = digest("txset", proposal.txid, *sorted(signers)) * 8
        return self._put(blob, TxSet(proposal, signers))

    def _new_txid(self, kind: str, address: str) -> str:
        return digest(kind, next(self._serial), address)
