"""walletctl's man page and shell completions are generated from its parser and kept current."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from scripts.walletctl_docs import OUTPUTS, render


def test_committed_files_are_what_the_parser_generates() -> None:
    """docs/walletctl.1 and docs/completion/* equal what scripts/walletctl_docs.py makes from
    walletctl's parser now (run it after changing the command line)."""
    for path, text in render().items():
        assert path.read_text() == text, f"{path} is stale: run scripts/walletctl_docs.py"


def _bash_complete(*words: str) -> list[str]:
    script = (
        f"source {OUTPUTS['bash']}\n"
        f"COMP_WORDS=(walletctl {' '.join(words)} '')\n"
        f"COMP_CWORD={len(words) + 1}\n"
        '_shtab_walletctl walletctl "" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return sorted(out.stdout.split())


def test_bash_completes_commands_and_actions() -> None:
    """Sourcing the bash completion, `walletctl <TAB>` offers the commands and
    `walletctl escrow <TAB>` its actions."""
    assert _bash_complete() == ["escrow", "events", "session", "sessions", "status"]
    assert _bash_complete("escrow") == [
        "balance",
        "create",
        "list",
        "refund",
        "release",
        "show",
        "transfer",
    ]


@pytest.mark.skipif(shutil.which("man") is None, reason="no man here")
def test_man_page_renders_every_command() -> None:
    """`man -l docs/walletctl.1` renders, naming every command and the --socket option."""
    out = subprocess.run(
        ["man", "-l", str(OUTPUTS["man"])],
        capture_output=True,
        text=True,
        check=True,
        env={"MANPAGER": "cat", "MANWIDTH": "100", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    ).stdout
    commands = (
        "status",
        "sessions",
        "escrow show",
        "escrow list",
        "escrow create",
        "escrow release",
    )
    for command in (*commands, "escrow refund", "escrow balance", "session open", "events"):
        assert f"walletctl {command}" in out, out
    assert "--socket" in out
