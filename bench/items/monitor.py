"""Item 7: what one monitor poll cycle costs with 10 warm sessions, with and without a new block.

walletd's monitor runs inside the daemon, and counting its wallet-rpc calls per cycle from
outside would need a hook. So this item runs walletd's `App` in this process, with its real
`ChildPool` (real wallet-rpc children on the regtest chain), the monitor's own loop off, and
calls `app.monitor.cycle()` itself: each cycle is timed alone, and its wallet-rpc calls are read
from walletd's own metrics (the `walletd_wallet_rpc_call_seconds` count by method).

Without a new block a cycle must make no refresh call (nothing a wallet could report changed);
after one new block each warm watched escrow is refreshed and read once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from bench.aio import in_batches
from bench.daemon import XMR
from bench.plan import Plan
from bench.report import ItemResult, Row, Target
from bench.stats import fmt_ms, summarize
from walletd.app import App, prepare_dirs
from walletd.config import (
    Config,
    DaemonConfig,
    LogConfig,
    MoneroConfig,
    MonitorConfig,
    SessionsConfig,
)
from walletd.ids import ROLES, Role
from walletd.testing.wallet_rpc_process import MultisigSet
from walletd.wallets.rpc import DaemonRpc

__all__ = ["run_monitor"]


def _rpc_counts(app: App) -> Counter[str]:
    counts: Counter[str] = Counter()
    for family in app.metrics.rpc_latency.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                counts[str(sample.labels["method"])] += int(sample.value)
    return counts


async def _cycle(app: App) -> tuple[float, Counter[str]]:
    before = _rpc_counts(app)
    started = time.perf_counter()
    await app.monitor.cycle()
    elapsed = time.perf_counter() - started
    return elapsed, _rpc_counts(app) - before


async def _measure(
    app: App, daemon: DaemonRpc, sets: Sequence[MultisigSet], plan: Plan, miner_address: str
) -> dict[str, Any]:
    def adopt(i: int, ms: MultisigSet) -> Callable[[], Awaitable[object]]:
        wallets: dict[Role, tuple[str, str]] = {r: (ms.files[r], ms.password) for r in ROLES}
        digest = app.escrows.request_digest({"escrow_id": f"w{i}", "n": i})
        return partial(app.escrows.adopt, f"w{i}", XMR, None, wallets, digest)

    await in_batches([adopt(i, ms) for i, ms in enumerate(sets)])
    if app.registry.statistics().active_sessions != len(sets):
        raise RuntimeError("not every escrow has a warm session")
    app.monitor.height = await daemon.height()
    first = await _cycle(app)  # every escrow is new to the monitor: all checked once
    idle = [await _cycle(app) for _ in range(plan.idle_cycles)]
    block = []
    missed = 0  # checks that failed (the monitor logs and retries them next cycle)
    ids = [f"w{i}" for i in range(len(sets))]
    for _ in range(plan.block_cycles):
        await daemon.generate_blocks(1, miner_address)
        app.monitor.height = await daemon.height()
        checked = {i: await _checked_at(app, i) for i in ids}
        block.append(await _cycle(app))
        missed += sum([await _checked_at(app, i) == checked[i] for i in ids])
    return {"first": first, "idle": idle, "block": block, "missed_checks": missed}


async def _checked_at(app: App, escrow_id: str) -> object:
    rec = await app.store.get_escrow(escrow_id)
    return rec.funding.checked_at if rec else None


async def _run_app(
    root: Path,
    daemon_address: str,
    wallet_dir: Path,
    sets: Sequence[MultisigSet],
    plan: Plan,
    miner_address: str,
) -> dict[str, Any]:
    config = Config(
        daemon=DaemonConfig(socket_path=root / "unused.sock", state_dir=root / "state"),
        monero=MoneroConfig(daemon_address=daemon_address, wallet_dir=wallet_dir),
        sessions=SessionsConfig(max_active=len(sets) + 2),
        monitor=MonitorConfig(enabled=False),  # cycles run only when we call them
        log=LogConfig(level="warning"),
    )
    prepare_dirs(config)
    daemon = DaemonRpc(f"http://{daemon_address}", timeout=10.0)
    app = App(config, chain=daemon)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(app.pool.run)
            await nursery.start(app.registry.run)
            await nursery.start(app.lifecycle.run)
            try:
                return await _measure(app, daemon, sets, plan, miner_address)
            finally:
                with trio.CancelScope(shield=True):
                    await app.registry.shutdown(timeout=60)  # stores and closes the wallets
                nursery.cancel_scope.cancel()  # the pool stops every child
    finally:
        with trio.CancelScope(shield=True):
            await app.chain.aclose()
        await app.store.aclose()


def _per_method(samples: list[tuple[float, Counter[str]]]) -> dict[str, float]:
    total: Counter[str] = Counter()
    for _, calls in samples:
        total.update(calls)
    return {m: c / len(samples) for m, c in sorted(total.items())}


def _calls(per_method: dict[str, float]) -> str:
    if not per_method:
        return "0 wallet-rpc calls"
    listed = ", ".join(f"{m} {c:g}" for m, c in per_method.items())
    return f"{sum(per_method.values()):g} wallet-rpc calls ({listed})"


def run_monitor(
    root: Path,
    daemon_address: str,
    wallet_dir: Path,
    sets: Sequence[MultisigSet],
    plan: Plan,
    miner_address: str,
) -> ItemResult:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = trio.run(_run_app, root, daemon_address, wallet_dir, sets, plan, miner_address)
    idle, block = raw["idle"], raw["block"]
    idle_t, block_t = summarize([t for t, _ in idle]), summarize([t for t, _ in block])
    idle_m, block_m = _per_method(idle), _per_method(block)
    idle_refresh = sum(calls["refresh"] for _, calls in idle)
    missed = int(raw["missed_checks"])
    met = idle_refresh == 0
    n = len(sets)
    rows = [
        Row(
            (f"7 monitor cycle, {n} warm sessions", "  no new block"),
            (fmt_ms(idle_t), _calls(idle_m)),
            ("after 1 new block: " + fmt_ms(block_t), "  " + _calls(block_m)),
            f"no block: {idle_t.median / block_t.median:.2%} of a block cycle",
            "no refresh call",
            met,
        )
    ]
    target = Target(
        "a poll cycle without a new block makes no refresh call",
        met,
        f"{idle_refresh} refresh calls in {len(idle)} cycles without a block "
        f"(median {idle_t.median * 1e3:.2f} ms); with a block {_calls(block_m)} per cycle, "
        f"{block_t.median * 1e3:.0f} ms"
        + (f"; {missed} checks FAILED after a block (see bench.log)" if missed else ""),
    )
    first_t, first_calls = raw["first"]
    data = {
        "idle": {
            "summary_s": idle_t.to_json(),
            "calls_per_cycle": idle_m,
            "refresh_calls_total": idle_refresh,
        },
        "block": {
            "summary_s": block_t.to_json(),
            "calls_per_cycle": block_m,
            "failed_checks": missed,
        },
        "first_cycle": {"seconds": first_t, "calls": dict(first_calls)},
        "samples_s": {"idle": [t for t, _ in idle], "block": [t for t, _ in block]},
    }
    legend = (
        "7: app.monitor.cycle() of walletd's App run in this process on real wallet-rpc children,"
        " each cycle timed alone; calls counted from walletd's own wallet-rpc call metrics."
    )
    return ItemResult("7_monitor", rows, [target], data, legend)
