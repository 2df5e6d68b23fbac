"""Fast wallet opens (`walletd.wallets.fastopen`): the preload library and walletd's use of it.

The library tests run a small C program linked against libcrypto the way monero-wallet-rpc is
(a versioned `RSA_generate_key_ex@OPENSSL_3.0.0` import), under LD_PRELOAD. They skip where the
library or gcc is missing; scripts/setup.sh (so CI) builds the library and installs gcc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.test_children import _proc_file, _running_pool, _settings
from walletd.app import App
from walletd.config import Config, DaemonConfig, MoneroConfig
from walletd.wallets import fastopen

needs_library = pytest.mark.skipif(
    not fastopen.LIBRARY.is_file(), reason="libwalletd_fastopen.so not built (scripts/setup.sh)"
)

PROGRAM = r"""
#define OPENSSL_SUPPRESS_DEPRECATED
#include <stdio.h>
#include <stdlib.h>
#include <openssl/bn.h>
#include <openssl/rsa.h>
/* argv: bits, exponent, calls. Prints "<check> <modulus hex>" per call. */
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    for (int i = 0; i < atoi(argv[3]); i++) {
        RSA *rsa = RSA_new();
        BIGNUM *e = BN_new();
        BN_set_word(e, strtoul(argv[2], NULL, 10));
        if (!RSA_generate_key_ex(rsa, atoi(argv[1]), e, NULL)) return 1;
        const BIGNUM *n;
        RSA_get0_key(rsa, &n, NULL, NULL);
        char *hex = BN_bn2hex(n);
        printf("%d %s\n", RSA_check_key(rsa), hex);
        OPENSSL_free(hex);
        BN_free(e);
        RSA_free(rsa);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not fastopen.LIBRARY.is_file():
        pytest.skip("libwalletd_fastopen.so not built (scripts/setup.sh)")
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    build = tmp_path_factory.mktemp("fastopen-program")
    (build / "gen.c").write_text(PROGRAM)
    subprocess.run(
        ["gcc", "-o", str(build / "gen"), str(build / "gen.c"), "-lcrypto"],
        check=True,
    )
    return build / "gen"


def _generate(
    program: Path, key_file: Path | None, bits: int, e: int = 65537, calls: int = 1
) -> list[int]:
    """`calls` RSA_generate_key_ex moduli from one process, each passing RSA_check_key."""
    env = {"PATH": os.defpath, "LD_PRELOAD": str(fastopen.LIBRARY)}
    if key_file is not None:
        env[fastopen.KEY_ENV] = str(key_file)
    out = subprocess.run(
        [str(program), str(bits), str(e), str(calls)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    moduli = []
    for line in out.splitlines():
        check, hex_n = line.split()
        assert check == "1"
        moduli.append(int(hex_n, 16))
    assert len(moduli) == calls
    return moduli


def _modulus(key_file: Path) -> int:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.public_key().public_numbers().n


def _write_key(path: Path, bits: int, e: int = 65537) -> Path:
    key = rsa.generate_private_key(public_exponent=e, key_size=bits)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="module")
def key_4096(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fastopen.ensure_key(tmp_path_factory.mktemp("fastopen-key"))


def test_key_file_is_private_and_kept(tmp_path: Path) -> None:
    """walletd's key is RSA-4096, e=65537, 0600; made once, kept while usable, remade if not."""
    path = fastopen.ensure_key(tmp_path)
    assert path == tmp_path / fastopen.KEY_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    assert fastopen.ensure_key(tmp_path).read_bytes() == first
    path.write_text("garbage")
    assert fastopen.ensure_key(tmp_path).read_bytes() != first
    assert path.stat().st_mode & 0o777 == 0o600
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_prepare_says_why_it_is_off(tmp_path: Path) -> None:
    """Off by config or when the library is missing (no key made then); on: the child env."""
    off = fastopen.prepare(tmp_path, wanted=False)
    assert (off.enabled, off.reason, off.env()) == (False, "monero.fast_open = false", ())
    missing = fastopen.prepare(tmp_path, wanted=True, library=tmp_path / "nothing.so")
    assert not missing.enabled
    assert "not built" in missing.reason
    assert missing.env() == ()
    assert not (tmp_path / fastopen.KEY_NAME).exists()
    library = tmp_path / "lib.so"
    library.touch()
    on = fastopen.prepare(tmp_path, wanted=True, library=library)
    assert on.enabled
    assert dict(on.env()) == {
        "LD_PRELOAD": str(library),
        fastopen.KEY_ENV: str(tmp_path / fastopen.KEY_NAME),
    }


@needs_library
def test_library_exports_only_rsa_generate_key_ex() -> None:
    """The preload touches one symbol: every other call of a child goes to its own library."""
    if shutil.which("nm") is None:
        pytest.skip("no nm")
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(fastopen.LIBRARY)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [line.split()[-1] for line in out.splitlines()] == ["RSA_generate_key_ex"]


def test_library_serves_the_key_for_its_size_only(program: Path, key_4096: Path) -> None:
    """With the key file: a 4096-bit request gets exactly the file's key (every call, so loaded
    once and copied each time); a 2048-bit request gets a fresh valid key."""
    n = _modulus(key_4096)
    assert _generate(program, key_4096, 4096, calls=2) == [n, n]
    (fresh,) = _generate(program, key_4096, 2048)
    assert fresh != n
    assert fresh.bit_length() == 2048


def test_library_falls_through_without_a_usable_key(program: Path, tmp_path: Path) -> None:
    """No variable, a missing file, an unreadable one, another exponent: libcrypto's own fresh
    keys. (2048-bit files keep the fall-through generations cheap: the size rule is the same.)"""
    key_2048 = _write_key(tmp_path / "k2048.pem", 2048)
    n = _modulus(key_2048)
    assert _generate(program, key_2048, 2048) == [n]  # the control: this file is served
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n")
    for key_file in (None, tmp_path / "missing.pem", garbage):
        a, b = _generate(program, key_file, 2048, calls=2)
        assert len({a, b, n}) == 3
        assert a.bit_length() == 2048
    (other_e,) = _generate(program, key_2048, 2048, e=3)
    assert other_e != n


def test_library_falls_through_for_4096_without_the_file(program: Path, key_4096: Path) -> None:
    """The real request (4096 bits) with the key file gone: a fresh key, not the old one."""
    (fresh,) = _generate(program, key_4096.with_name("gone.pem"), 4096)
    assert fresh != _modulus(key_4096)
    assert fresh.bit_length() == 4096


@needs_library
async def test_children_run_with_the_library(tmp_path: Path) -> None:
    """A child of the pool maps the library and has the key variable; it creates a wallet."""
    on = fastopen.prepare(tmp_path, wanted=True)
    assert on.enabled
    s = _settings(tmp_path, extra_env=on.env())
    with trio.fail_after(60):
        async with _running_pool(s) as pool:
            proc = await pool.acquire()
            assert proc.pid is not None
            maps = _proc_file(proc.pid, "maps").decode()
            assert str(fastopen.LIBRARY) in maps
            environ = _proc_file(proc.pid, "environ").split(b"\0")
            assert f"{fastopen.KEY_ENV}={on.key_file}".encode() in environ
            await proc.rpc.call(
                "create_wallet", {"filename": "w", "password": "", "language": "English"}
            )
            assert (await proc.rpc.call("get_address"))["address"].startswith("4")
            await pool.release(proc)


def test_app_wires_it_to_its_own_children_only(tmp_path: Path) -> None:
    """The app passes the env to its children when on; `fast_open = false` or external
    endpoints leave the children's environment as before."""
    daemon = DaemonConfig(state_dir=tmp_path / "state", socket_path=tmp_path / "s.sock")
    daemon.state_dir.mkdir()
    off = App(Config(daemon=daemon, monero=MoneroConfig(fast_open=False, wallet_dir=tmp_path)))
    assert off.child_settings.extra_env == ()
    assert off.status.fast_open == off.fast_open
    assert off.fast_open.reason == "monero.fast_open = false"
    if fastopen.LIBRARY.is_file():
        on = App(Config(daemon=daemon, monero=MoneroConfig(wallet_dir=tmp_path)))
        assert on.fast_open.enabled
        assert on.child_settings.extra_env == on.fast_open.env()
