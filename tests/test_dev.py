"""The dev sandbox's banner and the README's walkthrough are the same commands."""

from __future__ import annotations

import re
from pathlib import Path

from walletd.cli.dev import BLOCKS_TO_COMPLETE, BLOCKS_TO_READY, dev_config, walkthrough

README = Path(__file__).parent.parent / "README.md"


def readme_walkthrough() -> list[str]:
    """The shell block of README's "The dev sandbox" section."""
    section = README.read_text().split("## The dev sandbox", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no walkthrough in the README"
    return block.group(1).splitlines()


def test_readme_walkthrough_is_what_the_banner_prints() -> None:
    """The README shows exactly the banner's walkthrough (default socket, the venv's walletctl):
    the same endpoints, the same blocks to mine, ending with walletctl."""
    lines = readme_walkthrough()
    assert lines == walkthrough("./walletd-dev/walletd.sock", ".venv/bin/walletctl")
    mined = [int(n) for n in re.findall(r'"blocks": (\d+)', "\n".join(lines))]
    assert mined == [BLOCKS_TO_READY, BLOCKS_TO_COMPLETE]
    assert lines[-1].startswith(".venv/bin/walletctl --socket $S")


def test_blocks_to_mine_fit_the_sandbox_confirmations(tmp_path: Path) -> None:
    """Ready needs the payment's block plus the sandbox's required confirmations; a payout
    completes after as many confirmations."""
    config = dev_config(tmp_path, "127.0.0.1:1", tmp_path / "s.sock", "json")
    assert 1 + config.monitor.required_confirmations == BLOCKS_TO_READY
    assert config.monitor.required_confirmations == BLOCKS_TO_COMPLETE
