"""Helpers for the crash tests: a walletd that can be killed and restarted on the same state,
call bookkeeping, the event-feed and lock checks, and a payee wallet that counts what it received.

`CrashableWalletd` starts a new `WalletdProcess` (new socket, same root, same config sections)
for every run, optionally with failpoints armed, and remembers where the shared log file stood
when the current process started, so that a check reads only the restarted process's lines.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from tests.regtest.walletd_proc import WalletdProcess
from walletd.wallets.rpc import WalletRpc

__all__ = [
    "DOCUMENTED_FAILURES",
    "LOCK_ERRORS",
    "STALLED",
    "CallLog",
    "CrashableWalletd",
    "Figures",
    "all_events",
    "check_event_feed",
    "keys_holders",
    "new_payee_address",
    "received_by",
    "stray_wallet_rpcs",
    "wait_event_after",
]

# Answers a call may get while its wallets are being killed and restored (api.md).
DOCUMENTED_FAILURES = {
    (503, "unavailable"),
    (503, "capacity"),
    (504, "timeout"),
    (502, "wallet_error"),
}
# What a wallet opened twice looks like: wallet-rpc answers -1 "Failed to open wallet" and
# logs that the keys file is locked by another process.
LOCK_ERRORS = ("Failed to open wallet", "opened by another wallet program")
# How walletd's HTTP server answers a request whose handler never finished (504).
STALLED = "no answer within"


@attrs.define
class CallLog:
    """Every call of a stream and how it ended; `lost` = no answer or an undocumented one."""

    outcomes: Counter[str] = attrs.field(factory=Counter)
    lost: list[str] = attrs.field(factory=list)
    cut: int = 0  # in flight when walletd itself was killed: no answer is the expected end

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())

    def record(
        self, what: str, response: httpx.Response | None, error: BaseException | None = None
    ) -> str:
        """Classify one answer: "ok", "documented" or "lost" (also kept in `lost` with why)."""
        if response is None:
            kind = "lost"
            self.lost.append(f"{what}: no answer ({type(error).__name__}: {error})")
        elif response.status_code in (200, 201, 202):
            kind = "ok"
        else:
            kind = "lost"
            try:
                err = response.json()["error"]
                code, message = str(err["code"]), str(err["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "?", ""
            if message.startswith(STALLED):
                # The HTTP layer's safety net, not walletd's answer: the call was stuck inside
                # walletd for the whole request timeout.
                self.lost.append(f"{what}: stalled until the request timeout: {message}")
            elif (response.status_code, code) in DOCUMENTED_FAILURES and message:
                kind = "documented"
            else:
                self.lost.append(f"{what}: {response.status_code} {response.text[:300]}")
        self.outcomes[kind] += 1
        return kind


@attrs.define
class Figures:
    """The module's report: kills, calls (every CallLog handed out), payouts; complete even
    when a test fails half way."""

    counts: Counter[str] = attrs.field(factory=Counter)
    logs: list[CallLog] = attrs.field(factory=list)

    def call_log(self) -> CallLog:
        log = CallLog()
        self.logs.append(log)
        return log

    def summary(self) -> str:
        c = self.counts
        calls = sum(log.calls for log in self.logs)
        lost = sum(len(log.lost) for log in self.logs)
        cut = sum(log.cut for log in self.logs)
        return (
            f"walletd kills {c['walletd_kills']}, wallet-rpc kills {c['child_kills']}, "
            f"calls {calls}, calls lost {lost}, calls cut by a walletd kill {cut}, "
            f"payouts {c['payouts']}, payouts doubled {c['doubled']}"
        )


class CrashableWalletd:
    """One walletd root (wallets, state, log) run by a succession of walletd processes."""

    def __init__(self, root: Path, daemon_address: str, **sections: dict[str, Any]) -> None:
        self.root = root
        self.daemon_address = daemon_address
        self.sections: dict[str, Any] = dict(sections)
        self.proc: WalletdProcess | None = None
        self.log_offset = 0
        self.starts = 0
        self.kills = 0
        self._socket_dirs: list[Path] = []

    @property
    def wallet_dir(self) -> Path:
        return self.root / "wallets"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    async def start(self, failpoints: Sequence[str] = ()) -> WalletdProcess:
        """A new walletd process on this root; failpoints armed only if given."""
        assert self.proc is None or self.proc.proc is None or self.proc.proc.poll() is not None
        env = {"WALLETD_FAILPOINTS": ",".join(failpoints)}
        proc = WalletdProcess(self.root, self.daemon_address, env=env, **self.sections)
        self._socket_dirs.append(proc.socket.parent)
        self.log_offset = proc.log_path.stat().st_size if proc.log_path.exists() else 0
        self.proc = proc
        await trio.to_thread.run_sync(proc.start)
        self.starts += 1
        return proc

    def client(self, timeout: float = 120.0) -> httpx.AsyncClient:
        assert self.proc is not None
        return self.proc.client(timeout=timeout)

    async def kill9(self) -> None:
        """SIGKILL walletd now and wait until it is reaped (returncode -9)."""
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        await self.wait_killed()

    async def wait_killed(self, timeout: float = 30.0) -> None:
        """Wait for walletd to die (a failpoint or our SIGKILL); it must have died by SIGKILL."""
        assert self.proc is not None
        code = await trio.to_thread.run_sync(self.proc.wait, timeout)
        assert code == -signal.SIGKILL, f"walletd exited {code}, not by SIGKILL"
        self.kills += 1

    def new_log(self) -> str:
        """The log lines written since the current process started."""
        assert self.proc is not None
        with self.proc.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode("utf-8", "replace")

    def lock_errors(self) -> list[str]:
        """Lines of the walletd log (every process run on this root so far) and of every child
        log that show a wallet opened twice."""
        assert self.proc is not None
        text = self.proc.log_path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if any(e in line for e in LOCK_ERRORS)]
        logs = self.state_dir / "run" / "logs"
        for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            text = path.read_text(errors="replace")
            lines += [f"{path.name}: {x}" for x in text.splitlines() if LOCK_ERRORS[1] in x]
        return lines

    def close(self) -> None:
        """Stop walletd (SIGTERM) if running, stop any wallet-rpc left on our wallet dir, and
        remove the socket directories."""
        if self.proc is not None:
            self.proc.__exit__(None, None, None)
        for pid in stray_wallet_rpcs(self.wallet_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for path in self._socket_dirs:
            shutil.rmtree(path, ignore_errors=True)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def stray_wallet_rpcs(wallet_dir: Path) -> list[int]:
    """Live monero-wallet-rpc processes serving `wallet_dir` (zombies excluded)."""
    found = []
    wanted = str(wallet_dir)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if not argv or not os.path.basename(argv[0]).startswith("monero-wallet-r"):
            continue
        if any(a == wanted and i > 0 and argv[i - 1] == "--wallet-dir" for i, a in enumerate(argv)):
            try:
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                found.append(int(entry))
    return found


def keys_holders(wallet_dir: Path) -> dict[str, set[int]]:
    """Which processes have each `.keys` file of `wallet_dir` open (wallet-rpc keeps the keys
    file open, and locked, for as long as the wallet is open)."""
    holders: dict[str, set[int]] = {}
    prefix = str(wallet_dir) + "/"
    for pid in stray_wallet_rpcs(wallet_dir):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix) and target.endswith(".keys"):
                holders.setdefault(target.removeprefix(prefix), set()).add(pid)
    return holders


async def all_events(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The whole event feed, page by page."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        r = await client.get("/v1/events", params={"after": after})
        assert r.status_code == 200, r.text
        body = r.json()
        if not body["events"]:
            return events
        events += body["events"]
        after = body["next"]


async def wait_event_after(client: httpx.AsyncClient, seq: int, timeout: float = 30.0) -> None:
    """Long-poll until some event newer than `seq` exists."""
    r = await client.get("/v1/events", params={"after": seq, "timeout": timeout})
    assert r.status_code == 200, r.text
    assert r.json()["events"], f"no event after seq {seq} within {timeout} s"


def check_event_feed(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    """After a restart the feed still starts with what was seen before the kill, its seqs
    strictly increase, and new events got larger seqs than any seen before."""
    seqs = [e["seq"] for e in after]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
    key = [(e["seq"], e["type"], e["escrow_id"]) for e in before]
    assert [(e["seq"], e["type"], e["escrow_id"]) for e in after[: len(before)]] == key
    last_before = before[-1]["seq"] if before else 0
    assert seqs, "the event feed is empty"
    assert seqs[-1] > last_before, f"no event after the restart (last {last_before})"


async def new_payee_address(payee: WalletRpc, label: str) -> tuple[str, int]:
    """A fresh subaddress of the payee wallet: (address, minor index)."""
    answer = await payee.call("create_address", {"account_index": 0, "label": label})
    return str(answer["address"]), int(answer["address_index"])


async def received_by(payee: WalletRpc, indices: Sequence[int]) -> dict[int, list[int]]:
    """Amounts of every incoming transfer, mined or in the pool, to each subaddress index."""
    await payee.call("refresh")
    answer = await payee.call("get_transfers", {"in": True, "pool": True})
    got: dict[int, list[int]] = {i: [] for i in indices}
    for t in [*answer.get("in", []), *answer.get("pool", [])]:
        minor = int(t.get("subaddr_index", {}).get("minor", -1))
        if minor in got:
            got[minor].append(int(t["amount"]))
    return got
