"""A fake monero-wallet-rpc for fast unit tests, fault injection and an instant benchmark server.

`FakeWalletWorld` is the state shared by all fake processes: the wallet directory, the keys-file
locks and a fake chain. Each `FakeWalletRpc` is one wallet-rpc process. `FakeTransport` plugs one
into `rpc.WalletRpc` in-process (no sockets, so trio's autojump clock skips the delays),
and `serve_tcp` serves one over real loopback HTTP/1.1.

This module is the process (HTTP, the call lock, fault injection, wallet files, the plain calls)
and the public face of the fake: it re-exports what its neighbours define. The chain is
`fake_chain`, the spending and multisig rules `fake_spending`, params and faults
`fake_rpc_wire`, the transports `fake_transport`.

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
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, NoReturn
from urllib.request import parse_http_list, parse_keqv_list

import trio

from walletd.testing.fake_chain import (
    ACCOUNT_0,
    FEE,
    UNLOCK_CONFIRMATIONS,
    FakeTx,
    FakeWallet,
    FakeWalletWorld,
    JsonObject,
    WalletCache,
    digest,
    fake_address,
    is_fake_address,
)
from walletd.testing.fake_rpc_wire import (
    FakeResponse,
    ProcessGone,
    RpcFault,
    error_body,
    is_hex,
    param_bool,
    param_int,
    param_str,
)
from walletd.testing.fake_spending import SpendingCalls
from walletd.testing.fake_transport import FakeTransport, serve_tcp

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

STOP_EXIT_DELAY: Final = 0.5  # stop_wallet answers, then the process exits ~0.5 s later
AUTO_REFRESH_PERIOD: Final = 20.0
FIRST_AUTO_REFRESH: Final = 1.0  # after an open, as measured
RPC_VERSION: Final = (1 << 16) | 25  # what 0.18.0.0 reports (1.25)

NO_WALLET: Final = "No wallet file"
OPEN_FAILED: Final = "Failed to open wallet"
_LANGUAGES: Final = frozenset(
    {"English", "Deutsch", "Español", "Français", "Italiano", "Nederlands", "Português"}
    | {"русский язык", "日本語", "简体中文 (中国)", "Esperanto", "Lojban"}
)
_JSON_HEADERS: Final = (("content-type", "application/json"),)


class FakeWalletRpc(SpendingCalls):
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
            nonce = digest("nonce", self.pid)[:32]
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
            return error_body(None, -32700, "Parse error")
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return error_body(None, -32600, "Invalid Request")
        request_id, method = request.get("id"), request["method"]
        params = request.get("params")
        if not isinstance(params, dict):
            params = {}  # wallet-rpc silently ignores params sent as an array
        self.world.calls.append((self.pid, method))
        try:
            result = await self._call(method, params)
        except RpcFault as fault:
            return error_body(request_id, fault.code, fault.message)
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
        self.world.write_files(wallet.name)

    def _switch_to(self, wallet: FakeWallet) -> None:
        old = self.wallet
        if old is not None and old is not wallet and self.world.locks.get(old.name) == self.pid:
            del self.world.locks[old.name]
        wallet.cache = wallet.saved.copy()  # loaded from the files
        self.wallet = wallet
        self._auto_refresh_at = trio.current_time() + FIRST_AUTO_REFRESH

    async def _open_wallet(self, params: JsonObject) -> JsonObject:
        name, password = param_str(params, "filename"), param_str(params, "password")
        if "/" in name:
            raise RpcFault(-1, "Invalid filename")
        if self.wallet is not None and param_bool(params, "autosave_current", True):
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
        name, password = param_str(params, "filename"), param_str(params, "password")
        language = param_str(params, "language")
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
        if param_bool(params, "autosave_current", True):
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
        self.auto_refresh = param_bool(params, "enable", True)
        self.auto_refresh_period = param_int(params, "period") or AUTO_REFRESH_PERIOD
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
        if param_int(params, "account_index") != 0:
            raise RpcFault(-14, "account index is out of bound")
        used = bool(self.world._owned(wallet))
        entry = {"address": wallet.address, "label": "", "address_index": 0, "used": used}
        return {"address": wallet.address, "addresses": [entry]}

    def _rpc_get_balance(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        if param_int(params, "account_index") != 0:  # a missing account answers zeros
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
        txid = param_str(params, "txid")
        if not is_hex(txid):
            raise RpcFault(-8, "Transaction ID has invalid format")
        if len(txid) != 64:
            raise RpcFault(-8, f"Transaction ID has invalid size: {txid}")
        found = [e for e in self.world._transfers(wallet) if e["txid"] == txid.lower()]
        if not found:
            raise RpcFault(-8, "Transaction not found.")
        return {"transfer": found[0], "transfers": found}

    def _rpc_get_transfers(self, params: JsonObject) -> JsonObject:
        wallet = self._wallet()
        wanted = {k for k in ("in", "out", "pending", "failed", "pool") if param_bool(params, k)}
        by_height = param_bool(params, "filter_by_height")
        low, high = param_int(params, "min_height"), param_int(params, "max_height", 2**63)
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
        kind = param_str(params, "transfer_type", "all")
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
                    "subaddr_index": ACCOUNT_0,
                    "key_image": digest("key-image", *o.oid) if o.key_image_known else "",
                    "pubkey": digest("pubkey", *o.oid),
                    "block_height": o.tx.height,
                    "frozen": False,
                    "unlocked": o.unlocked,
                }
            )
        return {"transfers": items} if items else {}

    def _rpc_validate_address(self, params: JsonObject) -> JsonObject:
        address = param_str(params, "address")
        if not param_bool(params, "any_net_type") and self.wallet is None:
            raise RpcFault(-13, NO_WALLET)
        valid = is_fake_address(address)  # never an OpenAlias lookup, whatever allow_openalias
        return {
            "valid": valid,
            "integrated": False,
            "subaddress": valid and address.startswith("8"),
            "nettype": "mainnet" if valid else "",
            "openalias_address": "",
        }


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
