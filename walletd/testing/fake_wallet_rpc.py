"""A fake monero-wallet-rpc for fast unit tests, fault injection and an instant benchmark server.

`FakeWalletWorld` is the state shared by all fake processes: the wallet directory, the keys-file
locks and a fake chain. Each `FakeWalletRpc` is one wallet-rpc process. `FakeTransport` plugs one
into `rpc.WalletRpc` in-process (no sockets, so trio's autojump clock skips the delays),
and `serve_tcp` serves one over real loopback HTTP/1.1.

Faithful to monero-wallet-rpc 0.18 (monero-facts.md and the wallet_rpc_server source):

- One wallet per process. `open_wallet` stores the current wallet first and swaps only once the
  new one has loaded, so a failed open leaves the old one open; reopening the open wallet works.
- One call at a time per process, in arrival order; `open_delay`/`create_delay` are spent holding
  it. A call whose client gave up (timeout, cancel) still runs to its end, as on the real thread.
- The keys-file lock: a wallet open (or being opened) in one process fails to open in another with
  -1 "Failed to open wallet"; the lock goes when the holder closes it, exits or is killed.
- Saving happens only on store, close_wallet, opening another wallet, stop_wallet and
  `terminate()`: `kill()` loses the cache state since the last store (synced height, spends the
  wallet relayed, imported multisig info). A truncated cache fails the open until `repair`.
- The error codes and messages of the facts table, all with HTTP 200; params sent as an array are
  ignored, a param of the wrong type gives -32602, any wallet call with no wallet gives -13.
- HTTP digest auth when `require_auth` (401 with a challenge; checked if user/password are given).
- A wallet sees blocks only up to the height it synced (`refresh`, or auto-refresh: on at
  start, first 1 s after an open, then every 20 s or `period`); outputs unlock after 10
  confirmations, change included; the balance counts pending change; a transfer selects unlocked
  outputs and returns locked change.
- Multisig: the experimental flag (-48), make/exchange checked against the group's messages and
  rounds, the keys file rewritten with the password given to make/exchange, outputs spendable by
  a multisig wallet only once an import covered them (transfer -16, sweep_all -4), exports cover
  only outputs the exporter had seen, a stale import gives -16 at transfer and -35 at signing,
  signing twice -35, one signature -33, resubmitting returns the same txid and spends once, a
  wallet that skipped the last export/import shows a too-high balance.

Not faithful:

- Nothing is cryptographic: addresses, infos, txsets and txids are hashes that only this world
  can parse. validate_address checks the shape only (95 base58 characters starting with 4 or 8,
  always mainnet) and never resolves OpenAlias.
- Account 0 / subaddress 0 only, no payment ids, a fixed fee (`FEE`), no size limits, no
  mempool rejection except double spends. Auto-refresh runs lazily, at the start of the first
  call after it is due, and costs nothing.
- Timings are only `open_delay`, `create_delay`, `call_delay` and the 0.5 s exit after
  stop_wallet; a process is ready as soon as it is constructed; a 401 does not wait for the
  running call. Methods not listed in `FakeWalletRpc` answer -32601.
- Mining puts the whole pool in one block; no reorgs. Messages are 0.18.0.0's: from 0.18.4 a
  failed open says "Failed to open wallet : <reason>".
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import string
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Final, NoReturn
from urllib.request import parse_http_list, parse_keqv_list

import attrs
import h11
import httpx
import trio

__all__ = [
    "FEE",
    "UNLOCK_CONFIRMATIONS",
    "FakeResponse",
    "FakeTransport",
    "FakeTx",
    "FakeWallet",
    "FakeWalletRpc",
    "FakeWalletWorld",
    "ProcessGone",
    "RpcFault",
    "WalletCache",
    "fake_address",
    "is_fake_address",
    "serve_tcp",
]

JsonObject = dict[str, Any]
OutputId = tuple[str, int]  # (txid, output index)

FEE: Final = 30_000_000  # atomic units per transaction, whatever its size
UNLOCK_CONFIRMATIONS: Final = 10
STOP_EXIT_DELAY: Final = 0.5  # stop_wallet answers, then the process exits ~0.5 s later
AUTO_REFRESH_PERIOD: Final = 20.0
FIRST_AUTO_REFRESH: Final = 1.0  # after an open, as measured
RPC_VERSION: Final = (1 << 16) | 25  # what 0.18.0.0 reports (1.25)

NO_WALLET: Final = "No wallet file"
OPEN_FAILED: Final = "Failed to open wallet"
STALE: Final = (
    "Failed to sign multisig tx: This signature was made with stale data: export fresh multisig "
    "data, which other participants must then use"
)
MULTISIG_DISABLED: Final = (
    "This wallet is multisig, and multisig is disabled. Multisig is an experimental feature and "
    "may have bugs. You can enable it by running this once in monero-wallet-cli: "
    "set enable-multisig-experimental 1"
)
_BASE58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_LANGUAGES: Final = frozenset(
    {"English", "Deutsch", "Español", "Français", "Italiano", "Nederlands", "Português"}
    | {"русский язык", "日本語", "简体中文 (中国)", "Esperanto", "Lojban"}
)
_JSON_HEADERS: Final = (("content-type", "application/json"),)
_ACCOUNT_0: Final = {"major": 0, "minor": 0}


class RpcFault(Exception):
    """A JSON-RPC error object, as wallet-rpc answers it (with HTTP 200)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProcessGone(Exception):
    """The fake process is dead; transports turn this into a connection error."""

    def __init__(self, *, mid_call: bool) -> None:
        super().__init__("connection dropped" if mid_call else "connection refused")
        self.mid_call = mid_call


def _digest(*parts: object) -> str:
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


def _is_hex(text: str) -> bool:
    return len(text) % 2 == 0 and all(c in string.hexdigits for c in text)


# ---- params: epee leaves a missing field at its default and refuses a wrong type --------------


def _bad_params() -> RpcFault:
    return RpcFault(-32602, "Invalid params")


def _str(params: JsonObject, key: str, default: str = "") -> str:
    value = params.get(key, default)
    if not isinstance(value, str):
        raise _bad_params()
    return value


def _int(params: JsonObject, key: str, default: int = 0) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad_params()
    return value


def _bool(params: JsonObject, key: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise _bad_params()
    return value


def _str_list(params: JsonObject, key: str) -> list[str]:
    value = params.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad_params()
    return list(value)


def _destinations(params: JsonObject) -> list[tuple[str, int]]:
    raw = params.get("destinations", [])
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise _bad_params()
    dests = [(_str(d, "address"), _int(d, "amount")) for d in raw]
    if not dests:
        raise RpcFault(-20, "No destinations for this transfer")
    for address, amount in dests:
        if not is_fake_address(address):
            raise RpcFault(-2, f"WALLET_RPC_ERROR_CODE_WRONG_ADDRESS: {address}")
        if amount == 0:
            raise RpcFault(-46, "destination amount is zero")
    return dests


# ---- the world ---------------------------------------------------------------------------------


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
class _KexMsg:
    wallet: str
    round: int  # 0: from prepare_multisig; n >= 1: after make_multisig and n - 1 exchanges


@attrs.frozen
class _ExportInfo:
    wallet: str
    address: str
    epoch: int
    n_outputs: int


@attrs.frozen
class _Proposal:
    txid: str
    address: str
    inputs: tuple[OutputId, ...]
    outputs: tuple[tuple[str, int], ...]
    epoch: int


@attrs.frozen
class _TxSet:
    proposal: _Proposal
    signers: frozenset[str]


@attrs.frozen
class _Owned:
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


_Blob = _KexMsg | _ExportInfo | _TxSet


@attrs.define(eq=False)
class FakeWalletWorld:
    """State shared by every fake process: wallet directory, keys-file locks, chain, call log."""

    height: int = 100
    wallets: dict[str, FakeWallet] = attrs.Factory(dict)
    locks: dict[str, int] = attrs.Factory(dict)  # wallet name -> pid of the process holding it
    txs: dict[str, FakeTx] = attrs.Factory(dict)
    calls: list[tuple[int, str]] = attrs.Factory(list)  # (pid, method), in arrival order
    stores: Counter[str] = attrs.Factory(Counter)  # wallet name -> times saved
    _blobs: dict[str, _Blob] = attrs.field(factory=dict, init=False)
    _serial: itertools.count[int] = attrs.field(factory=itertools.count, init=False)

    # ---- helpers for tests ----

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
        txid = _digest("credit", next(self._serial), address, amount)
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

    def _owned(self, wallet: FakeWallet) -> list[_Owned]:
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
                    owned.append(_Owned(oid, amount, tx, oid in spent, confirmations, ki_known))
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
            "subaddr_index": _ACCOUNT_0,
            "subaddr_indices": [_ACCOUNT_0],
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
        return self._put(blob, _KexMsg(wallet, round_no))

    def _export(self, wallet: FakeWallet) -> str:
        n_outputs = sum(1 for o in self._owned(wallet) if o.confirmations > 0)
        record = _ExportInfo(wallet.name, wallet.address, self.epoch(wallet.address), n_outputs)
        return self._put(_digest("export", wallet.name, next(self._serial)) * 4, record)

    def _txset(self, proposal: _Proposal, signers: frozenset[str]) -> str:
        # Deterministic: the same signatures give the same blob, so resubmitting is recognised.
        blob = _digest("txset", proposal.txid, *sorted(signers)) * 8
        return self._put(blob, _TxSet(proposal, signers))

    def _new_txid(self, kind: str, address: str) -> str:
        return _digest(kind, next(self._serial), address)


# ---- one process -------------------------------------------------------------------------------


@attrs.frozen
class FakeResponse:
    """An HTTP answer, for `FakeTransport` and `serve_tcp` to send."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class FakeWalletRpc:
    """One fake monero-wallet-rpc process (see the module docstring for what is faithful).

    Methods: get_version, open_wallet, create_wallet, close_wallet, store, stop_wallet,
    auto_refresh, refresh, get_height, get_address, get_balance, get_transfers,
    get_transfer_by_txid, incoming_transfers, validate_address, transfer, sweep_all,
    prepare_multisig, make_multisig, exchange_multisig_keys, is_multisig, export_multisig_info,
    import_multisig_info, sign_multisig, submit_multisig.
    """

    _pids = itertools.count(1000)

    def __init__(
        self,
        world: FakeWalletWorld,
        *,
        user: str | None = None,
        password: str | None = None,
        require_auth: bool = False,
        open_delay: float = 1.5,
        create_delay: float = 1.7,
        call_delay: float = 0.0,
    ) -> None:
        self.world = world
        self.pid = next(self._pids)
        self.url = f"http://fake-wallet-rpc-{self.pid}"
        self.user = user
        self.password = password
        self.require_auth = require_auth
        self.open_delay = open_delay
        self.create_delay = create_delay
        self.call_delay = call_delay
        self.wallet: FakeWallet | None = None
        self.auto_refresh = True
        self.auto_refresh_period = AUTO_REFRESH_PERIOD
        self._auto_refresh_at = math.inf
        self.dead = False
        self.hung = False
        self.daemon_linked = True  # False after lose_daemon(): refresh answers -38
        self._exiting = False
        self._died = trio.Event()
        self._lock = trio.Lock()  # the single RPC thread; trio.Lock is FIFO
        self._faults: dict[str, list[RpcFault]] = {}
        self._scopes: set[trio.CancelScope] = set()
        self._slow: dict[str, Callable[[JsonObject], Awaitable[JsonObject]]] = {
            "open_wallet": self._open_wallet,
            "create_wallet": self._create_wallet,
        }
        self._fast: dict[str, Callable[[JsonObject], JsonObject]] = {
            name.removeprefix("_rpc_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("_rpc_")
        }

    def __repr__(self) -> str:
        name = self.wallet.name if self.wallet else None
        return f"FakeWalletRpc(pid={self.pid}, wallet={name!r}, dead={self.dead})"

    # ---- fault injection ----

    def kill(self) -> None:
        """kill -9: unsaved state is lost, the keys-file locks go, every connection drops."""
        if self.dead:
            return
        self.dead = True
        for scope in list(self._scopes):
            scope.cancel()
        if self.wallet is not None:
            self.wallet.cache = self.wallet.saved.copy()
            self.wallet = None
        for name in [n for n, pid in self.world.locks.items() if pid == self.pid]:
            del self.world.locks[name]
        self._died.set()

    def terminate(self) -> None:
        """SIGTERM: store the open wallet, then exit."""
        if not self.dead and self.wallet is not None:
            self._store()
        self.kill()

    def lose_daemon(self) -> None:
        """The daemon link drops (monero issue 5044): refresh fails -38 until set_daemon."""
        self.daemon_linked = False

    def hang(self) -> None:
        """From now on no request gets an answer (until `kill`, which drops them)."""
        self.hung = True

    def fail_next(self, method: str, code: int, message: str) -> None:
        """The next call of `method` answers this JSON-RPC error instead of running."""
        self._faults.setdefault(method, []).append(RpcFault(code, message))

    async def wait_dead(self) -> None:
        await self._died.wait()

    # ---- HTTP ----

    async def handle_http(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> FakeResponse:
        """Answer one HTTP request; raises `ProcessGone` when the process is (or goes) away."""
        if self.dead or self._exiting:
            raise ProcessGone(mid_call=False)
        if self.hung:
            await self._hang()
        if self.require_auth and not self._authorized(method, headers.get("authorization")):
            nonce = _digest("nonce", self.pid)[:32]
            challenge = f'Digest qop="auth",algorithm=MD5,realm="monero-rpc",nonce="{nonce}"'
            return FakeResponse(401, (("www-authenticate", challenge),), b"")
        if method != "POST" or path.partition("?")[0] != "/json_rpc":
            return FakeResponse(404, (), b"")
        # The call runs in a system task: the real process keeps working on a request whose
        # client timed out or was cancelled, and the next call still waits behind it.
        answer: list[bytes | Exception] = []
        done = trio.Event()
        trio.lowlevel.spawn_system_task(self._run_call, body, answer, done)
        await done.wait()
        if self.hung:
            await self._hang()
        if not answer:
            raise ProcessGone(mid_call=True)
        if isinstance(answer[0], Exception):
            raise answer[0]
        return FakeResponse(200, _JSON_HEADERS, answer[0])

    async def _hang(self) -> NoReturn:
        await self._died.wait()
        raise ProcessGone(mid_call=True)

    def _authorized(self, method: str, header: str | None) -> bool:
        scheme, _, rest = (header or "").partition(" ")
        if scheme.lower() != "digest":
            return False
        if self.user is None:
            return True
        try:
            f = parse_keqv_list(parse_http_list(rest))
            ha1 = _md5(f"{self.user}:{f['realm']}:{self.password or ''}")
            ha2 = _md5(f"{method}:{f['uri']}")
            expected = _md5(f"{ha1}:{f['nonce']}:{f['nc']}:{f['cnonce']}:{f['qop']}:{ha2}")
        except (KeyError, ValueError):
            return False
        return f.get("username") == self.user and hmac.compare_digest(expected, f["response"])

    async def _run_call(
        self, body: bytes, answer: list[bytes | Exception], done: trio.Event
    ) -> None:
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                if not self.dead:
                    answer.append(await self.handle_json(body))
            except Exception as exc:  # noqa: BLE001 - a system task must not raise: the caller does
                answer.append(exc)
            finally:
                self._scopes.discard(scope)
                done.set()

    async def handle_json(self, body: bytes) -> bytes:
        """Answer one JSON-RPC request body, in turn behind the process's running call."""
        try:
            request = json.loads(body)
        except ValueError:
            return _error(None, -32700, "Parse error")
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error(None, -32600, "Invalid Request")
        request_id, method = request.get("id"), request["method"]
        params = request.get("params")
        if not isinstance(params, dict):
            params = {}  # wallet-rpc silently ignores params sent as an array
        self.world.calls.append((self.pid, method))
        try:
            result = await self._call(method, params)
        except RpcFault as fault:
            return _error(request_id, fault.code, fault.message)
        return json.dumps({"id": request_id, "jsonrpc": "2.0", "result": result}).encode()

    async def _call(self, method: str, params: JsonObject) -> JsonObject:
        async with self._lock:
            if self.call_delay > 0:
                await trio.sleep(self.call_delay)
            queued = self._faults.get(method)
            if queued:
                raise queued.pop(0)
            now = trio.current_time()
            if self.wallet is not None and self.auto_refresh and now >= self._auto_refresh_at:
                # The real timer runs on the same thread; here it runs lazily, before a call.
                self.world._sync(self.wallet)
                self._auto_refresh_at = now + self.auto_refresh_period
            slow = self._slow.get(method)
            if slow is not None:
                return await slow(params)
            fast = self._fast.get(method)
            if fast is None:
                raise RpcFault(-32601, "Method not found")
            return fast(params)

    # ---- wallet files ----

    def _wallet(self) -> FakeWallet:
        if self.wallet is None:
            raise RpcFault(-13, NO_WALLET)
        return self.wallet

    def _store(self) -> None:
        wallet = self._wallet()
        wallet.saved = wallet.cache.copy()
        wallet.cache_damaged = False  # a store rewrites the cache file
        self.world.stores[wallet.name] += 1

    def _switch_to(self, wallet: FakeWallet) -> None:
        old = self.wallet
        if old is not None and old is not wallet and self.world.locks.get(old.name) == self.pid:
            del self.world.locks[old.name]
        wallet.cache = wallet.saved.copy()  # loaded from the files
        self.wallet = wallet
        self._auto_refresh_at = trio.current_time() + FIRST_AUTO_REFRESH

    async def _open_wallet(self, params: JsonObject) -> JsonObject:
        name, password = _str(params, "filename"), _str(params, "password")
        if "/" in name:
            raise RpcFault(-1, "Invalid filename")
        if self.wallet is not None and _bool(params, "autosave_current", True):
            self._store()
        wallet = self.world.wallets.get(name)
        holder = self.world.locks.get(name, self.pid)
        if (
            wallet is None
            or wallet.cache_damaged
            or wallet.password != password
            or holder != self.pid
        ):
            raise RpcFault(-1, OPEN_FAILED)
        self.world.locks[name] = self.pid  # taken while loading, as the real lock is
        await trio.sleep(self.open_delay)
        self._switch_to(wallet)
        return {}

    async def _create_wallet(self, params: JsonObject) -> JsonObject:
        name, password = _str(params, "filename"), _str(params, "password")
        language = _str(params, "language")
        if "/" in name:
            raise RpcFault(-1, "Invalid filename")
        if language not in _LANGUAGES:
            raise RpcFault(-1, f"Unknown language: {language}")
        if name in self.world.wallets:
            raise RpcFault(-21, "Cannot create wallet. Already exists.")
        await trio.sleep(self.create_delay)
        if name in self.world.wallets:  # another process created it meanwhile
            raise RpcFault(-21, "Cannot create wallet. Already exists.")
        wallet = self.world.add_wallet(name, password)
        self.world.locks[name] = self.pid
        if self.wallet is not None:
            self._store()
        self._switch_to(wallet)
        return {}

    def _rpc_close_wallet(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if _bool(params, "autosave_current", True):
            self._store()
        if self.world.locks.get(wallet.name) == self.pid:
            del self.world.locks[wallet.name]
        self.wallet = None
        return {}

    def _rpc_store(self, params: JsonObject) -> JsonObject:
        self._store()
        return {}

    def _rpc_stop_wallet(self, params: JsonObject) -> JsonObject:
        self._store()  # -13 with no wallet open, and the process keeps running
        self._exiting = True
        trio.lowlevel.spawn_system_task(self._exit_later)
        return {}

    async def _exit_later(self) -> None:
        await trio.sleep(STOP_EXIT_DELAY)
        self.kill()  # already stored: nothing is lost

    # ---- plain wallet calls ----

    def _rpc_get_version(self, params: JsonObject) -> JsonObject:
        return {"version": RPC_VERSION, "release": True}

    def _rpc_auto_refresh(self, params: JsonObject) -> JsonObject:
        self.auto_refresh = _bool(params, "enable", True)
        self.auto_refresh_period = _int(params, "period") or AUTO_REFRESH_PERIOD
        self._auto_refresh_at = trio.current_time() + self.auto_refresh_period
        return {}

    def _rpc_set_daemon(self, params: JsonObject) -> JsonObject:
        self.daemon_linked = True
        return {}

    def _rpc_refresh(self, params: JsonObject) -> JsonObject:
        if not self.daemon_linked:
            raise RpcFault(-38, "no connection to daemon")
        fetched, received = self.world._sync(self._wallet())
        return {"blocks_fetched": fetched, "received_money": received}

    def _rpc_get_height(self, params: JsonObject) -> JsonObject:
        return {"height": self._wallet().cache.height}

    def _rpc_get_address(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if _int(params, "account_index") != 0:
            raise RpcFault(-14, "account index is out of bound")
        used = bool(self.world._owned(wallet))
        entry = {"address": wallet.address, "label": "", "address_index": 0, "used": used}
        return {"address": wallet.address, "addresses": [entry]}

    def _rpc_get_balance(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if _int(params, "account_index") != 0:  # a missing account answers zeros
            return {"balance": 0, "unlocked_balance": 0, "blocks_to_unlock": 0}
        balance, unlocked, blocks = self.world._balances(wallet)
        unspent = sum(1 for o in self.world._owned(wallet) if not o.spent)
        sub = {"account_index": 0, "address_index": 0, "address": wallet.address, "label": ""}
        sub |= {"balance": balance, "unlocked_balance": unlocked, "num_unspent_outputs": unspent}
        sub |= {"blocks_to_unlock": blocks, "time_to_unlock": 0}
        return {
            "balance": balance,
            "unlocked_balance": unlocked,
            "blocks_to_unlock": blocks,
            "time_to_unlock": 0,
            "multisig_import_needed": self.world._import_needed(wallet),
            "per_subaddress": [sub] if balance else [],
        }

    def _rpc_get_transfer_by_txid(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        txid = _str(params, "txid")
        if not _is_hex(txid):
            raise RpcFault(-8, "Transaction ID has invalid format")
        if len(txid) != 64:
            raise RpcFault(-8, f"Transaction ID has invalid size: {txid}")
        found = [e for e in self.world._transfers(wallet) if e["txid"] == txid.lower()]
        if not found:
            raise RpcFault(-8, "Transaction not found.")
        return {"transfer": found[0], "transfers": found}

    def _rpc_get_transfers(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        wanted = {k for k in ("in", "out", "pending", "failed", "pool") if _bool(params, k)}
        by_height = _bool(params, "filter_by_height")
        low, high = _int(params, "min_height"), _int(params, "max_height", 2**63)
        result: dict[str, list[JsonObject]] = {}  # epee leaves empty lists out
        for entry in self.world._transfers(wallet):
            kind = entry["type"]
            if kind not in wanted:
                continue
            if by_height and kind in ("in", "out") and not low < entry["height"] <= high:
                continue
            result.setdefault(kind, []).append(entry)
        return result

    def _rpc_incoming_transfers(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        kind = _str(params, "transfer_type", "all")
        if kind not in ("all", "available", "unavailable"):
            raise RpcFault(-6, "Transfer type must be one of: all, available, or unavailable")
        items = []
        for index, o in enumerate(o for o in self.world._owned(wallet) if o.confirmations > 0):
            if (kind == "available" and o.spent) or (kind == "unavailable" and not o.spent):
                continue
            items.append(
                {
                    "amount": o.amount,
                    "spent": o.spent,
                    "global_index": index,
                    "tx_hash": o.tx.txid,
                    "subaddr_index": _ACCOUNT_0,
                    "key_image": _digest("key-image", *o.oid) if o.key_image_known else "",
                    "pubkey": _digest("pubkey", *o.oid),
                    "block_height": o.tx.height,
                    "frozen": False,
                    "unlocked": o.unlocked,
                }
            )
        return {"transfers": items} if items else {}

    def _rpc_validate_address(self, params: JsonObject) -> JsonObject:
        address = _str(params, "address")
        if not _bool(params, "any_net_type") and self.wallet is None:
            raise RpcFault(-13, NO_WALLET)
        valid = is_fake_address(address)  # never an OpenAlias lookup, whatever allow_openalias
        return {
            "valid": valid,
            "integrated": False,
            "subaddress": valid and address.startswith("8"),
            "nettype": "mainnet" if valid else "",
            "openalias_address": "",
        }

    # ---- spending ----

    def _spendable(self, wallet: FakeWallet) -> tuple[list[_Owned], list[_Owned]]:
        """(unspent outputs, those a transaction can use now)."""
        if wallet.is_multisig:
            self._check_multisig_enabled(wallet)
        unspent = [o for o in self.world._owned(wallet) if not o.spent]
        usable = [o for o in unspent if o.unlocked and o.key_image_known and o.confirmations]
        return unspent, usable

    def _rpc_transfer(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        unspent, usable = self._spendable(wallet)
        dests = _destinations(params)
        amount = sum(a for _, a in dests)
        need = amount + FEE
        have = sum(o.amount for o in usable)
        if wallet.is_multisig and (
            not wallet.ready
            or self.world._stale(wallet)
            or (have < need and not all(o.key_image_known for o in unspent))
        ):
            raise RpcFault(-16, "No transaction created")
        if sum(o.amount for o in unspent) < need:
            raise RpcFault(-17, "not enough money")
        if have < need:
            raise RpcFault(-37, "not enough unlocked money")
        inputs: list[_Owned] = []
        for o in usable:
            inputs.append(o)
            if sum(i.amount for i in inputs) >= need:
                break
        change = sum(i.amount for i in inputs) - need
        outputs = (*dests, *([(wallet.address, change)] if change else []))
        tx_hash, txset = self._make_tx(wallet, inputs, tuple(outputs))
        return {
            "amount": amount,
            "fee": FEE,
            "tx_hash": tx_hash,
            "tx_key": "",
            "weight": 1500,
            "multisig_txset": txset,
            "unsigned_txset": "",
        }

    def _rpc_sweep_all(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        unspent, usable = self._spendable(wallet)
        address = _str(params, "address")
        if not is_fake_address(address):
            raise RpcFault(-2, f"WALLET_RPC_ERROR_CODE_WRONG_ADDRESS: {address}")
        if wallet.is_multisig and (not wallet.ready or (usable and self.world._stale(wallet))):
            raise RpcFault(-16, "No transaction created")
        if not any(o.unlocked for o in unspent):
            raise RpcFault(-4, "No unlocked balance in the specified account")
        if not usable:  # outputs whose key image is not known yet cannot be swept
            raise RpcFault(-4, "No unlocked balance in the specified subaddress(es)")
        total = sum(o.amount for o in usable)
        if total <= FEE:
            raise RpcFault(-17, "not enough money")
        tx_hash, txset = self._make_tx(wallet, usable, ((address, total - FEE),))
        return {
            "tx_hash_list": [tx_hash],
            "amount_list": [total - FEE],
            "fee_list": [FEE],
            "weight_list": [1500],
            "multisig_txset": txset,
            "unsigned_txset": "",
        }

    def _make_tx(
        self, wallet: FakeWallet, inputs: list[_Owned], outputs: tuple[tuple[str, int], ...]
    ) -> tuple[str, str]:
        """Relay a plain wallet's transaction, or propose a multisig one: (tx_hash, txset)."""
        ids = tuple(o.oid for o in inputs)
        if not wallet.is_multisig:
            txid = self.world._new_txid("tx", wallet.address)
            self.world.txs[txid] = FakeTx(txid, wallet.address, ids, outputs)
            wallet.cache.known_spends.add(txid)
            return txid, ""
        epoch = self.world.epoch(wallet.address)
        proposal = _Proposal(
            self.world._new_txid("multisig-tx", wallet.address), wallet.address, ids, outputs, epoch
        )
        txset = self.world._txset(proposal, frozenset({wallet.name}))
        # The hash of the unsigned transaction: never the txid the signed one will have.
        return _digest("unsigned", proposal.txid), txset

    # ---- multisig ----

    def _check_multisig_enabled(self, wallet: FakeWallet) -> None:
        if wallet.is_multisig and not wallet.multisig_enabled:
            raise RpcFault(-48, MULTISIG_DISABLED)

    def _ready_wallet(self) -> FakeWallet:
        wallet = self._wallet()
        if not wallet.is_multisig:
            raise RpcFault(-31, "This wallet is not multisig")
        if not wallet.ready:
            raise RpcFault(-31, "This wallet is multisig, but not yet finalized")
        self._check_multisig_enabled(wallet)
        return wallet

    def _rpc_is_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        return {
            "multisig": wallet.is_multisig,
            "ready": wallet.ready,
            "threshold": wallet.threshold,
            "total": len(wallet.group),
        }

    def _rpc_prepare_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if wallet.is_multisig:
            raise RpcFault(-28, "This wallet is already multisig")
        if _bool(params, "enable_multisig_experimental"):
            wallet.multisig_enabled = True
        return {"multisig_info": self.world._kex_msg(wallet.name, 0)}

    def _rpc_make_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if wallet.is_multisig:
            raise RpcFault(-28, "This wallet is already multisig")
        threshold, password = _int(params, "threshold"), _str(params, "password")
        members = {wallet.name}
        for info in _str_list(params, "multisig_info"):
            msg = self.world._blob(info)
            if not isinstance(msg, _KexMsg) or msg.round != 0 or msg.wallet in members:
                raise RpcFault(-1, "Bad, own or repeated multisig info from prepare_multisig")
            members.add(msg.wallet)
        if not 2 <= threshold <= len(members):
            raise RpcFault(-1, f"Invalid threshold {threshold} for {len(members)} signers")
        wallet.group, wallet.threshold, wallet.kex_round = tuple(sorted(members)), threshold, 1
        wallet.password = password  # make_multisig rewrites the keys file with this password
        return {"address": wallet.address, "multisig_info": self.world._kex_msg(wallet.name, 1)}

    def _rpc_exchange_multisig_keys(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if not wallet.is_multisig:
            raise RpcFault(-31, "This wallet is not multisig")
        self._check_multisig_enabled(wallet)
        infos, password = _str_list(params, "multisig_info"), _str(params, "password")
        if len(infos) + 1 < len(wallet.group):
            raise RpcFault(-33, "Needs multisig info from more participants")
        fail = "Error calling exchange_multisig_info: "
        if wallet.ready:
            raise RpcFault(-1, fail + "multisig key exchange is already complete")
        senders = set()
        for info in infos:
            msg = self.world._blob(info)
            if (
                not isinstance(msg, _KexMsg)
                or msg.round != wallet.kex_round
                or msg.wallet == wallet.name
                or self.world.wallets[msg.wallet].group != wallet.group
            ):
                raise RpcFault(-1, fail + "bad kex message (other group, own or wrong round)")
            senders.add(msg.wallet)
        if senders != set(wallet.group) - {wallet.name}:
            raise RpcFault(-1, fail + "kex messages missing from some signers")
        wallet.kex_round += 1
        wallet.password = password  # the keys file is rewritten again
        if not wallet.ready:
            return {
                "address": "",
                "multisig_info": self.world._kex_msg(wallet.name, wallet.kex_round),
            }
        wallet.address = fake_address(f"multisig:{wallet.threshold}:{','.join(wallet.group)}")
        return {"address": wallet.address, "multisig_info": ""}

    def _rpc_export_multisig_info(self, params: JsonObject) -> JsonObject:
        return {"info": self.world._export(self._ready_wallet())}

    def _rpc_import_multisig_info(self, params: JsonObject) -> JsonObject:
        wallet = self._ready_wallet()
        infos = _str_list(params, "info")
        if len(infos) + 1 < wallet.threshold:
            raise RpcFault(-33, "Needs multisig export info from more participants")
        fail = "Error calling import_multisig: "
        records: dict[str, _ExportInfo] = {}
        for info in infos:
            if not _is_hex(info):
                raise RpcFault(-26, "Failed to parse hex.")
            record = self.world._blob(info)
            if not isinstance(record, _ExportInfo):
                raise RpcFault(-1, fail + "Bad multisig info file magic in ")
            if record.address != wallet.address:
                raise RpcFault(-1, fail + "Multisig info is for a different account")
            if record.wallet != wallet.name:  # own and repeated infos are ignored, as in wallet2
                records.setdefault(record.wallet, record)
        if not wallet.threshold <= len(records) + 1 <= len(wallet.group):
            raise RpcFault(-1, fail + "Wrong number of multisig sources")
        mined = [o for o in self.world._owned(wallet) if o.confirmations > 0]
        n_outputs = min([len(mined), *(r.n_outputs for r in records.values())])
        covered = {o.oid for o in mined[:n_outputs]}
        wallet.cache.key_images |= covered
        wallet.cache.import_epoch = min(r.epoch for r in records.values())
        # rescan_spent: spends of covered outputs are found even in blocks not yet synced.
        for tx in self.world.txs.values():
            if tx.sender == wallet.address and covered.intersection(tx.inputs):
                wallet.cache.known_spends.add(tx.txid)
        return {"n_outputs": n_outputs}

    def _txset_param(self, params: JsonObject, wallet: FakeWallet) -> _TxSet:
        blob = _str(params, "tx_data_hex")
        if not _is_hex(blob):
            raise RpcFault(-26, "Failed to parse hex.")
        txset = self.world._blob(blob)
        if not isinstance(txset, _TxSet) or txset.proposal.address != wallet.address:
            raise RpcFault(-34, "Failed to parse multisig tx data.")
        return txset

    def _rpc_sign_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._ready_wallet()
        txset = self._txset_param(params, wallet)
        proposal = txset.proposal
        if wallet.name in txset.signers:
            raise RpcFault(
                -35, "Failed to sign multisig tx: Transaction already signed by this private key"
            )
        if len(txset.signers) >= wallet.threshold:
            raise RpcFault(-35, "Failed to sign multisig tx: Transaction is already fully signed")
        if (
            self.world._stale(wallet)
            or proposal.epoch != self.world.epoch(wallet.address)
            or not set(proposal.inputs) <= wallet.cache.key_images
        ):
            raise RpcFault(-35, STALE)
        signers = txset.signers | {wallet.name}
        result: JsonObject = {"tx_data_hex": self.world._txset(proposal, signers)}
        if len(signers) >= wallet.threshold:
            result["tx_hash_list"] = [proposal.txid]
        return result

    def _rpc_submit_multisig(self, params: JsonObject) -> JsonObject:
        wallet = self._ready_wallet()
        txset = self._txset_param(params, wallet)
        if len(txset.signers) < wallet.threshold:
            raise RpcFault(-33, "Not enough signers signed this transaction.")
        proposal = txset.proposal
        if proposal.txid not in self.world.txs:  # the same transaction again is no new spend
            spent = set(proposal.inputs)
            if any(spent.intersection(tx.inputs) for tx in self.world.txs.values()):
                raise RpcFault(-36, "Failed to submit multisig tx: double spend (rejected)")
            self.world.txs[proposal.txid] = FakeTx(
                proposal.txid, proposal.address, proposal.inputs, proposal.outputs
            )
        wallet.cache.known_spends.add(proposal.txid)
        return {"tx_hash_list": [proposal.txid]}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _error(request_id: object, code: int, message: str) -> bytes:
    error = {"code": code, "message": message}
    return json.dumps({"id": request_id, "jsonrpc": "2.0", "error": error}).encode()


# ---- transports --------------------------------------------------------------------------------


class FakeTransport(httpx.AsyncBaseTransport):
    """Routes httpx requests to a `FakeWalletRpc` in-process, honouring the read timeout.

    A dead process gives `httpx.ConnectError` (or `RemoteProtocolError` for a call it dropped),
    a silent one `httpx.ReadTimeout`: the errors httpx raises against a real process.
    """

    def __init__(self, fake: FakeWalletRpc) -> None:
        self.fake = fake

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                answer = await self.fake.handle_http(
                    request.method, request.url.path, request.headers, body
                )
        except trio.TooSlowError as exc:
            raise httpx.ReadTimeout("fake wallet-rpc did not answer", request=request) from exc
        except ProcessGone as exc:
            if exc.mid_call:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                ) from exc
            raise httpx.ConnectError("All connection attempts failed", request=request) from exc
        return httpx.Response(
            answer.status, headers=list(answer.headers), content=answer.body, request=request
        )


async def serve_tcp(
    fake: FakeWalletRpc,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    instant: bool = True,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `fake` over HTTP/1.1 on a real socket until it dies (or the caller cancels).

    `instant` zeroes the fake's delays, for a benchmark that wants wallet-rpc's protocol with
    none of its cost. Reports the bound port through `task_status`.
    """
    if instant:
        fake.open_delay = fake.create_delay = fake.call_delay = 0.0
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(trio.serve_listeners, partial(_serve_connection, fake), listeners)
        )
        task_status.started(int(listeners[0].socket.getsockname()[1]))
        await fake.wait_dead()
        nursery.cancel_scope.cancel()  # a dead process refuses connections


async def _serve_connection(fake: FakeWalletRpc, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _next_event(conn, stream)
            if not isinstance(request, h11.Request):
                return
            body = bytearray()
            while isinstance(event := await _next_event(conn, stream), h11.Data):
                body += event.data
            if not isinstance(event, h11.EndOfMessage):
                return
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            answer = await fake.handle_http(
                request.method.decode("ascii"),
                request.target.decode("ascii"),
                headers,
                bytes(body),
            )
            response_headers = [*answer.headers, ("content-length", str(len(answer.body)))]
            for out in (
                h11.Response(status_code=answer.status, headers=response_headers),
                h11.Data(data=answer.body),
                h11.EndOfMessage(),
            ):
                data = conn.send(out)
                if data:
                    await stream.send_all(data)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (ProcessGone, h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the peer or the process went away: drop the connection
    finally:
        await stream.aclose()


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))
