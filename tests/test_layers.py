"""The architecture's import contracts (pyproject's [tool.importlinter]) hold, and they bite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_layers_hold() -> None:
    """walletd as it is keeps every contract: no layer imports one above it."""
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("state/sqlite_store.py", "walletd.sessions.registry"),  # state knows nothing of sessions
        ("wallets/rpc.py", "walletd.escrows.service"),  # wallets know nothing of escrows
        ("sessions/session.py", "walletd.api.routes"),  # nothing below the API imports it
        ("sessions/handles.py", "walletd.cluster.leases"),  # sessions know no cluster
        ("escrows/transitions/funding.py", "trio"),  # the escrow's rules do no I/O
        ("api/status.py", "walletd.deployment.choose"),  # only the app picks the deployment
    ],
)
def test_a_forbidden_import_breaks_the_build(tmp_path: Path, module: str, forbidden: str) -> None:
    """A copy of walletd with one import across the layers fails lint-imports, naming it."""
    shutil.copytree(ROOT / "walletd", tmp_path / "walletd")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "walletd" / module
    target.write_text(target.read_text() + f"\nimport {forbidden}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert forbidden in result.stdout
