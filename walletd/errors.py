"""Every error walletd raises on purpose, and the API error each one becomes.

The hierarchy::

    WalletdError
    ├── ApiError                      an answer for the client: HTTP status + documented code
    │   ├── InvalidRequest            400 invalid_request
    │   ├── Forbidden                 403 forbidden
    │   ├── NotFound                  404 not_found
    │   ├── Conflict                  409 conflict
    │   ├── NotReady                  409 not_ready
    │   ├── TooLarge                  413 too_large
    │   ├── Capacity                  503 capacity (no session slot could be freed in time)
    │   ├── Unavailable               503 unavailable (monerod or wallet-rpc unreachable)
    │   │   └── SessionFailed         a session gave up (restart limit, wrong wallet)
    │   ├── WalletError               502 wallet_error (wallet-rpc refused; message says why)
    │   └── Timeout                   504 timeout
    ├── ConfigError                   start-up stops; the message names the key
    └── RpcError                      talking to monerod or a monero-wallet-rpc
        ├── RpcUnreachable            connection refused/reset, process gone
        ├── RpcTimeout                no answer within the call's timeout
        ├── RpcAuthError              HTTP 401: not the process we started (port reused?)
        └── RpcCallError              a JSON-RPC error object: keeps code and message
            └── NoWalletFile          -13 "No wallet file": the process lost its wallet

`api_error_for` maps the internal errors onto the documented API codes at the edge.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ApiError",
    "Capacity",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NoWalletFile",
    "NotFound",
    "NotReady",
    "RpcAuthError",
    "RpcCallError",
    "RpcError",
    "RpcTimeout",
    "RpcUnreachable",
    "SessionFailed",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "WalletError",
    "WalletdError",
    "api_error_for",
    "first_error",
]


class WalletdError(Exception):
    """Base of every error walletd raises on purpose."""


class ApiError(WalletdError):
    """An error with a documented API code; its message is safe to show to the client."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class NotReady(ApiError):
    status, code = 409, "not_ready"


class TooLarge(ApiError):
    status, code = 413, "too_large"


class Capacity(ApiError):
    status, code = 503, "capacity"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


class SessionFailed(Unavailable):
    """A session gave up: its wallets could not be restored, or a process held the wrong wallet."""


class WalletError(ApiError):
    status, code = 502, "wallet_error"


class Timeout(ApiError):
    status, code = 504, "timeout"


class ConfigError(WalletdError):
    """The configuration cannot be used; the message names the key."""


class RpcError(WalletdError):
    """Talking to monerod or a monero-wallet-rpc failed."""

    def __init__(self, method: str, message: str) -> None:
        super().__init__(f"{method}: {message}")
        self.method = method
        self.message = message


class RpcUnreachable(RpcError):
    """The process did not accept the connection or dropped it: it is gone or restarting."""


class RpcTimeout(RpcError):
    """The process did not answer within the call's timeout (it may still be working)."""


class RpcAuthError(RpcError):
    """HTTP 401: the process on that port does not know our credentials, so it is not ours."""


class RpcCallError(RpcError):
    """wallet-rpc or monerod answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(method, f"error {code}: {message}")
        self.code = code
        self.rpc_message = message


class NoWalletFile(RpcCallError):
    """-13 "No wallet file": the process has no wallet open (it lost it or never had it)."""


def first_error(exc: BaseException) -> BaseException:
    """The error a caller should see from a nursery's ExceptionGroup: its first leaf that is
    not a cancellation (concurrent wallet calls fail together; one reason is enough)."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [first_error(e) for e in exc.exceptions]
        for leaf in leaves:
            if isinstance(leaf, Exception):
                return leaf
        return leaves[0] if leaves else exc
    return exc


def api_error_for(exc: BaseException) -> ApiError:
    """The API error a client sees for `exc`; unexpected errors say nothing about internals."""
    match exc:
        case ApiError():
            return exc
        case RpcTimeout():
            return Timeout(f"wallet-rpc did not answer in time ({exc.method})")
        case RpcUnreachable() | RpcAuthError() | NoWalletFile():
            return Unavailable(f"wallet-rpc unavailable ({exc.method}); walletd is restoring it")
        case RpcCallError():
            return WalletError(f"wallet-rpc refused {exc.method}: {exc.rpc_message}")
        case WalletdError() if hasattr(exc, "step"):  # a multisig step (walletd.wallets.multisig)
            return WalletError(str(exc))
        case _:
            return ApiError("internal error; see walletd's log")
