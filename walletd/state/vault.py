"""Wallet passwords: derived for the wallets walletd creates, encrypted for the ones it adopts.

One 32-byte key file (mode 0600, created on first start) is the only secret walletd keeps on disk
beside the wallets. The password of a wallet walletd creates is HMAC-SHA256(key, escrow id, role):
never stored, never logged, the same after a restart. The password of an adopted wallet is kept in
the state database encrypted with AES-GCM under a key derived from the same file, bound to the
escrow id and role so a ciphertext cannot be moved to another wallet.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from walletd.errors import VaultError

__all__ = ["Vault", "VaultError"]

KEY_BYTES = 32


class Vault:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise VaultError("vault key must be 32 bytes")
        self._password_key = hmac.digest(key, b"walletd wallet passwords v1", hashlib.sha256)
        self._aead = AESGCM(hmac.digest(key, b"walletd adopted passwords v1", hashlib.sha256))

    def __repr__(self) -> str:
        return "Vault(***)"

    @classmethod
    def open(cls, path: Path) -> Vault:
        """Load the key file, creating it with mode 0600 if it does not exist yet."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
        st = path.stat()
        if st.st_mode & 0o077:
            raise VaultError(f"{path}: key file must be mode 0600, is {st.st_mode & 0o777:04o}")
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise VaultError(f"{path}: key file has {len(key)} bytes, expected {KEY_BYTES}")
        return cls(key)

    def derived_password(self, escrow_id: str, role: str) -> str:
        """The password of a wallet walletd created for (escrow_id, role)."""
        msg = f"{escrow_id}\0{role}".encode()
        return hmac.digest(self._password_key, msg, hashlib.sha256).hex()

    def mac(self, data: bytes) -> str:
        """A keyed digest: compares requests without keeping (or hashing guessably) passwords."""
        return hmac.digest(self._password_key, b"request\0" + data, hashlib.sha256).hex()

    def fingerprint(self) -> str:
        """A keyed digest of a constant: equal for equal keys, and says nothing of the key. The
        hosts of a cluster compare theirs, since they must share one key file."""
        return hmac.digest(
            self._password_key, b"walletd vault fingerprint v1", hashlib.sha256
        ).hex()

    def seal(self, escrow_id: str, role: str, password: str) -> str:
        """Encrypt an adopted wallet's password for the state database."""
        nonce = secrets.token_bytes(12)
        aad = f"{escrow_id}\0{role}".encode()
        blob = nonce + self._aead.encrypt(nonce, password.encode(), aad)
        return base64.b64encode(blob).decode()

    def unseal(self, escrow_id: str, role: str, sealed: str) -> str:
        """Decrypt what `seal` made for the same (escrow_id, role)."""
        try:
            blob = base64.b64decode(sealed, validate=True)
            aad = f"{escrow_id}\0{role}".encode()
            return self._aead.decrypt(blob[:12], blob[12:], aad).decode()
        except Exception as exc:
            raise VaultError(f"password of {escrow_id}/{role} does not decrypt") from exc
