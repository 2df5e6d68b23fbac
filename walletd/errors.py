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
    │   │   ├── PayoutChanged         the recorded payout moved meanwhile: nothing written
    │   │   └── PayoutRefused         a proposal is not the recorded payout: nothing signed
    │   ├── NotReady                  the escrow is not there yet (funding, confirmations)
    │   ├── TooLarge                  the request exceeds a size limit
    │   ├── Capacity                  no session slot could be freed in time
    │   ├── Unavailable               monerod or wallet-rpc unreachable
    │   │   ├── SessionFailed         a session gave up (restart limit, wrong wallet)
    │   │   │   └── LeaseLost         (cluster) a wallet-file save was fenced: the session stops
    │   │   ├── OwnedElsewhere        (cluster) another live host holds the escrow's lease
    │   │   ├── OwnerDidNotAnswer     (cluster) a forwarded request was not taken: it never ran
    │   │   ├── ChildStartError       monero-wallet-rpc could not be started
    │   │   ├── WalletFilesMissing    a wallet's files are not on disk after a store
    │   │   └── StoreUnavailable      the state database refused a read or write
    │   │       ├── ClusterUnavailable  (cluster) the cluster database failed or is unreachable
    │   │       └── Fenced            (cluster) a write from a host whose lease is stale
    │   ├── WalletError               wallet-rpc refused; the message says why
    │   └── Timeout                   wallet-rpc did not answer in time
    │       └── ForwardOutcomeUnknown  (cluster) a forwarded request was taken, not answered
    │           └── OwnerGone         (cluster) ... and its host lost the escrow meanwhile
    ├── SessionClosed                 a session stopped before taking a request: open a new one
    ├── ClientGone                    an HTTP client went away or did not read its answer in time
    ├── ConfigError                   start-up stops; the message names the key
    ├── StateDirBusy                  another process holds the state directory's lock
    ├── InheritedSocketError          the socket systemd passed is not safe to serve on
    ├── VaultError                    the vault key is missing or unfit, or a ciphertext is bad
    ├── KeyRefused                    `walletd key` copied no key; the message says why
    ├── ImportRefused                 (cluster) wallet files to import failed their checks
    ├── ExportRefused                 (cluster) an export would write into an existing directory
    ├── MultisigError                 a step of the multisig recipe failed (wallets.multisig)
    │   ├── MultisigSetupError        creating the wallets or making them a 2-of-3 multisig
    │   └── MultisigSpendError        syncing, proposing, co-signing or submitting a spend
    └── RpcError                      talking to monerod or a monero-wallet-rpc
        ├── RpcUnreachable            connection refused/reset, process gone
        ├── RpcTimeout                no answer within the call's timeout
        ├── RpcAuthError              HTTP 401: not the process we started (port reused?)
        └── RpcCallError              a JSON-RPC error object: keeps code and message
            ├── NoWalletFile          -13 "No wallet file": the process lost its wallet
            ├── DamagedWallet         the wallet in wallet-rpc's memory or cache file is damaged
            ├── HeldElsewhere         -1: opened, given up: another process holds it too
            └── NotRepaired           -1: the open failed and nothing was repaired

    ValueError
    └── IllegalMove                   a state change the escrow's states forbid: a bug

`IllegalMove` is not a `WalletdError` on purpose: it is a bug, never an expected failure, so no
handler of expected errors (`except WalletdError`, which logs and goes on) may swallow it.

Not in the tree, and why: exceptions that are one module's private control flow and never leave
it (`walletd.api.connection`'s `_Abort`; `walletd.wallets.children`'s
`_ExitedEarly`, `_ForeignListener`, each turned into a `ChildStartError` or a retry there);
walletctl's `CtlError`, how a separate client program (it talks to walletd over HTTP) ends
with a message and an exit code, not an error of walletd's; and the test doubles' own
(`walletd.testing`: `RpcFault`, `ProcessGone` are the fakes' wire, turned into the real errors
by their transports; `MonerodError` is the regtest harness's).

`public_error` says what a caller is told about any error (internal errors become public ones).
Which HTTP status and API code each public error is answered with is the business of the edge,
`walletd.api.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

__all__ = [
    "OPEN_FAILED",
    "Capacity",
    "ChildStartError",
    "ClientGone",
    "ClusterUnavailable",
    "ConfigError",
    "Conflict",
    "DamagedWallet",
    "ExportRefused",
    "Fenced",
    "Forbidden",
    "ForwardOutcomeUnknown",
    "HeldElsewhere",
    "IllegalMove",
    "ImportRefused",
    "InheritedSocketError",
    "Internal",
    "InvalidRequest",
    "KeyRefused",
    "LeaseLost",
    "MethodNotAllowed",
    "MultisigError",
    "MultisigSetupError",
    "MultisigSpendError",
    "NoWalletFile",
    "NotFound",
    "NotReady",
    "NotRepaired",
    "OwnedElsewhere",
    "OwnerDidNotAnswer",
    "OwnerGone",
    "PayoutChanged",
    "PayoutRefused",
    "PublicError",
    "RpcAuthError",
    "RpcCallError",
    "RpcError",
    "RpcTimeout",
    "RpcUnreachable",
    "SessionClosed",
    "SessionFailed",
    "StateDirBusy",
    "StoreUnavailable",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "VaultError",
    "WalletError",
    "WalletFilesMissing",
    "WalletdError",
    "first_error",
    "public_error",
]

OPEN_FAILED = -1  # wallet-rpc's code for an open_wallet that failed (any reason: see repair)


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


class PayoutChanged(Conflict):
    """A payout change found the recorded payout not where it expected (`ExpectedPayout`):
    another writer moved it meanwhile. Nothing was written; the writer must read it again."""


class PayoutRefused(Conflict):
    """The proposed payout is not the recorded one: nothing is signed (409 with the reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"payout refused before signing: {reason}")
        self.reason = reason


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


class LeaseLost(SessionFailed):
    """A wallet-file save was refused (`Fenced`): this host's lease on the escrow is stale.

    Another host may own the escrow and open its wallets now, so this session must not touch
    them again: it fails as a unit (SessionFailed), answering the call in hand with this error,
    and closes its wallets. Closing stores them locally, which is harmless: local files are a
    cache, and the new owner restores the database's version before it opens."""


class OwnedElsewhere(Unavailable):
    """In a cluster, another live host holds the escrow's lease: only it may open the escrow's
    wallets or write about it. The API forwards the request there; others retry later."""

    def __init__(self, message: str, host_id: str = "") -> None:
        super().__init__(message)
        self.host_id = host_id

    def copy(self) -> Self:
        return type(self)(self.message, self.host_id)


class OwnerDidNotAnswer(Unavailable):
    """The owner host did not take the forwarded request in time; it was withdrawn and will
    never run, so the caller may safely try again."""


class ChildStartError(Unavailable):
    """monero-wallet-rpc could not be started; `detail` says why, with its last output lines."""

    def __init__(self, detail: str) -> None:
        super().__init__("monero-wallet-rpc could not be started")
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message}: {self.detail}"


class WalletFilesMissing(Unavailable):
    """A wallet's `.keys` or cache file is not in the wallet directory after a store."""


class StoreUnavailable(Unavailable):
    """The state database refused a read or write (disk full, I/O error, locked too long)."""


class ClusterUnavailable(StoreUnavailable):
    """The cluster database cannot be reached or failed a statement for a reason not our own
    (a `StoreUnavailable`: whoever handles the database failing handles this)."""


class Fenced(StoreUnavailable):
    """A write about an escrow came from a host whose lease is stale (expired or superseded).

    A `StoreUnavailable` (503): the write was refused and nothing changed; the request may
    succeed later, on the escrow's current owner, and background tasks skip it as they skip a
    database failure."""


class WalletError(PublicError):
    pass


class Timeout(PublicError):
    pass


class ForwardOutcomeUnknown(Timeout):
    """The owner host took the forwarded request but did not answer in time: it may have run
    (or be running). Answered like a wallet-rpc timeout (504 `timeout`)."""


class OwnerGone(ForwardOutcomeUnknown):
    """The owner host took the forwarded request and then lost the escrow (died, paused past
    its lease, fenced): no answer will come. It may have run; a read may simply be run again
    where the escrow is now."""


class SessionClosed(WalletdError):
    """The session stopped before it could take the request; the caller may open a new one."""


class ClientGone(WalletdError):
    """An HTTP client closed its connection mid-request or did not read its answer in time:
    the server drops the connection (nobody is left to answer)."""


class ConfigError(WalletdError):
    """The configuration cannot be used; the message names the key."""


class StateDirBusy(WalletdError):
    """Another process holds the state directory's lock."""


class InheritedSocketError(WalletdError):
    """The socket systemd passed is not one walletd can serve on safely."""


class VaultError(WalletdError):
    """The key file is missing, unreadable, too open, or a ciphertext does not decrypt."""


class KeyRefused(WalletdError):
    """`walletd key`: the key was not copied; the message says why (never the key itself)."""


class ImportRefused(WalletdError):
    """An export directory failed its checks (manifest, digests): nothing was imported."""


class ExportRefused(WalletdError):
    """The export's target exists already: an export never writes into an existing directory."""


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


class HeldElsewhere(RpcCallError):
    """An open that succeeded but was given up: our wallet-rpc is not the keys-file lock's only
    holder (walletd.wallets.keys_lock). Still the open's -1, worded as the repairer words a
    wallet held by another process, so callers explain it the same way."""

    def __init__(self, reason: str) -> None:
        super().__init__("open_wallet", OPEN_FAILED, reason)


class NotRepaired(RpcCallError):
    """The open failed (-1) and nothing was repaired: the reason says why (held elsewhere, no
    damage proven, no backup checked out). Still the open's -1, so callers that explain a
    failed open (adoption: a missing file, a wrong password, a wallet open elsewhere) do."""

    def __init__(self, reason: str) -> None:
        super().__init__("open_wallet", OPEN_FAILED, reason)


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


class MultisigSetupError(MultisigError):
    """Creating the three wallets or making them a 2-of-3 multisig failed."""


class MultisigSpendError(MultisigError):
    """Syncing multisig info, proposing, co-signing or submitting a spend failed."""


class IllegalMove(ValueError):
    """A state change the escrow's states do not allow: a bug, never a client's mistake (not a
    `WalletdError`: see the module doc)."""


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
