"""What crosses the edge of a fake wallet-rpc process: params in, faults and answers out.

The fake's methods read their params the way epee does (a missing field takes its default, a
field of the wrong type is -32602), fail with `RpcFault` (a JSON-RPC error, with HTTP 200, as
wallet-rpc answers), and a dead process raises `ProcessGone`, which the transports turn into the
connection errors httpx raises against a real one. Shared by the process (`fake_wallet_rpc`), its
spending and multisig calls (`fake_spending`) and the transports (`fake_transport`).
"""

from __future__ import annotations

import json
import string

import attrs

from walletd.testing.fake_chain import JsonObject, is_fake_address


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


@attrs.frozen
class FakeResponse:
    """An HTTP answer, for `FakeTransport` and `serve_tcp` to send."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def is_hex(text: str) -> bool:
    return len(text) % 2 == 0 and all(c in string.hexdigits for c in text)


def error_body(request_id: object, code: int, message: str) -> bytes:
    error = {"code": code, "message": message}
    return json.dumps({"id": request_id, "jsonrpc": "2.0", "error": error}).encode()


# ---- params: epee leaves a missing field at its default and refuses a wrong type --------------


def _bad_params() -> RpcFault:
    return RpcFault(-32602, "Invalid params")


def param_str(params: JsonObject, key: str, default: str = "") -> str:
    value = params.get(key, default)
    if not isinstance(value, str):
        raise _bad_params()
    return value


def param_int(params: JsonObject, key: str, default: int = 0) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad_params()
    return value


def param_bool(params: JsonObject, key: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise _bad_params()
    return value


def param_str_list(params: JsonObject, key: str) -> list[str]:
    value = params.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad_params()
    return list(value)


def param_destinations(params: JsonObject) -> list[tuple[str, int]]:
    raw = params.get("destinations", [])
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise _bad_params()
    dests = [(param_str(d, "address"), param_int(d, "amount")) for d in raw]
    if not dests:
        raise RpcFault(-20, "No destinations for this transfer")
    for address, amount in dests:
        if not is_fake_address(address):
            raise RpcFault(-2, f"WALLET_RPC_ERROR_CODE_WRONG_ADDRESS: {address}")
        if amount == 0:
            raise RpcFault(-46, "destination amount is zero")
    return dests
