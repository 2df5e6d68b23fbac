"""Every error walletd raises on purpose: a domain error tree, with no HTTP in it.

The hierarchy::

    WalletdError
    ├── PublicError                   its message is meant for the caller (a client of the API)
    │   ├── Internal                  something unexpected failed; the message says nothing more
    │   ├── InvalidRequest            the request is malformed or breaks a rule of api.md
    │   ├── Forbidden                 the caller may not do this
    │   ├── NotFound                  no such escrow (or route)
    │   ├── MethodNotAllowed          a known route, not with this method; names the ones it takes
    │   ├── Conflict                  the request contradicts the escrow's state or another request
    │   ├── NotReady                  the escrow is not there yet (funding, confirmations)
    │   ├── TooLarge                  the request exceeds a size limit
    │   ├── Capacity                  no session slot could be freed in time
    │   ├── Unavailable               monerod or wallet-rpc unreachable
    │   │   ├── SessionFailed         a session gave up (restart limit, wrong wallet)
    │   │   └── OwnedElsewhere        (cluster) another live host holds the escrow's lease
    │   ├── WalletError               wallet-rpc refused; the message says why
    │   └── Timeout                   wallet-rpc did not answer in time
    ├── ConfigError                   start-up stops; the message names the key
    ├── MultisigError                 a step of the multisig recipe failed (wallets.multisig)
    └── RpcError                      talking to monerod or a monero-wallet-rpc
        ├── RpcUnreachable            connection refused/reset, process gone
        ├── RpcTimeout                no answer within the call's timeout
        ├── RpcAuthError              HTTP 401: not the process we started (port reused?)
        └── RpcCallError              a JSON-RPC error object: keeps code and message
            └── NoWalletFile          -13 "No wallet file": the process lost its wallet

`public_error` says what a caller is told about any error (internal errors become public ones).
Which HTTP status and API code each public error is answered with is the business of the edge,
`walletd.api.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

__all__ = [
    "Capacity",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "Internal",
    "InvalidRequest",
    "MethodNotAllowed",
    "MultisigError",
    "NoWalletFile",
    "NotFound",
    "NotReady",
    "OwnedElsewhere",
    "PublicError",
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
    "first_error",
    "public_error",
]


class WalletdError(Exception):
    """Base of every error walletd raises on purpose."""


class PublicError(WalletdError):
    """An error whose message is safe to show to the caller; its class says what kind it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def copy(self) -> Self:
        """The same error as a new instance (of the same class), without a traceback."""
        return type(self)(self.message)


class Internal(PublicError):
    """Something unexpected failed; the details are in walletd's log, not in the message."""


class InvalidRequest(PublicError):
    pass


class Forbidden(PublicError):
    pass


class NotFound(PublicError):
    pass


class MethodNotAllowed(PublicError):
    """The route exists, but not with this method; `allowed` are the methods it takes."""

    def __init__(self, message: str, allowed: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.allowed = tuple(allowed)

    def copy(self) -> Self:
        return type(self)(self.message, self.allowed)


class Conflict(PublicError):
    pass


class NotReady(PublicError):
    pass


class TooLarge(PublicError):
    pass


class Capacity(PublicError):
    pass


class Unavailable(PublicError):
    pass


class SessionFailed(Unavailable):
    """A session gave up: its wallets could not be restored, or a process held the wrong wallet."""


class OwnedElsewhere(Unavailable):
    """In a cluster, another live host holds the escrow's lease: only it may open the escrow's
    wallets or write about it. The API forwards the request there; others retry later."""

    def __init__(self, message: str, host_id: str = "") -> None:
        super().__init__(message)
        self.host_id = host_id

    def copy(self) -> Self:
        return type(self)(self.message, self.host_id)


class WalletError(PublicError):
    pass


class Timeout(PublicError):
    pass


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


class DamagedWallet(RpcCallError):
    """An error wallet-rpc gives when the wallet in its memory or its cache file is damaged
    (the messages peers learnt to read so, e.g. basicswap: "invalid signature",
    "std::bad_alloc", "basic_string::_M_replace_aux", "input stream error"). `url` names the
    process (never its credentials), so the session knows which wallet to drop unsaved."""

    def __init__(self, method: str, code: int, message: str, url: str) -> None:
        super().__init__(method, code, message)
        self.url = url


class NoWalletFile(RpcCallError):
    """-13 "No wallet file": the process has no wallet open (it lost it or never had it)."""


class MultisigError(WalletdError):
    """A step of the multisig recipe (walletd.wallets.multisig) failed.

    Attributes:
        step: the step, e.g. ``"exchange_multisig_keys round 2"`` or ``"sign_multisig"``.
        wallets: which wallets failed (roles, or labels of the clients).
        rpc_error: the wallet-rpc error behind it, or None when an answer failed our checks.
    """

    def __init__(self, step: str, wallets: Sequence[str], reason: RpcError | str) -> None:
        super().__init__(f"multisig step {step!r} failed for {', '.join(wallets)}: {reason}")
        self.step = step
        self.wallets = tuple(wallets)
        self.rpc_error = reason if isinstance(reason, RpcError) else None


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


def public_error(exc: BaseException) -> PublicError:
    """What a caller is told about `exc`; unexpected errors say nothing about internals."""
    match exc:
        case PublicError():
            return exc
        case RpcTimeout():
            return Timeout(f"wallet-rpc did not answer in time ({exc.method})")
        case RpcUnreachable() | RpcAuthError() | NoWalletFile():
            return Unavailable(f"wallet-rpc unavailable ({exc.method}); walletd is restoring it")
        case RpcCallError():
            return WalletError(f"wallet-rpc refused {exc.method}: {exc.rpc_message}")
        case MultisigError():
            return WalletError(str(exc))
        case _:
            return Internal("internal error; see walletd's log")
