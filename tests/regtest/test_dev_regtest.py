"""`walletd dev` on a real regtest chain: the README's walkthrough runs exactly as written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_dev import readme_walkthrough

pytestmark = pytest.mark.regtest

REPO = Path(__file__).parent.parent.parent
AMOUNT = 10**12


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """From the directory `walletd dev` was started in, the README's commands, unchanged, take
    escrow demo1 from creation to a completed release to the sandbox's vendor address, which
    then holds the amount less the fee; the banner names walletctl, the socket and the same
    payout addresses."""
    (tmp_path / ".venv").symlink_to(REPO / ".venv")  # the README runs .venv/bin/walletctl
    stderr = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "walletd", "dev", "--log-format", "json"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
        start_new_session=True,  # its monerod and wallet-rpc children die with the group below
    )
    try:
        deadline = time.monotonic() + 600
        while "sandbox ready" not in (log := (tmp_path / "dev.log").read_text()):
            assert proc.poll() is None, log
            assert time.monotonic() < deadline, log
            time.sleep(0.5)
        banner = log[log.index("walletd dev sandbox ready") :]
        socket = tmp_path / "walletd-dev" / "walletd.sock"
        assert f"socket {socket}" in banner
        assert f"{REPO / '.venv' / 'bin' / 'walletctl'} --socket {socket} status" in banner
        assert '"blocks": 11' in banner
        assert '"blocks": 10' in banner

        lines = readme_walkthrough()
        script = "set -euo pipefail\n" + "".join(f"{line}\necho\n" for line in lines)
        run = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, (run.stdout, run.stderr)
        out = [line for line in run.stdout.splitlines() if line.strip()]
        wallets, created, paid, ready_height, released, done_height, after = (
            json.loads(line) for line in out[:7]
        )
        assert wallets["vendor"]["address"] in banner
        assert wallets["buyer"]["address"] in banner
        assert created["state"] == "awaiting_funding", created
        assert paid["txid"], paid
        assert done_height["height"] == ready_height["height"] + 10
        assert released["state"] == "releasing", released  # it was ready right after the mine
        assert released["payout"]["address"] == wallets["vendor"]["address"]
        assert AMOUNT * 0.99 < after["vendor"]["balance"] < AMOUNT, after
        events = "\n".join(out[7:])
        for kind in ("escrow_created", "funded", "ready", "payout_submitted", "completed"):
            assert kind in events, events
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        stderr.close()
