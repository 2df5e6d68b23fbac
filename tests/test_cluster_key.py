"""`walletd cluster key export|import`: the vault key copied from one host of a cluster to another.

No database is needed: the key never goes there (only its fingerprint, which walletd checks at
start). What an operator checks: the copy is byte for byte the first host's key, mode 0600,
walletd on the second host opens it with the same fingerprint, nothing is ever overwritten, and
the key itself is printed nowhere.
"""

from __future__ import annotations

import io
import secrets
import stat
from pathlib import Path

import pytest

from walletd.cli.cluster_key import export_key, import_key
from walletd.cli.daemon import main
from walletd.errors import KeyRefused
from walletd.state.vault import Vault


def _config(root: Path, name: str) -> Path:
    """A host's config with its own state directory, and [cluster] (no database is reached)."""
    path = root / f"{name}.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{root / name / "state"}"\n'
        f'socket_path = "{root / name / "s.sock"}"\n'
        '[cluster]\ndatabase_url = "postgresql://walletd:secret@db.example:5432/walletd"\n'
        f'host_id = "{name}"\n'
    )
    return path


def _first_host_key(root: Path) -> bytes:
    """h1's key as walletd made it at its first start."""
    state = root / "h1" / "state"
    state.mkdir(parents=True, mode=0o700)
    vault_path = state / "walletd.key"
    Vault.open(vault_path)
    return vault_path.read_bytes()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_exported_to_a_file_and_imported_on_a_new_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exported from h1 into a new 0600 file and imported on h2 (which has no key yet), h2's
    walletd.key is h1's key byte for byte, mode 0600, and opens with the same fingerprint; the
    lines printed name the files and the fingerprint, never the key."""
    key = _first_host_key(tmp_path)
    c1, c2 = _config(tmp_path, "h1"), _config(tmp_path, "h2")
    copy = tmp_path / "key-copy"
    assert main(["--config", str(c1), "cluster", "key", "export", str(copy)]) == 0
    assert copy.read_bytes() == key
    assert _mode(copy) == 0o600
    assert main(["cluster", "key", "import", str(copy), "--config", str(c2)]) == 0
    installed = tmp_path / "h2" / "state" / "walletd.key"
    assert installed.read_bytes() == key
    assert _mode(installed) == 0o600
    assert _mode(installed.parent) == 0o700
    fingerprint = Vault.open(installed).fingerprint()
    assert fingerprint == Vault(key).fingerprint()
    out = capsys.readouterr()
    printed = out.out + out.err
    assert fingerprint[:16] in printed
    assert key.hex() not in printed
    assert "secret" not in printed  # nor the database URL's password
    # Importing the same key again changes nothing and says so.
    assert main(["--config", str(c2), "cluster", "key", "import", str(copy)]) == 0
    assert "already in place" in capsys.readouterr().out


def test_key_through_a_pipe(tmp_path: Path) -> None:
    """`export -` writes the key to a pipe (what `| ssh host2 ... import -` reads), never to a
    terminal; `import -` installs it from standard input."""
    key = _first_host_key(tmp_path)
    pipe = io.BytesIO()
    line = export_key(tmp_path / "h1" / "state", "-", out=pipe)
    assert pipe.getvalue() == key
    assert key.hex() not in line
    import_key(tmp_path / "h2" / "state", "-", inp=io.BytesIO(pipe.getvalue()))
    assert (tmp_path / "h2" / "state" / "walletd.key").read_bytes() == key

    class Terminal(io.BytesIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    with pytest.raises(KeyRefused, match="terminal"):
        export_key(tmp_path / "h1" / "state", "-", out=terminal)
    assert terminal.getvalue() == b""


def test_key_copy_refuses_to_overwrite_or_take_a_bad_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing is overwritten and nothing wrong is installed: export refuses an existing
    target; import refuses a host that already has a different key (left as it was), a key
    file readable by others, and a file that is not a 32-byte key; each exits 1 with one line
    saying why."""
    key = _first_host_key(tmp_path)
    c1, c2 = _config(tmp_path, "h1"), _config(tmp_path, "h2")
    taken = tmp_path / "taken"
    taken.write_bytes(b"keep me")
    assert main(["--config", str(c1), "cluster", "key", "export", str(taken)]) == 1
    assert taken.read_bytes() == b"keep me"
    assert "exists" in capsys.readouterr().err

    own = tmp_path / "h2" / "state"
    own.mkdir(parents=True, mode=0o700)
    (own / "walletd.key").write_bytes(secrets.token_bytes(32))
    (own / "walletd.key").chmod(0o600)
    before = (own / "walletd.key").read_bytes()
    good = tmp_path / "good"
    assert main(["--config", str(c1), "cluster", "key", "export", str(good)]) == 0
    capsys.readouterr()
    assert main(["--config", str(c2), "cluster", "key", "import", str(good)]) == 1
    assert (own / "walletd.key").read_bytes() == before
    assert "another vault key" in capsys.readouterr().err

    c3 = _config(tmp_path, "h3")
    open_copy = tmp_path / "open"
    open_copy.write_bytes(key)
    open_copy.chmod(0o644)
    assert main(["--config", str(c3), "cluster", "key", "import", str(open_copy)]) == 1
    assert "readable by others" in capsys.readouterr().err
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    assert main(["--config", str(c3), "cluster", "key", "import", str(short)]) == 1
    assert "not a vault key" in capsys.readouterr().err
    assert not (tmp_path / "h3" / "state" / "walletd.key").exists()
