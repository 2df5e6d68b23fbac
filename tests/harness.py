"""The set-ups the fast tests share, built once: an app on fakes, the monitor running, a ready
escrow, waiting for a state, and cluster hosts on fakes.

Each is a plain async function a test calls inside its own nursery (the test keeps its trio run,
its clock and its cancellation), built on `tests.fakes` (`fake_app`, `call`, `start`). The regtest
tests have their own over HTTP in `tests/regtest/harness.py`, polling with `until_state` below.

- `app_on_fakes(nursery, root, *prefixes, **sessions)`: an `App` on the fake world, its registry,
  lifecycle and pool started; `prefixes` name ready multisig sets made before it starts.
- `app_adopting(nursery, root, escrow_id)`: the same with one set adopted as `escrow_id`.
- `adopt(app, s, escrow_id)`: POST the adoption of a set, asserting 201.
- `run_monitor(nursery, app)`: the monitor on, at the tests' short intervals.
- `ready_escrow(app, world, escrow_id)`: created, paid and `ready`.
- `until_state(read, escrow_id, state)` / `wait_state(app, escrow_id, state)`: poll until then.
- `fake_host(root, world, url, host_id)` / `run_host(nursery, app)` / `two_hosts(...)`: whole
  hosts of one cluster on the test PostgreSQL (marker `pg`), sharing the fake world and the key.
- `shared_multisig(world, prefix)`: a ready set whose files are in every host's wallet dir.
- `escrow_record(escrow_id)`: an `EscrowRecord` as a store holds it, for the store tests.
- `run_walletd(*args)`: `python -m walletd ...` run to its end (config checks, refusals).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import trio

from tests.fakes import (
    FakeDaemon,
    MultisigSet,
    call,
    fake_app,
    fake_config,
    make_fake_multisig,
    start,
)
from tests.pgtest import start_cluster
from walletd.app import App, prepare_dirs
from walletd.config import ClusterConfig
from walletd.escrows.model import EscrowRecord, EscrowState, Funding, Payout, WalletRef, utcnow
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool
from walletd.wallets.chain import Chain

__all__ = [
    "AMOUNT",
    "CLUSTER_TTL",
    "OnFakes",
    "adopt",
    "app_adopting",
    "app_on_fakes",
    "escrow_record",
    "fake_host",
    "ready_escrow",
    "run_host",
    "run_monitor",
    "run_walletd",
    "shared_multisig",
    "two_hosts",
    "until_state",
    "wait_state",
]

AMOUNT = 10**12
CLUSTER_TTL = 3.0  # the cluster tests' lease_ttl: the config's minimum, so expiries come soon
STATE_TIMEOUT = 300.0  # virtual time under the autojump clock; a hang bound, never a timing

EscrowReader = Callable[[str], Awaitable[dict[str, Any]]]


class OnFakes(NamedTuple):
    """What `app_on_fakes` made: the app, its fake world, and the ready sets by prefix."""

    app: App
    world: FakeWalletWorld
    sets: dict[str, MultisigSet]


async def app_on_fakes(
    nursery: trio.Nursery,
    root: Path,
    *prefixes: str,
    world: FakeWalletWorld | None = None,
    monero: Mapping[str, Any] | None = None,
    **sessions: Any,
) -> OnFakes:
    """An app on a fake world (fake wallet-rpc pool, fake monerod), started in `nursery` without
    its socket server or monitor; `monero`, `sessions`: settings of those sections.

    The sets of `prefixes` are made before the app, which mirrors every wallet of the world as a
    `.keys` file in its wallet dir: adoption checks the files exist."""
    world = FakeWalletWorld() if world is None else world
    sets = {prefix: await make_fake_multisig(world, prefix) for prefix in prefixes}
    app = fake_app(root, world, FakePool(world), chain=FakeDaemon(world), monero=monero, **sessions)
    await start(nursery, app)
    return OnFakes(app, world, sets)


async def app_adopting(
    nursery: trio.Nursery, root: Path, escrow_id: str, prefix: str = "a"
) -> tuple[App, MultisigSet]:
    """`app_on_fakes` with the set `prefix` adopted as `escrow_id` (its session open)."""
    app, _, sets = await app_on_fakes(nursery, root, prefix)
    await adopt(app, sets[prefix], escrow_id)
    return app, sets[prefix]


async def adopt(app: App, s: MultisigSet, escrow_id: str, amount: int = AMOUNT) -> dict[str, Any]:
    """POST /v1/escrows adopting `s` as `escrow_id`; asserts 201 and returns the escrow."""
    status, body = await call(app, "POST", "/v1/escrows", s.adopt_body(escrow_id, amount))
    assert status == 201, body
    escrow: dict[str, Any] = body
    return escrow


async def run_monitor(
    nursery: trio.Nursery, app: App, *, cold_interval: float | None = None
) -> None:
    """Turn the app's monitor on (a look every 5 s, the height every 1 s; `cold_interval` if
    given) and start it in `nursery`."""
    app.monitor.enabled = True
    app.monitor.interval = 5
    app.monitor.height_check = 1
    if cold_interval is not None:
        app.monitor.cold_interval = cold_interval
    await nursery.start(app.monitor.run)


async def ready_escrow(
    app: App,
    world: FakeWalletWorld,
    escrow_id: str,
    *,
    amount: int = AMOUNT,
    confirmations: int = 0,
    by_hand: bool = False,
) -> dict[str, Any]:
    """Create `escrow_id`, pay it `amount` and return it once `ready`.

    The deposit is credited unlocked, or with `confirmations` credited locked and then that many
    blocks mined. The app's monitor must be running (`run_monitor`); with `by_hand` this runs one
    monitor cycle itself instead (for tests that drive the monitor by hand)."""
    body = {"escrow_id": escrow_id, "amount": amount}
    status, esc = await call(app, "POST", "/v1/escrows", body)
    assert status == 201, esc
    world.credit(esc["multisig_address"], amount, unlocked=confirmations == 0)
    if confirmations:
        world.mine(confirmations)
    if not by_hand:
        return await wait_state(app, escrow_id, "ready")
    app.monitor.height = world.height
    await app.monitor.cycle()
    _, esc = await call(app, "GET", f"/v1/escrows/{escrow_id}")
    assert esc["state"] == "ready", esc
    ready: dict[str, Any] = esc
    return ready


async def until_state(
    read: EscrowReader,
    escrow_id: str,
    state: str,
    *,
    timeout: float = STATE_TIMEOUT,
    interval: float = 1.0,
) -> dict[str, Any]:
    """Read the escrow every `interval` seconds until it is in `state`; returns it. Fails after
    `timeout` (a hang: every caller's wait is far shorter when all is well)."""
    with trio.fail_after(timeout):
        while True:
            escrow = await read(escrow_id)
            if escrow.get("state") == state:
                return escrow
            await trio.sleep(interval)


async def wait_state(
    app: App, escrow_id: str, state: str, timeout: float = STATE_TIMEOUT
) -> dict[str, Any]:
    """`until_state` through the app's API in-process (GET /v1/escrows/{id})."""

    async def read(eid: str) -> dict[str, Any]:
        escrow: dict[str, Any] = (await call(app, "GET", f"/v1/escrows/{eid}"))[1]
        return escrow

    return await until_state(read, escrow_id, state, timeout=timeout)


# ---- cluster hosts on fakes ---------------------------------------------------------------------


def fake_host(
    root: Path, world: FakeWalletWorld, url: str, host_id: str, *, chain: Chain | None = None
) -> App:
    """Host `host_id` of the cluster on `url`: a whole `App` in `root/host_id` with the cluster's
    vault key (made once in `root`, copied as every host has the same key file). The fake world
    writes each wallet's files into this host's wallet dir too (hosts share no disk)."""
    config = attrs.evolve(
        fake_config(root / host_id),
        cluster=ClusterConfig(database_url=url, host_id=host_id, lease_ttl=CLUSTER_TTL),
    )
    prepare_dirs(config)
    key = root / "walletd.key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(32))
        key.chmod(0o600)
    shutil.copy2(key, config.daemon.state_dir / "walletd.key")
    world.file_dirs.append(config.monero.wallet_dir)
    for name in world.wallets:
        world.write_files(name)
    return App(config, pool=FakePool(world, open_delay=0.1, create_delay=0.1), chain=chain)


async def run_host(nursery: trio.Nursery, app: App) -> None:
    """Join the cluster (heartbeat, leases, forwarding) and start the host's parts in `nursery`."""
    await start_cluster(nursery, app)
    await start(nursery, app)


async def two_hosts(
    nursery: trio.Nursery,
    root: Path,
    url: str,
    *,
    world: FakeWalletWorld | None = None,
    fake_monerod: bool = False,
) -> tuple[App, App, FakeWalletWorld]:
    """Hosts `a` and `b` on one fake world (a new one unless given), both running; with
    `fake_monerod` each has a `FakeDaemon` of that world as its monerod."""
    world = FakeWalletWorld() if world is None else world
    a, b = (
        fake_host(root, world, url, host_id, chain=FakeDaemon(world) if fake_monerod else None)
        for host_id in ("a", "b")
    )
    for app in (a, b):
        await run_host(nursery, app)
    return a, b, world


async def shared_multisig(world: FakeWalletWorld, prefix: str) -> MultisigSet:
    """A ready set made after the hosts, its files written into every host's wallet dir."""
    s = await make_fake_multisig(world, prefix)
    for name in s.files.values():
        world.write_files(name)
    return s


# ---- records -------------------------------------------------------------------------------------


def escrow_record(
    escrow_id: str,
    *,
    state: EscrowState = EscrowState.AWAITING_FUNDING,
    multisig_address: str | None = None,
    required_confirmations: int = 10,
    sealed: str | None = "sealed",
    funding: Funding | None = None,
    payout: Payout | None = None,
    created_at: str | None = None,
) -> EscrowRecord:
    """An adopted escrow's record of 5 atomic units as a store holds it: wallets
    `<escrow_id>-<role>` with password `sealed` (None: not stored), the address `4<escrow_id>`
    unless given, no funding seen unless given, created and updated now unless `created_at`."""
    now = created_at or utcnow()
    return EscrowRecord(
        escrow_id=escrow_id,
        state=state,
        amount=5,
        required_confirmations=required_confirmations,
        multisig_address=f"4{escrow_id}" if multisig_address is None else multisig_address,
        origin="adopted",
        wallets={r: WalletRef(f"{escrow_id}-{r}", sealed) for r in ("buyer", "vendor", "arbiter")},
        request_digest="d",
        funding=Funding() if funding is None else funding,
        payout=payout,
        created_at=now,
        updated_at=now,
    )


# ---- walletd as a command ------------------------------------------------------------------------


def run_walletd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m walletd *args` run to its end, its output captured; `timeout` is a hang
    bound (a loaded 2-core machine), not a timing."""
    return subprocess.run(
        [sys.executable, "-m", "walletd", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
