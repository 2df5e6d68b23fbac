"""`walletd cluster key export|import FILE`: the vault key, copied to a new host of a cluster.

Every host of a cluster must have the same `state_dir/walletd.key` (the wallets' passwords derive
from it; walletd refuses to start on a key whose fingerprint is not the cluster's). The first host
makes it at its first start; before a second host starts, its key is copied there:

    walletd --config C cluster key export - | ssh host2 walletd --config C cluster key import -

`export` writes the key into a new file (mode 0600, never over an existing one) or to standard
output when that is not a terminal (a pipe to the other host); `import` checks it (32 bytes),
refuses to replace a different key this host already has (its escrows would become unreadable),
and writes it as `walletd.key`, 0600, atomically. Neither prints or logs the key: they print a
line naming the file and the key's fingerprint (a keyed digest that says nothing of the key,
the one the cluster database keeps). Neither needs the database or a running walletd.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import BinaryIO

from walletd.config import Config
from walletd.errors import KeyRefused, VaultError
from walletd.state.vault import KEY_BYTES, Vault

__all__ = ["add_key_parser", "export_key", "import_key", "run_key"]

KEY_FILE = "walletd.key"


def add_key_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = actions.add_parser(
        "key", help="copy the vault key (state_dir/walletd.key) to another host of the cluster"
    )
    ops = key.add_subparsers(dest="key_command", required=True)
    export = ops.add_parser("export", help="write this host's vault key into a new 0600 file")
    export.add_argument("file", help="a new file, or - for standard output (not a terminal)")
    imp = ops.add_parser("import", help="install a vault key exported from a host of the cluster")
    imp.add_argument("file", help="the exported key file, or - for standard input")
    for p in (export, imp):
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML configuration")


def _short(vault: Vault) -> str:
    return vault.fingerprint()[:16]


def _read_key(path: Path) -> bytes:
    """The key file's bytes, checked as walletd checks it (0600, 32 bytes); never created."""
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except FileNotFoundError:
        raise KeyRefused(f"{path}: no vault key (walletd makes it at its first start)") from None
    if mode & 0o077:
        raise KeyRefused(f"{path}: key file must be mode 0600, is {mode & 0o777:04o}")
    if len(key) != KEY_BYTES:
        raise KeyRefused(f"{path}: key file has {len(key)} bytes, expected {KEY_BYTES}")
    return key


def export_key(state_dir: Path, target: str, out: BinaryIO | None = None) -> str:
    """Write the key to `target` (a new file, 0600) or `out` for "-"; returns the summary."""
    key = _read_key(state_dir / KEY_FILE)
    vault = Vault(key)
    if target == "-":
        stream = out if out is not None else sys.stdout.buffer
        if stream.isatty():
            raise KeyRefused("will not write the key to a terminal: give a file or a pipe")
        stream.write(key)
        stream.flush()
        return f"vault key exported to standard output (fingerprint {_short(vault)})"
    path = Path(target)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyRefused(f"{path}: exists; the key is written only into a new file") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return f"vault key exported to {path} (mode 0600, fingerprint {_short(vault)})"


def import_key(state_dir: Path, source: str, inp: BinaryIO | None = None) -> str:
    """Install the key read from `source` (or `inp` for "-") as state_dir/walletd.key."""
    if source == "-":
        key = (inp if inp is not None else sys.stdin.buffer).read(KEY_BYTES + 1)
    else:
        path = Path(source)
        try:
            if path.stat().st_mode & 0o077:
                raise KeyRefused(f"{path}: readable by others; keep the key file 0600")
            key = path.read_bytes()
        except FileNotFoundError:
            raise KeyRefused(f"{path}: no such file") from None
    if len(key) != KEY_BYTES:
        raise KeyRefused(
            f"not a vault key: {len(key) if len(key) <= KEY_BYTES else 'more than 32'} bytes,"
            f" expected {KEY_BYTES} (give the file `walletd cluster key export` wrote)"
        )
    vault = Vault(key)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = state_dir / KEY_FILE
    if target.exists():
        if _read_key(target) == key:
            return f"vault key already in place: {target} (fingerprint {_short(vault)})"
        raise KeyRefused(
            f"{target}: this host already has another vault key; its escrows' wallets open only"
            " with it. Remove it first only if this host never held an escrow of its own"
        )
    tmp = state_dir / f".{KEY_FILE}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, target)  # never over a key that appeared meanwhile (walletd started)
    except FileExistsError:
        raise KeyRefused(f"{target}: appeared meanwhile (walletd started?); not replaced") from None
    finally:
        tmp.unlink(missing_ok=True)
    return f"vault key imported to {target} (mode 0600, fingerprint {_short(vault)})"


def run_key(args: argparse.Namespace, config: Config) -> int:
    """Exit codes: 0 done; 1 refused (one line says why)."""
    state_dir = config.daemon.state_dir
    try:
        if args.key_command == "export":
            line = export_key(state_dir, args.file)
        else:
            line = import_key(state_dir, args.file)
    except (KeyRefused, VaultError, OSError) as exc:
        print(f"walletd: cluster key {args.key_command}: {exc}", file=sys.stderr)
        return 1
    print(line, file=sys.stderr if args.file == "-" else sys.stdout)
    return 0
