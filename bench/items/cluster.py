"""Item 8: the cluster (issue 14): warm reads through 1 and 3 hosts on one PostgreSQL, and failover.

Everything runs on instant fake wallet-rpc endpoints (`bench/fake_server.py`, one process, as
item 5's measured figure), so the figures are walletd's and PostgreSQL's own cost; the bench's
regtest monerod only answers the monitor's height checks. A private PostgreSQL
(`bench/postgres.py`) holds the cluster; without PostgreSQL the item says "skipped".

- Reads: `GET /v1/escrows/{id}/balance` on warm sessions from N keep-alive clients
  (`bench.loadgen`, item 5's generator), in windows that alternate between
  - the baseline: a single-host walletd without `[cluster]` (SQLite), on its own escrows;
  - 1 host: every client on h1, which owns the escrows (h2, h3 run idle);
  - 3 hosts, owner h1: client i on host i mod 3, the same escrows, all owned by h1, so 2/3 of
    the reads are forwarded to h1 through the database (a row, NOTIFY, a reply row);
  - 3 hosts, spread: escrows owned by h1, h2, h3 in turn, each client on its escrow's owner (no
    forwarding): the cluster's bound when the marketplace asks the owner.
- Failover: an escrow owned by h1 is read through h2 in a loop (a few clients, each with a 1 s
  timeout, staggered); h1 is killed (SIGKILL, and its wallet-rpc endpoints with it, as when the
  host dies); the figure is the time from the kill to the first 200 of a read sent after it. h1
  comes back (same state dir, fresh endpoints) for the next repetition, on a new escrow.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import trio

from bench.daemon import BenchWalletd, adopt_body, wait_escrows
from bench.items.load import LoadLevel, Subject, describe, merge, run_window
from bench.plan import Plan
from bench.postgres import PrivatePostgres, server_bin
from bench.procs import children_of, die_with_parent
from bench.report import ItemResult, Row
from bench.stats import fmt_s, summarize

__all__ = ["LEASE_TTL", "run_cluster"]

LEASE_TTL = 5.0  # short, so a failover takes seconds (the default is 15 s)
HOSTS = ("h1", "h2", "h3")
PER_VARIANT = 9  # escrows read in each variant: a multiple of 3, so the spread one is even
MONITOR = {"poll_interval": 1.0, "height_check": 0.25}  # as the runner's walletd processes
READERS = 4  # failover clients, staggered over one client timeout
READ_TIMEOUT = 1.0  # a failover client gives up on a read after this and sends another
FAILOVER_LIMIT = 10 * LEASE_TTL  # no read served again by then: the repetition failed
REPO = Path(__file__).resolve().parents[2]
LEGEND_READS = (
    "8 cluster reads: GET /v1/escrows/{id}/balance on warm sessions, walletd on instant fake"
    " wallet-rpc endpoints (another process), {n} escrows per variant, windows alternating;"
    " baseline = a single walletd without [cluster] (SQLite) in the same run. '1 host': all"
    " clients on h1, which owns the escrows (h2, h3 idle). '3 hosts, owner h1': client i on host"
    " i mod 3, escrows all owned by h1 (2/3 of reads forwarded through PostgreSQL). '3 hosts,"
    " spread': escrows owned by h1/h2/h3 in turn, each client on its escrow's owner (none"
    " forwarded). walletd CPU = the three hosts together; pg = PostgreSQL's processes."
)


def _skipped(reason: str) -> list[ItemResult]:
    row = Row(("8 cluster reads, failover",), f"skipped: {reason}")
    return [ItemResult("8_cluster", [row], [], {"skipped": reason}, "")]


@attrs.frozen
class _World:
    """Everything the item started: a PostgreSQL, the fake endpoints, four walletd processes."""

    pg: PrivatePostgres
    fake_pid: int
    groups: list[list[int]]  # endpoint ports: the baseline's, then h1's, h2's, h3's
    sets: list[dict[str, Any]]
    base: BenchWalletd
    hosts: dict[str, BenchWalletd]


def run_cluster(
    stack: contextlib.ExitStack, root: Path, daemon_address: str, plan: Plan
) -> list[ItemResult]:
    bin_dir = server_bin()
    if bin_dir is None:
        return _skipped("no PostgreSQL (initdb/pg_ctl not found; apt-get install postgresql)")
    world = _start(stack, root, daemon_address, plan, bin_dir)
    ids = _adopt_all(world)
    reads = _reads_result(_reads(world, ids, root / "load-cluster", plan))
    try:
        failover = _failover_result(_failovers(stack, world, root, daemon_address, plan), plan)
    except Exception as exc:  # noqa: BLE001 - the read figures stand; say what failed
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
        row = Row(("8 cluster failover",), f"failed: {error[:200]}")
        failover = ItemResult("8_cluster_failover", [row], [], {"error": error}, "")
    return [reads, failover]


# ---- setup ------------------------------------------------------------------------------------


def _host(
    root: Path,
    daemon_address: str,
    ports: Sequence[int],
    host_id: str | None = None,
    url: str = "",
) -> BenchWalletd:
    endpoints = [
        {"url": f"http://127.0.0.1:{port}", "user": "bench", "password": "bench"} for port in ports
    ]
    sections: dict[str, Mapping[str, Any]] = {
        "monero": {"wallet_rpc_endpoints": endpoints},
        "sessions": {"max_active": len(ports) // 3},
        "monitor": MONITOR,
    }
    if host_id is not None:
        sections["cluster"] = {"database_url": url, "host_id": host_id, "lease_ttl": LEASE_TTL}
    return BenchWalletd(root, daemon_address, **sections)


def _start(
    stack: contextlib.ExitStack, root: Path, daemon_address: str, plan: Plan, bin_dir: Path
) -> _World:
    pg = stack.enter_context(PrivatePostgres(bin_dir))
    names = ["single", *HOSTS]
    for name in names:  # the fake writes the wallets' files here, as a wallet-rpc's store does
        (root / name / "wallets").mkdir(mode=0o700, parents=True, exist_ok=True)
    # Every host of a cluster needs the same vault key, copied before it starts.
    key = secrets.token_bytes(32)
    for host in HOSTS:
        state = root / host / "state"
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        (state / "walletd.key").write_bytes(key)
        (state / "walletd.key").chmod(0o600)
    # Each host may end up holding every cluster escrow (the others dead): 3 endpoints each.
    sessions = 2 * PER_VARIANT + plan.failovers
    info_file = root / "fake-cluster.json"
    args = ["--sets", str(sessions + PER_VARIANT), "--endpoints", str(3 * sessions)]
    args += ["--groups", str(len(names)), "--out", str(info_file), "--kill-group", "1"]
    args += [a for name in names for a in ("--file-dir", str(root / name / "wallets"))]
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_server", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent(),
    )
    stack.callback(_stop, server)
    info = _wait_json(info_file, server)
    groups: list[list[int]] = info["groups"]
    base = _host(root / "single", daemon_address, groups[0])
    stack.enter_context(base)
    hosts = {}
    for i, host in enumerate(HOSTS):
        hosts[host] = _host(root / host, daemon_address, groups[1 + i], host, pg.url)
        stack.enter_context(hosts[host])
    return _World(pg, int(info["pid"]), groups, info["sets"], base, hosts)


def _adopt_all(world: _World) -> dict[str, list[str]]:
    """Adopts the escrows of each variant where they must live; returns their ids by variant."""
    ids = {
        "single": [f"b{i}" for i in range(PER_VARIANT)],
        "owned": [f"o{i}" for i in range(PER_VARIANT)],
        "spread": [f"p{i}" for i in range(PER_VARIANT)],
    }
    sets = iter(world.sets)
    plan: list[tuple[BenchWalletd, str, dict[str, Any]]] = []
    plan += [(world.base, escrow_id, next(sets)) for escrow_id in ids["single"]]
    plan += [(world.hosts["h1"], escrow_id, next(sets)) for escrow_id in ids["owned"]]
    plan += [
        (world.hosts[HOSTS[i % 3]], escrow_id, next(sets))
        for i, escrow_id in enumerate(ids["spread"])
    ]
    trio.run(_adopt_on, plan)
    owners = trio.run(_owners, world.hosts["h2"])
    for i, escrow_id in enumerate(ids["spread"]):
        _expect_owner(owners, escrow_id, HOSTS[i % 3])
    for escrow_id in ids["owned"]:
        _expect_owner(owners, escrow_id, "h1")
    return ids


def _expect_owner(owners: Mapping[str, str], escrow_id: str, host: str) -> None:
    if owners.get(escrow_id) != host:
        raise RuntimeError(f"escrow {escrow_id} is held by {owners.get(escrow_id)}, not {host}")


async def _adopt_on(plan: Sequence[tuple[BenchWalletd, str, dict[str, Any]]]) -> None:
    for daemon, escrow_id, s in plan:
        async with daemon.client() as api:
            await _adopt(api, escrow_id, s)
    for daemon, escrow_id, _ in plan:  # the monitor's first check is done
        async with daemon.client() as api:
            await wait_escrows(api, [escrow_id])


async def _adopt(api: httpx.AsyncClient, escrow_id: str, s: Mapping[str, Any]) -> None:
    r = await api.post("/v1/escrows", json=adopt_body(escrow_id, s["files"], s["password"]))
    if r.status_code not in (200, 201):
        raise RuntimeError(f"adopting {escrow_id}: {r.status_code} {r.text}")


async def _owners(daemon: BenchWalletd) -> dict[str, str]:
    """escrow id -> the host holding its lease, from GET /v1/cluster."""
    async with daemon.client() as api:
        r = await api.get("/v1/cluster")
        if r.status_code != 200:
            raise RuntimeError(f"GET /v1/cluster: {r.status_code} {r.text}")
        return {str(x["escrow_id"]): str(x["host_id"]) for x in r.json()["leases"]}


# ---- reads ------------------------------------------------------------------------------------


def _reads(
    world: _World, ids: Mapping[str, list[str]], work: Path, plan: Plan
) -> dict[str, list[_Level]]:
    h1, h2, h3 = (world.hosts[h] for h in HOSTS)
    others = (h2.socket, h3.socket)

    def paths(variant: str) -> list[str]:
        return [f"/v1/escrows/{i}/balance" for i in ids[variant]]

    def cluster_pids() -> dict[str, list[int]]:
        pg = [p for pid in world.pg.pids() for p in (pid, *children_of(pid))]
        return {
            "walletd": [d.pid for d in world.hosts.values() if d.proc and d.proc.poll() is None],
            "fake wallet-rpc server": [world.fake_pid],
            "pg": pg,
        }

    subjects = [
        Subject(
            "single",
            world.base.socket,
            paths("single"),
            lambda: {"walletd": [world.base.pid], "fake wallet-rpc server": [world.fake_pid]},
        ),
        Subject("1-host", h1.socket, paths("owned"), cluster_pids),
        # Client i on host i mod 3 asks path i mod 9: spread escrow j is owned by host j mod 3.
        Subject("3-hosts-owner-h1", h1.socket, paths("owned"), cluster_pids, others),
        Subject("3-hosts-spread", h1.socket, paths("spread"), cluster_pids, others),
    ]
    out: dict[str, list[_Level]] = {s.backend: [] for s in subjects}
    order = (subjects + subjects[::-1]) * plan.load_rounds  # ABCD DCBA: drifts cancel
    for concurrency in plan.cluster_clients:
        runs: dict[str, list[LoadLevel]] = {s.backend: [] for s in subjects}
        commits: dict[str, int] = {s.backend: 0 for s in subjects}
        for k, subject in enumerate(order[: len(subjects) * plan.load_rounds]):
            before = _commits(world.pg.url)
            runs[subject.backend].append(run_window(subject, work, concurrency, plan, k))
            commits[subject.backend] += _commits(world.pg.url) - before
        for backend, levels in runs.items():
            merged = merge(levels)
            # Over the whole windows (start and warm-up too) per read counted: an upper bound.
            per_read = commits[backend] / max(1, len(merged.latencies))
            out[backend].append(_Level(merged, per_read))
    return out


@attrs.frozen
class _Level:
    load: LoadLevel
    pg_commits_per_read: float  # PostgreSQL transactions (all hosts, all causes) per read


def _commits(url: str) -> int:
    """Transactions committed in the cluster's PostgreSQL so far (all databases)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT sum(xact_commit) FROM pg_stat_database").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _reads_result(levels: Mapping[str, list[_Level]]) -> ItemResult:
    labels = {
        "1-host": "1 host (owns all)",
        "3-hosts-owner-h1": "3 hosts, owner h1",
        "3-hosts-spread": "3 hosts, spread",
    }
    rows = []
    for n, single in enumerate(levels["single"]):
        base = single.load
        b_measured, b_cpu = describe(base)
        for backend, label in labels.items():
            lv = levels[backend][n].load
            measured, cpu = describe(lv)
            pg = f"pg: {levels[backend][n].pg_commits_per_read:.2f} commits/read"
            ratio = f"{lv.throughput / base.throughput:.2f}x" if base.throughput else ""
            rows.append(
                Row(
                    (f"8 cluster reads x{lv.concurrency}", f"  {label}"),
                    (measured, cpu, pg),
                    ("no [cluster]: " + b_measured, "  " + b_cpu),
                    ratio,
                )
            )
    data = {
        backend: [
            {**lv.load.to_json(), "pg_commits_per_read": lv.pg_commits_per_read} for lv in lvs
        ]
        for backend, lvs in levels.items()
    }
    legend = LEGEND_READS.replace("{n}", str(PER_VARIANT))
    return ItemResult("8_cluster_reads", rows, [], data, legend)


# ---- failover ---------------------------------------------------------------------------------


@attrs.frozen
class _Failover:
    seconds: float | None  # kill -> first 200 of a read sent after the kill
    failed_reads: int  # reads after the kill answered otherwise (or timed out) meanwhile
    statuses: dict[str, int]
    owner_after: str | None
    epoch_before: int | None
    epoch_after: int | None
    failed_before_kill: int  # reads sent before the kill that did not answer 200

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _failovers(
    stack: contextlib.ExitStack, world: _World, root: Path, daemon_address: str, plan: Plan
) -> list[_Failover]:
    results = []
    h1 = world.hosts["h1"]
    for k in range(plan.failovers):
        if k > 0:  # h1 comes back: same state dir and key, fresh endpoints
            h1 = _host(root / "h1", daemon_address, world.groups[1], "h1", world.pg.url)
            stack.enter_context(h1)
        escrow_id = f"x{k}"
        s = world.sets[3 * PER_VARIANT + k]
        results.append(trio.run(_failover_once, h1, world.hosts["h2"], escrow_id, s, world))
        h1.stop()  # reaps the killed process, removes its socket directory
    return results


async def _failover_once(
    h1: BenchWalletd, h2: BenchWalletd, escrow_id: str, s: Mapping[str, Any], world: _World
) -> _Failover:
    async with h1.client() as api:
        await _adopt(api, escrow_id, s)
        await wait_escrows(api, [escrow_id])
    before = await _lease(h2, escrow_id)
    if before is None or before[0] != "h1":
        raise RuntimeError(f"escrow {escrow_id} is not held by h1 before the kill: {before}")
    path = f"/v1/escrows/{escrow_id}/balance"
    await _until_served(h2, path)
    kill_at: list[float] = []
    served: list[float] = []
    statuses: dict[str, int] = {}
    slow_before = [0]  # reads before the kill that did not answer 200 in time (a busy machine)
    done = trio.Event()

    async def reader(delay: float) -> None:
        await trio.sleep(delay)
        async with h2.client(timeout=READ_TIMEOUT) as api:
            while not done.is_set():
                sent = time.perf_counter()
                try:
                    status = str((await api.get(path)).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                after_kill = bool(kill_at) and sent >= kill_at[0]
                if not after_kill:
                    slow_before[0] += status != "200"
                    continue
                if status == "200":
                    served.append(time.perf_counter())
                    done.set()
                    return
                statuses[status] = statuses.get(status, 0) + 1
                await trio.sleep(0.02)  # a 503 comes back at once: no busy loop

    with trio.fail_after(FAILOVER_LIMIT + 30):
        async with trio.open_nursery() as nursery:
            for i in range(READERS):
                nursery.start_soon(reader, i * READ_TIMEOUT / READERS)
            await trio.sleep(1.0 + READ_TIMEOUT)  # every reader is reading through h2
            kill_at.append(time.perf_counter())
            os.kill(h1.pid, signal.SIGKILL)
            os.kill(world.fake_pid, signal.SIGUSR1)  # h1's wallet-rpc processes die with it
            with trio.move_on_after(FAILOVER_LIMIT):
                await done.wait()
            done.set()
    after = await _lease(h2, escrow_id)
    return _Failover(
        seconds=served[0] - kill_at[0] if served else None,
        failed_reads=sum(statuses.values()),
        statuses=statuses,
        owner_after=after[0] if after else None,
        epoch_before=before[1],
        epoch_after=after[1] if after else None,
        failed_before_kill=slow_before[0],
    )


async def _until_served(daemon: BenchWalletd, path: str, timeout: float = 60) -> None:
    """Until a read through `daemon` answers 200 within the failover clients' timeout: the
    forwarding path is warm (a host just (re)started, monitors taking escrows over)."""
    with trio.fail_after(timeout):
        async with daemon.client(timeout=READ_TIMEOUT) as api:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await api.get(path)).status_code == 200:
                        return
                await trio.sleep(0.1)


async def _lease(daemon: BenchWalletd, escrow_id: str) -> tuple[str, int | None] | None:
    async with daemon.client() as api:
        r = await api.get("/v1/cluster")
    for lease in r.json().get("leases", []):
        if lease.get("escrow_id") == escrow_id:
            return str(lease.get("host_id")), lease.get("epoch")
    return None


def _failover_result(samples: Sequence[_Failover], plan: Plan) -> ItemResult:
    times = [x.seconds for x in samples if x.seconds is not None]
    missed = len(samples) - len(times)
    owners = sorted({str(x.owner_after) for x in samples})
    failed = sum(x.failed_reads for x in samples)
    if times:
        s = summarize(times)
        measured: tuple[str, ...] = (fmt_s(s), f"new owner: {', '.join(owners)}")
        ratio = f"{s.median / LEASE_TTL:.2f}x lease_ttl"
    else:
        measured = ("never served again",)
        ratio = ""
    if missed:
        measured += (f"{missed} of {len(samples)} not served within {FAILOVER_LIMIT:.0f} s",)
    row = Row(
        ("8 cluster failover", "  (kill -9 owner h1,", "   reads through h2)"),
        measured,
        (f"lease_ttl = {LEASE_TTL:g} s", f"reads failed meanwhile: {failed}"),
        ratio,
    )
    legend = (
        f"8 cluster failover: an escrow owned by h1, read through h2 by {READERS} clients"
        f" ({READ_TIMEOUT:g} s client timeout, staggered); h1 and its wallet-rpc endpoints"
        " killed (SIGKILL); time from the kill to the first 200 of a read sent after it;"
        f" {plan.failovers} repetition(s), each on a new escrow with h1 restarted;"
        f" lease_ttl {LEASE_TTL:g} s (default 15 s). Expected: what the lease had left at the"
        " kill (renewed every ttl/3, so 2/3 to all of lease_ttl) + one takeover (restore the"
        " wallet files, open the session: instant wallet-rpc here)."
    )
    data = {"lease_ttl_s": LEASE_TTL, "samples": [x.to_json() for x in samples]}
    return ItemResult("8_cluster_failover", [row], [], data, legend)


# ---- processes --------------------------------------------------------------------------------


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
