"""Validated identifiers, and the wallet file names walletd derives from them.

An escrow id or a wallet file name from a request is checked here before it goes anywhere near the
file system; walletd never builds a path from raw input.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal, get_args

from walletd.errors import InvalidRequest

__all__ = [
    "ROLES",
    "Role",
    "check_adoptable_wallet_file",
    "check_escrow_id",
    "check_txid",
    "check_wallet_file",
    "wallet_file_for",
]

Role = Literal["buyer", "vendor", "arbiter"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

_ESCROW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_WALLET_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_TXID = re.compile(r"[0-9a-f]{64}")
# The names `wallet_file_for` gives (escrow ids may contain "-": any id, any role).
_WALLETD_FILE = re.compile(rf"escrow-{_ESCROW_ID.pattern}-(?:{'|'.join(ROLES)})")


def check_escrow_id(value: object) -> str:
    """Return `value` if it is a valid escrow id, else raise InvalidRequest."""
    if not isinstance(value, str) or not _ESCROW_ID.fullmatch(value):
        raise InvalidRequest(
            "escrow_id must be 1-64 characters of A-Z a-z 0-9 _ -, starting with a letter or digit"
        )
    return value


def check_txid(value: str) -> str:
    """A transaction id is 64 lower-case hex characters (upper case is folded)."""
    folded = value.lower()
    if not _TXID.fullmatch(folded):
        raise InvalidRequest("txid must be 64 hexadecimal characters")
    return folded


def check_wallet_file(value: object, wallet_dir: Path) -> str:
    """A wallet file named relative to the wallet directory, that exists there with its keys file.

    Only a plain file name is accepted: no directory part, no `..`, no hidden file, no `.keys`.
    """
    if (
        not isinstance(value, str)
        or not _WALLET_FILE.fullmatch(value)
        or ".." in value
        or value.endswith((".keys", ".new", ".address.txt"))
    ):
        raise InvalidRequest(
            "wallet file must be a plain file name in the wallet directory "
            "(letters, digits, _ . -; no path, no .keys suffix)"
        )
    keys = wallet_dir / f"{value}.keys"
    if not keys.is_file() or keys.is_symlink():
        raise InvalidRequest(f"wallet file {value!r}: no such wallet in the wallet directory")
    return value


def check_adoptable_wallet_file(value: object, wallet_dir: Path) -> str:
    """`check_wallet_file`, and not a name walletd gives the wallets it creates.

    Creating escrow Y sets aside whatever files are named `escrow-Y-<role>` (leftovers of a
    creation that crashed): an adopted wallet under such a name would be moved away from under
    its escrow, so such names are walletd's alone."""
    if isinstance(value, str) and _WALLETD_FILE.fullmatch(value):
        raise InvalidRequest(
            f"wallet file {value!r} is named like the wallets walletd creates "
            "(escrow-<id>-<role>); such names are reserved to walletd: rename the wallet "
            "files (and their .keys) to adopt them"
        )
    return check_wallet_file(value, wallet_dir)


def wallet_file_for(escrow_id: str, role: Role) -> str:
    """The file name of a wallet walletd creates for an escrow: derived, never taken from input."""
    check_escrow_id(escrow_id)
    return f"escrow-{escrow_id}-{role}"
