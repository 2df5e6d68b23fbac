"""The whole benchmark, in the order that lets one regtest world serve every item.

1. Regtest: monerod, six wallet-rpc processes, a miner; ready multisig sets (escrow `a`, the
   release escrows for walletd and for the old way, and one set per warm session);
   one transaction funds `a` and the release escrows, and 12 blocks unlock it.
2. walletd #1 (real children): `a` adopted -> items 1, 2, 3 (with one more wallet-rpc, started
   with the fast-open preload, for the plain vs fast `open_wallet` row); escrows created through
   walletd -> item 3c; release escrows adopted -> item 4;
   10 escrows adopted -> item 6 (no session, 10 sessions), then item 5 and, once walletd #1
   has stopped, item 7 (walletd's App in this process on the same 10 escrows).
   For item 5, walletd #2 runs alongside on instant fake wallet-rpc endpoints (another
   process), and the load windows alternate between the two.
3. walletd #3 with 1,000 registered escrows -> item 6's last figure.
4. Item 8, the cluster: a private PostgreSQL, instant fake wallet-rpc endpoints, a single-host
   walletd and three cluster hosts (`items/cluster.py`); only the regtest monerod is shared.
   `--only cluster` runs it alone, on a monerod of its own.
5. Item 9, payouts under cap pressure: walletd's App in this process on fake wallet-rpc and a
   fake chain (`items/payouts.py`), nothing shared; `--only payouts` runs it alone.
Every process is stopped on the way out, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from bench.aio import in_batches
from bench.daemon import XMR, BenchWalletd, adopt_body, wait_escrows, wait_exchanged
from bench.env import PASSWORD, Regtest, copy_wallet, move_set, start_regtest
from bench.items.cluster import run_cluster
from bench.items.create import CreateSetup, run_create
from bench.items.load import LoadLevel, Subject, load_result, run_paired
from bench.items.memory import MemorySnapshot, many_escrows, memory_result, snapshot
from bench.items.monitor import run_monitor
from bench.items.payouts import run_payouts
from bench.items.reads import ReadsSetup, run_reads
from bench.items.release import ReleaseSetup, run_release
from bench.items.session_open import OpenSetup, run_open
from bench.plan import Plan
from bench.procs import die_with_parent
from bench.report import ItemResult
from walletd.escrows.model import Payout, PayoutKind, PayoutPhase
from walletd.ids import ROLES, Role
from walletd.state.sqlite_store import Store
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import MultisigSet, WalletRpcProcess
from walletd.wallets import fastopen

__all__ = ["ITEMS", "Run"]

ITEMS = ("cluster", "payouts")  # what `--only` can select

REPO = Path(__file__).resolve().parents[1]
# Poll fast so adopted escrows are checked (and become ready) within a second or so; a cycle
# without a new block makes no wallet-rpc call, so this adds no load to the figures.
MONITOR = {"poll_interval": 1.0, "height_check": 0.25}
FAKE_USER = "bench"
FAST_COPY = "fast-buyer"  # the byte copy of escrow a's buyer wallet the fast-open process opens


class Run:
    def __init__(self, root: Path, plan: Plan) -> None:
        self.root = root
        self.plan = plan
        self.items: list[ItemResult] = []
        self.phases: dict[str, float] = {}
        self.payout_template: Payout | None = None
        self._empty: MemorySnapshot | None = None  # walletd #1 just started
        self._warm: MemorySnapshot | None = None  # walletd #1 with the warm sessions
        self._real_levels: list[LoadLevel] = []
        self._fake_levels: list[LoadLevel] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - started, 1)

    def all(self, stack: contextlib.ExitStack) -> None:
        plan = self.plan
        with self.phase("regtest: monerod, wallet-rpc processes, miner"):
            reg = start_regtest(stack, self.root / "regtest")
        n_rel = plan.releases
        n_sets = 1 + 2 * n_rel + plan.sessions
        with self.phase(f"{n_sets} multisig sets"):
            sets = reg.make_sets(n_sets)
        reg.shrink_pool(3)
        a_set = sets[0]
        releases, old_releases = sets[1 : 1 + n_rel], sets[1 + n_rel : 1 + 2 * n_rel]
        warm = sets[1 + 2 * n_rel :]
        with self.phase("funding escrows"):
            funded = [a_set, *releases, *old_releases]
            txid = reg.fund([s.address for s in funded], XMR)
        sessions = self._walletd_real(stack, reg, a_set, releases, old_releases, warm, txid)
        with self.phase("item 7: monitor cycles (walletd App in-process)"):
            self.items.append(
                run_monitor(
                    self.root / "inproc",
                    reg.monerod.daemon_address,
                    self.root / "walletd" / "wallets",
                    sessions,
                    plan,
                    reg.miner.address,
                )
            )
        with self.phase(f"item 6: {plan.escrows} registered escrows"):
            many = many_escrows(
                self.root / "walletd-many",
                reg.monerod.daemon_address,
                plan.escrows,
                self.payout_template or _synthetic_payout(),
            )
        self.items.append(load_result(self._fake_levels, self._real_levels, len(sessions)))
        assert self._empty is not None
        assert self._warm is not None
        self.items.append(memory_result(self._empty, self._warm, many, len(sessions), plan.escrows))
        self._cluster(stack, reg.monerod.daemon_address)
        self._payouts()
        self.items.sort(key=lambda item: item.key)

    def only(self, stack: contextlib.ExitStack, names: list[str]) -> None:
        """The selected items alone (`--only`), each with just what it needs."""
        if "cluster" in names:
            with self.phase("monerod (regtest, for the monitor's height checks)"):
                monerod = stack.enter_context(MonerodProcess(self.root / "monerod"))
            self._cluster(stack, monerod.daemon_address)
        if "payouts" in names:
            self._payouts()
        self.items.sort(key=lambda item: item.key)

    def _payouts(self) -> None:
        with self.phase("item 9: payouts under cap pressure (in-process, fake wallet-rpc)"):
            self.items.append(run_payouts(self.root / "payouts"))

    def _cluster(self, stack: contextlib.ExitStack, daemon_address: str) -> None:
        with self.phase("item 8: cluster (PostgreSQL, 3 hosts): reads, failover"):
            self.items += run_cluster(stack, self.root / "cluster", daemon_address, self.plan)

    # ---- walletd on real wallet-rpc children -----------------------------------------------------

    def _walletd_real(
        self,
        stack: contextlib.ExitStack,
        reg: Regtest,
        a_set: MultisigSet,
        releases: list[MultisigSet],
        old_releases: list[MultisigSet],
        warm: list[MultisigSet],
        txid: str,
    ) -> list[MultisigSet]:
        """Items 1-4, 5 on real wallet-rpc, 6 without and with sessions; returns the sets of
        the warm sessions (their files stay in walletd #1's wallet dir)."""
        n = len(warm)
        daemon = BenchWalletd(
            self.root / "walletd",
            reg.monerod.daemon_address,
            sessions={"max_active": n + 2},
            monitor=MONITOR,
        )
        copies = {r: f"copy-{r}" for r in ROLES}
        for role in ROLES:
            copy_wallet(reg.direct_dir, a_set.files[role], reg.direct_dir, copies[role])
        copy_wallet(reg.direct_dir, a_set.files["buyer"], reg.direct_dir, "floor-buyer")
        copy_wallet(reg.direct_dir, a_set.files["buyer"], reg.direct_dir, FAST_COPY)
        fast = self._start_fast(stack, reg)
        # Distinct sets for the warm sessions: walletd refuses byte copies of one set (the same
        # multisig address twice is the same escrow's money).
        for s in [a_set, *releases, *warm]:
            move_set(s, reg.direct_dir, daemon.wallet_dir)
        sessions = warm
        with self.phase("walletd #1 start (real wallet-rpc children)"):
            stack.enter_context(daemon)
            time.sleep(1.0)
        self._empty = snapshot(daemon.pid)
        trio.run(
            self._real_items,
            daemon,
            reg,
            a_set,
            releases,
            old_releases,
            sessions,
            txid,
            copies,
            fast,
        )
        fast.stop()  # its item is over: it would only add noise
        self._warm = snapshot(daemon.pid)
        real = Subject(
            "real",
            daemon.socket,
            [f"/v1/escrows/s{i}/balance" for i in range(n)],
            lambda: {"walletd": [daemon.pid], "wallet-rpc children": daemon.children()},
        )
        with contextlib.ExitStack() as fake_stack:
            fake = self._start_fake(fake_stack, reg.monerod.daemon_address)
            with self.phase("item 5: load, walletd on fake and on real wallet-rpc"):
                self._fake_levels, self._real_levels = run_paired(
                    fake, real, self.root / "load", self.plan
                )
        with self.phase("walletd #1 stop"):
            daemon.stop()
        store = Store(daemon.state_dir / "walletd.sqlite3")
        try:
            rec = store.get_escrow("r0")
            self.payout_template = rec.payout if rec else None
        finally:
            store.close()
        return sessions

    async def _real_items(
        self,
        daemon: BenchWalletd,
        reg: Regtest,
        a_set: MultisigSet,
        releases: list[MultisigSet],
        old_releases: list[MultisigSet],
        sessions: list[MultisigSet],
        txid: str,
        copies: dict[Role, str],
        fast: WalletRpcProcess,
    ) -> None:
        plan = self.plan
        rpcs = {role: reg.pool[i].client() for i, role in enumerate(ROLES)}
        fast_rpc = fast.client()
        try:
            async with daemon.client() as api:
                with self.phase("adopting escrow a"):
                    await _adopt(api, "a", a_set)
                    await wait_escrows(api, ["a"], state="ready")
                    await wait_exchanged(api, ["a"])  # the monitor's work on it is done
                with self.phase("items 1, 2: balance and confirmation checks"):
                    setup = ReadsSetup(
                        api,
                        "a",
                        txid,
                        rpcs["buyer"],
                        rpcs["vendor"],
                        copies["buyer"],
                        "floor-buyer",
                        PASSWORD,
                    )
                    self.items += await run_reads(setup, plan)
                with self.phase("item 3: session opens, open_wallet plain and fast"):
                    open_setup = OpenSetup(
                        api,
                        "a",
                        rpcs,
                        copies,
                        PASSWORD,
                        daemon.pid,
                        _pid(reg, 0),
                        fast_rpc,
                        _proc_pid(fast),
                        FAST_COPY,
                    )
                    self.items += await run_open(open_setup, plan)
                await _close(api, ["a"])
                with self.phase(f"item 3c: {plan.creations} escrow creations"):
                    create = CreateSetup(api, "c", XMR, daemon.pid)
                    result, _created = await run_create(create, plan)
                    self.items.append(result)
                ids = [f"r{i}" for i in range(len(releases))]
                with self.phase("adopting release escrows"):
                    await in_batches(
                        [partial(_adopt, api, i, s) for i, s in zip(ids, releases, strict=True)]
                    )
                    await wait_escrows(api, ids, state="ready")
                with self.phase("item 4: releases"):
                    rel = ReleaseSetup(
                        api, ids, old_releases, rpcs["vendor"], rpcs["arbiter"], reg.miner.address
                    )
                    self.items.append(await run_release(rel, plan))
                await _close(api, ids)
                ids = [f"s{i}" for i in range(len(sessions))]
                with self.phase(f"adopting {len(ids)} escrows for warm sessions"):
                    await in_batches(
                        [partial(_adopt, api, i, s) for i, s in zip(ids, sessions, strict=True)]
                    )
                    await wait_escrows(api, ids)  # the monitor's first check is done
                    await wait_exchanged(api, ids)  # and its multisig info pre-exchange
                active = (await api.get("/v1/stats")).json()["active_sessions"]
                if active != len(ids):
                    raise RuntimeError(f"{active} sessions open, expected {len(ids)}")
        finally:
            with trio.CancelScope(shield=True):
                for rpc in [*rpcs.values(), fast_rpc]:
                    await rpc.aclose()

    def _start_fast(self, stack: contextlib.ExitStack, reg: Regtest) -> WalletRpcProcess:
        """A wallet-rpc on `direct_dir` like the pool's, but with walletd's fast-open preload."""
        key_dir = self.root / "fastopen"
        key_dir.mkdir(mode=0o700, exist_ok=True)
        fo = fastopen.prepare(key_dir, wanted=True)
        if not fo.enabled:
            raise RuntimeError(f"fast open unavailable: {fo.reason}")
        proc = stack.enter_context(
            WalletRpcProcess(
                wallet_dir=reg.direct_dir,
                work_dir=self.root / "regtest" / "wallet-rpc-fast",
                daemon_address=reg.monerod.daemon_address,
                extra_env=fo.env(),
            )
        )
        proc.wait_ready()
        return proc

    # ---- walletd on instant fake wallet-rpc endpoints --------------------------------------------

    def _start_fake(self, stack: contextlib.ExitStack, daemon_address: str) -> Subject:
        """walletd #2 on instant fake wallet-rpc endpoints, with its escrows adopted."""
        n = self.plan.sessions
        info_file = self.root / "fake-server.json"
        with self.phase("fake wallet-rpc server + walletd #2"):
            args = ["--sets", str(n), "--endpoints", str(3 * n), "--out", str(info_file)]
            server = subprocess.Popen(
                [sys.executable, "-m", "bench.fake_server", *args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(),
            )
            stack.callback(_stop, server)
            info = _wait_json(info_file, server)
            endpoints = [
                {"url": f"http://127.0.0.1:{port}", "user": FAKE_USER, "password": FAKE_USER}
                for port in info["ports"]
            ]
            daemon = BenchWalletd(
                self.root / "walletd-fake",
                daemon_address,
                monero={"wallet_rpc_endpoints": endpoints},
                sessions={"max_active": n},
                monitor=MONITOR,
            )
            # walletd checks that an adopted wallet's .keys file exists; the fake's are in memory.
            for s in info["sets"]:
                for name in s["files"].values():
                    (daemon.wallet_dir / f"{name}.keys").write_bytes(b"fake")
            stack.enter_context(daemon)
            sets = [
                MultisigSet(files=s["files"], password=s["password"], address=s["address"])
                for s in info["sets"]
            ]
            trio.run(_adopt_all, daemon, sets)
        pids = {"walletd": [daemon.pid], "fake wallet-rpc server": [int(info["pid"])]}
        return Subject(
            "fake", daemon.socket, [f"/v1/escrows/f{i}/balance" for i in range(n)], lambda: pids
        )

    def meta(self, started: float) -> dict[str, Any]:
        return {
            "quick": self.plan.quick,
            "plan": attrs.asdict(self.plan),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "total_seconds": round(time.time() - started, 1),
            "phases_seconds": self.phases,
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "python": platform.python_version(),
            "wallet_rpc": _version("monero-wallet-rpc"),
        }


def _pid(reg: Regtest, index: int) -> int:
    pid = reg.pool[index].pid
    if pid is None:
        raise RuntimeError(f"wallet-rpc #{index} is not running")
    return pid


def _proc_pid(proc: WalletRpcProcess) -> int:
    if proc.pid is None:
        raise RuntimeError(f"{proc!r} is not running")
    return proc.pid


async def _adopt(api: httpx.AsyncClient, escrow_id: str, s: MultisigSet) -> None:
    r = await api.post("/v1/escrows", json=adopt_body(escrow_id, s.files, s.password))
    if r.status_code not in (200, 201):
        raise RuntimeError(f"adopting {escrow_id}: {r.status_code} {r.text}")


async def _close(api: httpx.AsyncClient, ids: list[str]) -> None:
    for escrow_id in ids:
        r = await api.delete(f"/v1/escrows/{escrow_id}/session")
        if r.status_code != 200:
            raise RuntimeError(f"closing {escrow_id}: {r.status_code} {r.text}")


async def _adopt_all(daemon: BenchWalletd, sets: list[MultisigSet]) -> None:
    async with daemon.client() as api:
        ids = [f"f{i}" for i in range(len(sets))]
        for escrow_id, s in zip(ids, sets, strict=True):
            await _adopt(api, escrow_id, s)
        await wait_escrows(api, ids)


def _wait_json(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fake wallet-rpc server did not start (exit {proc.returncode})")
        time.sleep(0.1)
    return json.loads(path.read_text())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _synthetic_payout() -> Payout:
    """Used only if the release item produced no payout record to copy."""
    return Payout(
        kind=PayoutKind.RELEASE,
        address="4" + "1" * 94,
        phase=PayoutPhase.SUBMITTED,
        signed_txset="00" * 20_000,
        amount=XMR,
        fee=10**9,
        confirmations=10,
        created_at="2026-01-01T00:00:00.000Z",
        submitted_at="2026-01-01T00:00:01.000Z",
    )


def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown"
