"""Item 5: warm balance checks through the socket from 1, 10 and 50 concurrent clients.

The clients are `bench.loadgen` processes (one for a single client, two otherwise), spread over
the warm sessions round-robin. Two walletd processes run side by side: one on its real wallet-rpc
children, one on instant fake wallet-rpc processes served by another process, which leaves
walletd's own cost. At each concurrency their windows alternate (fake, real, real, fake), so both
see the same background load on this shared machine. While the load runs, the CPU time of walletd
and of every other process involved is read from /proc: with 2 cores, whoever saturates a core
(or the two together) bounds the throughput.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bench.plan import Plan
from bench.procs import cpu_seconds, die_with_parent, system_busy
from bench.report import ItemResult, Row, Target
from bench.stats import Summary, fmt_ms, summarize

__all__ = [
    "CONCURRENCY",
    "LoadLevel",
    "Subject",
    "describe",
    "load_result",
    "merge",
    "run_paired",
    "run_window",
]

CONCURRENCY = (1, 10, 50)
TARGET_RPS = 2000.0
SHORT = {
    "fake wallet-rpc server": "fake",
    "wallet-rpc children": "children",
    "load generator": "loadgen",
    "not ours": "other",
}
START_DELAY = 2.0  # lets the load generators start Python and connect before the window
REPO = Path(__file__).resolve().parents[2]


@attrs.frozen
class Subject:
    """A walletd under load: its socket, the paths to request, the pids to watch by name.
    With `more_sockets` (other hosts of a cluster), client i goes to socket i mod their number
    (`socket` first) and asks path i mod the number of paths."""

    backend: str
    socket: Path
    paths: Sequence[str]
    watch: Callable[[], Mapping[str, Sequence[int]]]  # read at each window: children change
    more_sockets: Sequence[Path] = ()


@attrs.frozen
class LoadLevel:
    backend: str
    concurrency: int
    seconds: float
    latencies: tuple[float, ...] = attrs.field(repr=False)
    errors: int
    cpu: Mapping[str, float]  # share of one core over the window, by process group

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def latency(self) -> Summary | None:
        return summarize(self.latencies) if self.latencies else None

    @property
    def walletd_us_per_request(self) -> float:
        return self.cpu["walletd"] * 1e6 / self.throughput if self.throughput else 0.0

    def to_json(self) -> dict[str, Any]:
        latency = self.latency
        return {
            "backend": self.backend,
            "concurrency": self.concurrency,
            "seconds": self.seconds,
            "throughput_rps": self.throughput,
            "latency_s": latency.to_json() if latency else None,
            "errors": self.errors,
            "cpu_share_of_one_core": dict(self.cpu),
            "walletd_cpu_us_per_request": self.walletd_us_per_request,
        }


def merge(levels: Sequence[LoadLevel]) -> LoadLevel:
    seconds = sum(lv.seconds for lv in levels)
    return LoadLevel(
        backend=levels[0].backend,
        concurrency=levels[0].concurrency,
        seconds=seconds,
        latencies=tuple(x for lv in levels for x in lv.latencies),
        errors=sum(lv.errors for lv in levels),
        cpu={k: sum(lv.cpu[k] * lv.seconds for lv in levels) / seconds for k in levels[0].cpu},
    )


def _split(concurrency: int) -> list[int]:
    procs = 1 if concurrency == 1 else 2
    return [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]


def run_paired(
    fake: Subject, real: Subject, work: Path, plan: Plan
) -> tuple[list[LoadLevel], list[LoadLevel]]:
    """Every concurrency level on both subjects, windows alternating fake, real, real, fake."""
    order = [fake, real, real, fake] * plan.load_rounds  # ABBA: drifts in the load cancel
    out: dict[str, list[LoadLevel]] = {fake.backend: [], real.backend: []}
    for concurrency in CONCURRENCY:
        runs: dict[str, list[LoadLevel]] = {fake.backend: [], real.backend: []}
        for k, subject in enumerate(order[: 2 * plan.load_rounds]):
            runs[subject.backend].append(run_window(subject, work, concurrency, plan, k))
        for backend, levels in runs.items():
            out[backend].append(merge(levels))
    return out[fake.backend], out[real.backend]


def run_window(subject: Subject, work: Path, concurrency: int, plan: Plan, k: int) -> LoadLevel:
    """One window of load at `concurrency` on `subject`."""
    work.mkdir(parents=True, exist_ok=True)
    watch = subject.watch()
    start_at = time.time() + START_DELAY
    window = (start_at + plan.load_warmup, start_at + plan.load_warmup + plan.load_seconds)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    offset = 0
    try:
        for i, connections in enumerate(_split(concurrency)):
            out = work / f"{subject.backend}-c{concurrency}-{k}-{i}.json"
            out.unlink(missing_ok=True)
            args = [sys.executable, "-m", "bench.loadgen"]
            sockets = (subject.socket, *subject.more_sockets)
            args += [a for sock in sockets for a in ("--socket", str(sock))]
            args += [a for p in subject.paths for a in ("--path", p)]
            args += ["--offset", str(offset), "--connections", str(connections)]
            args += ["--start-at", repr(start_at), "--warmup", str(plan.load_warmup)]
            args += ["--duration", str(plan.load_seconds), "--out", str(out)]
            procs.append((subprocess.Popen(args, cwd=REPO, preexec_fn=die_with_parent()), out))
            offset += connections
        time.sleep(max(0.0, window[0] - time.time()))
        before = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watch.items()}
        busy_before, _ = system_busy()
        time.sleep(max(0.0, window[1] - time.time()))
        after = {name: sum(cpu_seconds(p) for p in pids) for name, pids in watch.items()}
        busy_after, _ = system_busy()
        results = []
        for proc, out in procs:
            if proc.wait(timeout=plan.load_seconds + 60) != 0:
                raise RuntimeError(f"load generator exited {proc.returncode}")
            results.append(json.loads(out.read_text()))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = plan.load_seconds
    cpu = {name: (after[name] - before[name]) / seconds for name in watch}
    cpu["load generator"] = sum(r["cpu_s"] or 0.0 for r in results) / seconds
    # Everything else the machine ran meanwhile (other users' jobs): the noise behind the figure.
    cpu["not ours"] = max(0.0, (busy_after - busy_before) / seconds - sum(cpu.values()))
    return LoadLevel(
        backend=subject.backend,
        concurrency=concurrency,
        seconds=seconds,
        latencies=tuple(us / 1e6 for r in results for us in r["latencies_us"]),
        errors=sum(int(r["errors"]) for r in results),
        cpu=cpu,
    )


def describe(level: LoadLevel) -> tuple[str, str]:
    lat = fmt_ms(level.latency).rsplit(" n=", 1)[0] if level.latency else "no answers"
    cpu = ", ".join(f"{SHORT.get(name, name)} {share:.0%}" for name, share in level.cpu.items())
    errors = f", {level.errors} errors" if level.errors else ""
    return f"{level.throughput:,.0f} req/s; {lat}{errors}", f"CPU: {cpu}"


def load_result(fake: Sequence[LoadLevel], real: Sequence[LoadLevel], sessions: int) -> ItemResult:
    rows = []
    by_c = {lv.concurrency: lv for lv in real}
    for lv in fake:
        base = by_c.get(lv.concurrency)
        measured, cpu = describe(lv)
        baselines: tuple[str, ...] = ()
        ratio = ""
        if base is not None:
            b_measured, b_cpu = describe(base)
            baselines = ("real wallet-rpc: " + b_measured, "  " + b_cpu)
            ratio = f"{lv.throughput / base.throughput:.2f}x real" if base.throughput else ""
        rows.append(
            Row(
                (f"5 warm balance x{lv.concurrency}", "  (walletd on fake)"),
                (measured, cpu, f"walletd CPU: {lv.walletd_us_per_request:.0f} us/request"),
                baselines,
                ratio,
                f">= {TARGET_RPS:,.0f} req/s",
                lv.throughput >= TARGET_RPS,
            )
        )
    best = max(fake, key=lambda lv: lv.throughput)
    per_core = 1e6 / best.walletd_us_per_request if best.walletd_us_per_request else 0.0
    met = best.throughput >= TARGET_RPS
    detail = (
        f"best {best.throughput:,.0f} req/s at {best.concurrency} clients over {sessions} warm "
        f"sessions; walletd used {best.cpu['walletd']:.0%} of a core, "
        f"{best.walletd_us_per_request:.0f} us CPU per request (one core allows "
        f"~{per_core:,.0f} req/s); other jobs on the machine took "
        f"{best.cpu.get('not ours', 0.0):.0%} of one core meanwhile"
    )
    target = Target(
        "at least 2,000 warm balance checks/s through the socket (instant fake)", met, detail
    )
    data = {
        "fake": [lv.to_json() for lv in fake],
        "real": [lv.to_json() for lv in real],
        "sessions": sessions,
    }
    legend = (
        f"5: GET /v1/escrows/{{id}}/balance from 1, 10, 50 concurrent keep-alive clients over"
        f" {sessions} warm sessions, {fake[0].seconds:g} s per figure, windows alternating;"
        " walletd on instant fake wallet-rpc processes (another process) vs on its real"
        " wallet-rpc children. CPU = share of one core over the window; 'other' = the rest of"
        " the machine (jobs not ours)."
    )
    return ItemResult("5_load", rows, [target], data, legend)
