"""JSON-RPC clients for monero-wallet-rpc and monerod.

One `httpx.AsyncClient` per process: a new client per call costs ~20 ms (monero-facts.md), and
digest auth reuses the server's nonce after the first challenge. Every call has a timeout, and
every failure becomes one of the typed errors of `walletd.errors`, keeping wallet-rpc's code and
message.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import attrs
import httpx

from walletd.errors import (
    DamagedWallet,
    NoWalletFile,
    RpcAuthError,
    RpcCallError,
    RpcTimeout,
    RpcUnreachable,
)
from walletd.jsontypes import JsonObject
from walletd.wallets.transport import LoopbackTransport

__all__ = ["DAMAGE_SIGNS", "DaemonRpc", "JsonRpcClient", "TxStatus", "WalletRpc", "signals_damage"]

NO_WALLET_FILE = -13
# What wallet-rpc says when the wallet it holds (in memory or its cache file) is damaged: the
# list basicswap's Monero interface reads so (basicswap/interface/xmr/xmr.py, _openWallet).
DAMAGE_SIGNS = (
    "invalid signature",
    "std::bad_alloc",
    "basic_string::_M_replace_aux",
    "input stream error",
)


def signals_damage(message: str) -> bool:
    """Whether a wallet-rpc error message is one of the known signs of a damaged wallet."""
    return any(sign in message for sign in DAMAGE_SIGNS)


_JSON_HEADERS = {"Content-Type": "application/json"}


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` whose cookie jar ignores responses.

    wallet-rpc never sets cookies, and httpx's cookie-jar bookkeeping on every response was a
    sixth of a warm call's CPU (profiled). `AsyncClient(cookies=...)` copies whatever it is given
    into a plain jar, so the public `cookies` property is overridden instead.
    """

    def __init__(self, **kwargs: Any) -> None:  # Any: httpx.AsyncClient's own keyword arguments
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("wallet-rpc clients keep no cookies")


class JsonRpcClient:
    """Calls `POST {base_url}/json_rpc` and unwraps the result or raises a typed error."""

    reports_damage = False  # whether DAMAGE_SIGNS in an error mean a damaged wallet here

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.default_timeout = timeout
        self._ids = itertools.count(1)
        # Called with (method, seconds) after every call that got an answer: metrics.
        self.observer: Callable[[str, float], None] | None = None
        self._json_rpc_url = httpx.URL(base_url.rstrip("/") + "/json_rpc")
        self._client = _CookielessClient(
            base_url=base_url,
            auth=auth,
            timeout=timeout,
            # Loopback http:// only: our own lean keep-alive transport (see rpc_transport).
            transport=transport or LoopbackTransport(),
            # Loopback only: never pick up a proxy from the environment.
            trust_env=False,
        )

    async def call(
        self, method: str, params: JsonObject | None = None, *, timeout: float | None = None
    ) -> JsonObject:
        """Call `method` and return its `result` object.

        Params are always sent as an object: wallet-rpc silently ignores a JSON array.
        """
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params or {}}
        # Built by hand from a pre-parsed URL: httpx's own URL merging in `post` cost more CPU
        # than the rest of a warm call (profiled), and warm calls are walletd's hot path.
        request = httpx.Request(
            "POST",
            self._json_rpc_url,
            content=json.dumps(body, separators=(",", ":")).encode(),
            headers=_JSON_HEADERS,
            extensions={"timeout": httpx.Timeout(timeout or self.default_timeout).as_dict()},
        )
        started = time.perf_counter()
        try:
            resp = await self._client.send(request)
        except httpx.TimeoutException as exc:
            raise RpcTimeout(method, "no answer in time") from exc
        except httpx.TransportError as exc:
            raise RpcUnreachable(method, type(exc).__name__) from exc
        if self.observer is not None:
            self.observer(method, time.perf_counter() - started)
        if resp.status_code == 401:
            raise RpcAuthError(method, "credentials refused (HTTP 401)")
        if resp.status_code != 200:
            raise RpcUnreachable(method, f"HTTP {resp.status_code}")
        try:
            payload = resp.json()
        except ValueError as exc:
            raise RpcUnreachable(method, "answer is not JSON") from exc
        if not isinstance(payload, dict):
            raise RpcUnreachable(method, "answer is not a JSON object")
        error = payload.get("error")
        if isinstance(error, dict):
            code = int(error.get("code", 0))
            message = str(error.get("message", ""))
            if code == NO_WALLET_FILE:
                raise NoWalletFile(method, code, message)
            if self.reports_damage and signals_damage(message):
                raise DamagedWallet(method, code, message, self.base_url)
            raise RpcCallError(method, code, message)
        result = payload.get("result")
        return result if isinstance(result, dict) else {}

    async def aclose(self) -> None:
        await self._client.aclose()


class WalletRpc(JsonRpcClient):
    """A client for one monero-wallet-rpc process, authenticated with its own digest credentials."""

    reports_damage = True

    def __init__(
        self,
        base_url: str,
        *,
        user: str,
        password: str,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, auth=httpx.DigestAuth(user, password), timeout=timeout, transport=transport
        )

    def __repr__(self) -> str:  # never show the credentials
        return f"WalletRpc({self.base_url})"


FEE_MULTIPLIERS = (1, 4, 20, 166)  # wallet2's per-priority multipliers (2021 fee scaling)


class DaemonRpc(JsonRpcClient):
    """A client for monerod's JSON-RPC (no credentials: loopback only)."""

    async def height(self) -> int:
        info = await self.call("get_info")
        return int(info["height"])

    async def generate_blocks(self, count: int, address: str) -> int:
        result = await self.call(
            "generateblocks",
            {"amount_of_blocks": count, "wallet_address": address, "starting_nonce": 0},
            timeout=max(60.0, count * 2.0),
        )
        return int(result.get("height", 0))

    async def fee_per_byte(self, priority: int) -> int:
        """`get_fee_estimate`'s fee per byte for wallet-rpc's `priority`.

        The daemon answers one fee per priority level 1-4 (`fees`). Priority 0 is the wallet's
        default, which wallet2 may raise from low to normal when the pool is backlogged: the
        normal level (2) bounds it."""
        answer = await self.call("get_fee_estimate")
        level = priority if 1 <= priority <= len(FEE_MULTIPLIERS) else 2
        fees = answer.get("fees")
        if isinstance(fees, list) and len(fees) >= level:
            return int(fees[level - 1])
        return int(answer["fee"]) * FEE_MULTIPLIERS[level - 1]  # an older daemon: base fee only

    async def tx_status(self, txid: str) -> TxStatus | None:
        """Where the daemon has `txid`: in the pool, in a block, or nowhere (None).

        `/get_transactions` is one of monerod's plain JSON endpoints, not JSON-RPC."""
        method = "get_transactions"
        try:
            resp = await self._client.post(
                "/get_transactions", json={"txs_hashes": [txid], "decode_as_json": False}
            )
            payload = resp.json()
        except httpx.TimeoutException as exc:
            raise RpcTimeout(method, "no answer in time") from exc
        except (httpx.TransportError, ValueError) as exc:
            raise RpcUnreachable(method, type(exc).__name__) from exc
        txs = payload.get("txs") or [] if isinstance(payload, dict) else []
        if not txs:
            return None
        tx = txs[0]
        in_pool = bool(tx.get("in_pool"))
        return TxStatus(in_pool=in_pool, block_height=None if in_pool else int(tx["block_height"]))

    def __repr__(self) -> str:
        return f"DaemonRpc({self.base_url})"


@attrs.frozen
class TxStatus:
    in_pool: bool
    block_height: int | None

    def confirmations(self, height: int) -> int:
        """Blocks on top of (and including) the one holding the transaction."""
        return 0 if self.block_height is None else max(0, height - self.block_height)
