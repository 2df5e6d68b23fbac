"""Generate walletctl's man page and shell completions from its argparse parser.

    .venv/bin/python scripts/walletctl_docs.py     # rewrites the files below

tests/test_walletctl_docs.py fails when the committed files differ from what this generates, so
a change to walletctl's command line comes with its man page and completions. Needs the dev extra
(argparse-manpage, shtab); walletd itself does not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from unittest import mock

import shtab
from argparse_manpage.manpage import Manpage

from walletd import __version__
from walletd.cli.walletctl import _parser

__all__ = ["OUTPUTS", "render"]

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = {
    "man": ROOT / "docs" / "walletctl.1",
    "bash": ROOT / "docs" / "completion" / "walletctl.bash",
    "zsh": ROOT / "docs" / "completion" / "_walletctl",
}


def render() -> dict[Path, str]:
    """Each output file and its text; the same whatever the environment (no date, the default
    socket not $WALLETD_SOCKET's, a fixed width)."""
    env = {k: v for k, v in os.environ.items() if k != "WALLETD_SOCKET"}
    with mock.patch.dict(os.environ, {**env, "COLUMNS": "100"}, clear=True):
        parser = _parser()
        data = {
            "project_name": "walletd",
            "version": __version__,
            "description": "look at and steer a running walletd",
            "date": f"walletd {__version__}",
            "manual_title": "walletd manual",
        }
        man = str(Manpage(parser, _data=data, format="single-commands-section"))
        return {
            OUTPUTS["man"]: man.rstrip("\n") + "\n",
            OUTPUTS["bash"]: shtab.complete(parser, shell="bash"),  # noqa: S604 - a shell name
            OUTPUTS["zsh"]: shtab.complete(parser, shell="zsh"),  # noqa: S604 - a shell name
        }


def main() -> int:
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
