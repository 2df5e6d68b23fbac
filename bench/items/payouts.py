"""Item 9: payouts under cap pressure, with and without balance readers holding the slots.

The scenario measured on a loaded 2-core machine before payouts had priority (issue 19, item
12): 16 ready escrows at a session cap of 6, six clients reading balances back to back, then 32
release calls, each escrow asked twice at once, 8 calls at a time; 5 got 503 (no slot within
30 s) and 2 got 504 (no answer within 90 s).

Here walletd's `App` runs in this process on fake wallet-rpc processes (`FakePool`) over a fake
chain (`FakeDaemon`), so that it costs the machine little and the figure shows the registry's
policy, not wallet-rpc's speed: each wallet open takes `OPEN_DELAY`, each wallet-rpc call
`CALL_DELAY` (both slept, as a loaded machine would make them). Each release call is bounded by
the request timeout as the socket server bounds it (a call past it counts as 504).

- baseline: 16 escrows' 32 release calls with no reader (the cap still holds 6 sessions);
- under pressure: six clients each reading one other escrow's balance back to back (their six
  sessions fill the cap), started before the same 32 calls on 16 more escrows.

Figures: release latency median / p90 / p99 and max, and the count of answers other than 202.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bench.report import ItemResult, Row, Target
from bench.stats import fmt_s, summarize
from tests.fakes import FakeDaemon, call, fake_app, start
from walletd.app import App
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool
from walletd.wallets.process import WalletProcess

__all__ = ["run_payouts"]

CAP = 6
ESCROWS = 16  # per run: a release spends its escrow, so each run has its own
READERS = 6
AT_ONCE = 8  # release calls in flight at a time (each escrow's two calls start together)
OPEN_DELAY = 1.5  # seconds a fake wallet open takes (one wallet-rpc open, roughly)
CALL_DELAY = 0.02  # seconds each fake wallet-rpc call takes
REQUEST_TIMEOUT = 90.0  # daemon.request_timeout's default: the socket server's bound
AMOUNT = 10**12


class SlowPool(FakePool):
    """The fake pool whose processes answer every call after `call_delay`."""

    def __init__(self, world: FakeWalletWorld, call_delay: float) -> None:
        super().__init__(world, open_delay=0.0, create_delay=0.0, call_timeout=REQUEST_TIMEOUT)
        self.call_delay = call_delay

    async def acquire(self) -> WalletProcess:
        proc = await super().acquire()
        fake = self.in_use[proc.pid or -1].fake
        fake.open_delay, fake.call_delay = self.open_delay, self.call_delay
        return proc


async def _ready_escrows(app: App, world: FakeWalletWorld, ids: list[str]) -> None:
    for escrow_id in ids:
        body = {"escrow_id": escrow_id, "amount": AMOUNT}
        status, esc = await call(app, "POST", "/v1/escrows", body)
        if status != 201:
            raise RuntimeError(f"create {escrow_id}: {status} {esc}")
        world.credit(esc["multisig_address"], AMOUNT, unlocked=True)
    with trio.fail_after(600):
        while True:
            states = {e.escrow_id: e.state.value for e in await app.store.list_escrows()}
            if all(states.get(e) == "ready" for e in ids):
                return
            await trio.sleep(0.2)


async def _releases(app: App, address: str, ids: list[str]) -> tuple[list[float], Counter[int]]:
    """Two release calls per escrow, started together, AT_ONCE calls in flight at a time."""
    limiter = trio.CapacityLimiter(AT_ONCE)  # FIFO: calls start in the order asked
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def release(escrow_id: str) -> None:
        async with limiter:
            started = time.perf_counter()
            status = 504
            with trio.move_on_after(REQUEST_TIMEOUT):
                body = {"address": address}
                status, _ = await call(app, "POST", f"/v1/escrows/{escrow_id}/release", body)
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1

    async with trio.open_nursery() as nursery:
        for escrow_id in ids:
            for _ in range(2):
                nursery.start_soon(release, escrow_id)
                await trio.lowlevel.checkpoint()  # queue in order at the limiter
    return latencies, statuses


async def _measure(root: Path) -> dict[str, Any]:
    world = FakeWalletWorld()
    pool = SlowPool(world, CALL_DELAY)
    app = fake_app(root, world, pool, chain=FakeDaemon(world), max_active=CAP)
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        app.monitor.enabled = True
        app.monitor.interval = 0.5
        app.monitor.height_check = 0.2
        app.monitor.cold_interval = 0.5
        await nursery.start(app.monitor.run)
        base = [f"b{i}" for i in range(ESCROWS)]
        loaded = [f"p{i}" for i in range(ESCROWS)]
        readers = [f"r{i}" for i in range(READERS)]
        await _ready_escrows(app, world, base + loaded + readers)
        pool.open_delay = OPEN_DELAY  # from here on, as a wallet-rpc open would
        vendor = world.add_wallet("bench-vendor", "x").address

        opened = app.registry.statistics().opened
        result["baseline"] = await _releases(app, vendor, base)
        result["baseline_opens"] = app.registry.statistics().opened - opened
        reads: Counter[int] = Counter()
        read_s: list[float] = []  # reads that ended once the release calls began
        stop = trio.Event()
        measuring = False

        async def reader(escrow_id: str) -> None:
            while not stop.is_set():
                started = time.perf_counter()
                status, _ = await call(app, "GET", f"/v1/escrows/{escrow_id}/balance")
                if measuring:
                    reads[status] += 1
                    read_s.append(time.perf_counter() - started)

        async with trio.open_nursery() as readers_nursery:
            for escrow_id in readers:
                readers_nursery.start_soon(reader, escrow_id)
            await trio.sleep(2 * OPEN_DELAY + 1)  # the readers' sessions fill the cap
            opened = app.registry.statistics().opened
            measuring = True
            result["pressure"] = await _releases(app, vendor, loaded)
            result["pressure_opens"] = app.registry.statistics().opened - opened
            stop.set()
        result["reads"] = reads
        result["read_s"] = read_s
        result["waiting_after"] = app.registry.statistics().waiting
        nursery.cancel_scope.cancel()
    return result


def _row_cells(latencies: list[float], statuses: Counter[int]) -> tuple[str, str]:
    s = summarize(latencies)
    other = sum(n for code, n in statuses.items() if code != 202)
    codes = ", ".join(f"{n}x {code}" for code, n in sorted(statuses.items()))
    return f"{fmt_s(s)}, max {s.max:.2f} s", f"non-202: {other} ({codes})"


def run_payouts(root: Path) -> ItemResult:
    root.mkdir(parents=True, exist_ok=True)
    data = trio.run(_measure, root)
    base_lat, base_codes = data["baseline"]
    lat, codes = data["pressure"]
    measured, failed = _row_cells(lat, codes)
    base_measured, base_failed = _row_cells(base_lat, base_codes)
    non_2xx = sum(n for code, n in codes.items() if code != 202)
    ratio = summarize(lat).median / summarize(base_lat).median
    reads_s = f", max {max(data['read_s']):.2f} s" if data["read_s"] else ""
    row = Row(
        (
            "9 payouts under cap pressure",
            f"  ({ESCROWS} escrows x 2 calls, {AT_ONCE} at a time,",
            f"  cap {CAP}, {READERS} readers; fake wallet-rpc)",
        ),
        (measured, failed),
        (f"no readers: {base_measured}", base_failed),
        f"{ratio:.1f}x the baseline median",
        "every call 202",
        non_2xx == 0,
    )
    target = Target(
        "every release call answered 202 while six readers hold the cap",
        non_2xx == 0,
        f"{failed}; reads that ended after the calls began: {dict(sorted(data['reads'].items()))}"
        f"{reads_s}; sessions opened during the calls: {data['pressure_opens']}"
        f" (no readers: {data['baseline_opens']})",
    )
    legend = (
        f"9: POST /v1/escrows/{{id}}/release, two calls per escrow started together, {AT_ONCE}"
        f" in flight, cap {CAP}; walletd's App in-process on fake wallet-rpc (open"
        f" {OPEN_DELAY:g} s, {CALL_DELAY * 1e3:g} ms a call); under pressure {READERS} clients"
        " read other escrows' balances back to back; a call past the request timeout counts"
        " as 504."
    )
    json_data = {
        "pressure": {
            "samples_s": lat,
            "statuses": dict(codes),
            "sessions_opened": data["pressure_opens"],
        },
        "baseline": {
            "samples_s": base_lat,
            "statuses": dict(base_codes),
            "sessions_opened": data["baseline_opens"],
        },
        "reads": {"statuses": dict(data["reads"]), "samples_s": data["read_s"]},
        "waiting_after": data["waiting_after"],
    }
    return ItemResult("9_payouts", [row], [target], json_data, legend)
