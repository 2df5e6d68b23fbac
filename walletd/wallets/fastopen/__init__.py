"""Fast wallet opens: walletd's own wallet-rpc children skip their RSA-4096 key generation.

Most of an `open_wallet`/`create_wallet` (1-2 s of CPU) is one RSA-4096 key that wallet-rpc makes
every time for a TLS context walletd never uses: the multisig messaging transporter's SSL
autodetect (monero-facts.md, "Where the RSA-4096 comes from"). `libwalletd_fastopen.so`, built
from `fastopen.c` next to this file by scripts/setup.sh, is preloaded into the children
(LD_PRELOAD) and answers `RSA_generate_key_ex` for exactly that request (4096 bits, exponent
65537) with a copy of one key made once in the state dir (`KEY_NAME`, 0600 from creation, never
logged); anything else goes to libcrypto's real function. Wallet keys are Monero's own ed25519
keys and never come from RSA. External endpoints are not walletd's processes: never touched.

`prepare` decides at start-up: on unless `monero.fast_open = false` or the library is not built
(then walletd runs as before and says why: `FastOpen.reason`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["KEY_BITS", "KEY_ENV", "KEY_NAME", "LIBRARY", "FastOpen", "ensure_key", "prepare"]

LIBRARY = Path(__file__).resolve().parent / "libwalletd_fastopen.so"
KEY_ENV = "WALLETD_FASTOPEN_KEY"  # read by fastopen.c
KEY_NAME = "fastopen-rsa4096.pem"
KEY_BITS = 4096  # what wallet-rpc asks for (epee's net_ssl.cpp), with exponent 65537
PUBLIC_EXPONENT = 65537


@attrs.frozen
class FastOpen:
    """Whether walletd's children get the library, and if not, why (for the log and health)."""

    enabled: bool
    reason: str = ""  # why off
    library: Path | None = None
    key_file: Path | None = None

    def env(self) -> tuple[tuple[str, str], ...]:
        """The environment entries a child needs (none when off)."""
        if not self.enabled or self.library is None or self.key_file is None:
            return ()
        return (("LD_PRELOAD", str(self.library)), (KEY_ENV, str(self.key_file)))


def _usable_key(path: Path) -> bool:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    return (
        isinstance(key, rsa.RSAPrivateKey)
        and key.key_size == KEY_BITS
        and key.public_key().public_numbers().e == PUBLIC_EXPONENT
    )


def ensure_key(state_dir: Path) -> Path:
    """The key file in `state_dir`, made (0600 from creation, written whole, then renamed into
    place) when missing or not an RSA-4096 private key with exponent 65537. ~0.5-2 s when made."""
    path = state_dir / KEY_NAME
    if _usable_key(path):
        return path
    key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{KEY_NAME}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def prepare(state_dir: Path, *, wanted: bool, library: Path = LIBRARY) -> FastOpen:
    """Decide whether walletd's own children preload the library; make the key if they do."""
    if not wanted:
        return FastOpen(False, "monero.fast_open = false")
    if not library.is_file():
        return FastOpen(False, f"{library.name} not built (run scripts/setup.sh)")
    try:
        key_file = ensure_key(state_dir)
    except OSError as exc:
        return FastOpen(False, f"cannot write {KEY_NAME}: {exc.strerror or exc}")
    return FastOpen(True, library=library, key_file=key_file)
