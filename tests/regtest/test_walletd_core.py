"""walletd against a real `monerod --regtest` and real monero-wallet-rpc children.

These prove what the fake cannot: that real wallet-rpc processes are opened, evicted, stored,
restored after kill -9 and left behind by nobody. Each test runs walletd as its own process.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.regtest.walletd_proc import WalletdProcess, events_of, wait_event
from walletd.errors import NoWalletFile, RpcCallError
from walletd.ids import ROLES
from walletd.testing.regtest import MonerodProcess
from walletd.testing.wallet_rpc_process import MultisigSet, MultisigSetFactory, WalletRpcProcess
from walletd.wallets.fastopen import prepare as prepare_fast_open
from walletd.wallets.keys_lock import lock_holders
from walletd.wallets.rpc import WalletRpc

pytestmark = pytest.mark.regtest
PASSWORD = "regtest-pw"


def _adopt_body(escrow_id: str, s: MultisigSet, amount: int = 10**12) -> dict[str, Any]:
    return {
        "escrow_id": escrow_id,
        "amount": amount,
        "wallets": {r: {"file": s.files[r], "password": s.password} for r in ROLES},
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_cap_of_ten_evicts_the_least_recently_used(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """Eleven escrows of real multisig wallets with cap 10: the least recently used session is
    stored, closed and reported evicted; calling it again reopens it."""
    root = tmp_path / "w"
    daemon = WalletdProcess(root, monerod.daemon_address, sessions={"max_active": 10})
    sets = await make_multisig_sets.acreate(daemon.wallet_dir, 11, PASSWORD)
    with daemon, trio.fail_after(600):
        async with daemon.client() as client:
            for i, s in enumerate(sets):
                r = await client.post("/v1/escrows", json=_adopt_body(f"e{i}", s))
                assert r.status_code == 201, r.text
                assert r.json()["multisig_address"] == s.address
            sessions = (await client.get("/v1/sessions")).json()["sessions"]
            assert [x["escrow_id"] for x in sessions] == [f"e{i}" for i in range(10, 0, -1)]
            evicted = [e for e in await events_of(client, "session_closed")]
            assert [(e["escrow_id"], e["reason"]) for e in evicted] == [("e0", "evicted")]
            stats = (await client.get("/v1/stats")).json()
            assert (stats["active_sessions"], stats["evicted"], stats["max_sessions"]) == (
                10,
                1,
                10,
            )
            # e0's wallets were stored and closed: nothing holds their lock, files are whole.
            for role in ROLES:
                assert (daemon.wallet_dir / f"{sets[0].files[role]}.keys").is_file()
            r = await client.get("/v1/escrows/e0/balance")
            assert r.status_code == 200, r.text
            assert r.json()["height"] > 0
            sessions = (await client.get("/v1/sessions")).json()["sessions"]
            assert (sessions[0]["escrow_id"], len(sessions)) == ("e0", 10)
            assert "e1" not in {x["escrow_id"] for x in sessions}


async def test_idle_ttl_closes_a_real_session(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """With a TTL of a few seconds an idle session is closed and reported expired."""
    daemon = WalletdProcess(
        tmp_path / "w", monerod.daemon_address, sessions={"idle_ttl": 3, "sweep_interval": 1}
    )
    (s,) = await make_multisig_sets.acreate(daemon.wallet_dir, 1, PASSWORD)
    with daemon, trio.fail_after(120):
        async with daemon.client() as client:
            assert (await client.post("/v1/escrows", json=_adopt_body("t1", s))).status_code == 201
            await wait_event(client, "session_closed")
            assert (await client.get("/v1/sessions")).json()["sessions"] == []
            closed = await events_of(client, "session_closed")
            assert [(e["escrow_id"], e["reason"]) for e in closed] == [("t1", "expired")]


async def test_kill_9_of_children_then_next_call_succeeds(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """kill -9 of every wallet-rpc child: the next call on the escrow still succeeds."""
    daemon = WalletdProcess(tmp_path / "w", monerod.daemon_address)
    (s,) = await make_multisig_sets.acreate(daemon.wallet_dir, 1, PASSWORD)
    with daemon, trio.fail_after(180):
        async with daemon.client() as client:
            assert (await client.post("/v1/escrows", json=_adopt_body("k1", s))).status_code == 201
            before = daemon.children()
            assert len(before) >= 3
            for pid in before:
                os.kill(pid, signal.SIGKILL)
            r = await client.get("/v1/escrows/k1/balance")
            assert r.status_code == 200, r.text
            restarted = await events_of(client, "wallet_rpc_restarted")
            assert {e["role"] for e in restarted} == set(ROLES)
            assert not set(before) & set(daemon.children())
            assert (await client.get("/v1/stats")).json()["wallet_rpc_restarts"] >= 3


async def test_sigterm_stores_everything_and_leaves_no_child(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """SIGTERM: walletd exits 0, no wallet-rpc child is left, and every wallet was stored."""
    daemon = WalletdProcess(tmp_path / "w", monerod.daemon_address)
    sets = await make_multisig_sets.acreate(daemon.wallet_dir, 2, PASSWORD)
    with daemon, trio.fail_after(180):
        async with daemon.client() as client:
            for i, s in enumerate(sets):
                r = await client.post("/v1/escrows", json=_adopt_body(f"s{i}", s))
                assert r.status_code == 201
            started = time.time()
            kids = daemon.children()
            assert len(kids) >= 6
        daemon.signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(daemon.wait) == 0
        for pid in kids:
            assert not _alive(pid), f"wallet-rpc {pid} outlived walletd"
        for s in sets:
            for role in ROLES:
                cache = daemon.wallet_dir / s.files[role]
                assert cache.stat().st_mtime >= started - 1, f"{cache.name} not stored at exit"
        log = daemon.log_text()
        assert '"event": "walletd stopped"' in log
        assert PASSWORD not in log


async def test_truncated_cache_is_repaired_on_open(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """A truncated wallet cache does not stop the session: it is set aside, the wallet rebuilds
    from its keys file, and an event says so."""
    daemon = WalletdProcess(tmp_path / "w", monerod.daemon_address)
    (s,) = await make_multisig_sets.acreate(daemon.wallet_dir, 1, PASSWORD)
    with daemon, trio.fail_after(180):
        async with daemon.client() as client:
            assert (await client.post("/v1/escrows", json=_adopt_body("c1", s))).status_code == 201
            assert (await client.delete("/v1/escrows/c1/session")).json()["closed"] is True
            cache = daemon.wallet_dir / s.files["vendor"]
            data = cache.read_bytes()
            cache.write_bytes(data[: len(data) // 2])
            r = await client.post("/v1/escrows/c1/session")
            assert r.status_code == 200, r.text
            repaired = await events_of(client, "wallet_repaired")
            assert [(e["escrow_id"], e["role"]) for e in repaired] == [("c1", "vendor")]
            assert (await client.get("/v1/escrows/c1/balance")).status_code == 200


async def _take_from_walletd(
    client: httpx.AsyncClient, rpc: WalletRpc, escrow: str, file: str, keys: Path, pid: int
) -> None:
    """Open `file` in another wallet-rpc (`pid`) while walletd has the escrow's session closed,
    until that process holds the wallet's keys-file lock. The monitor may reopen the session for
    a check at any moment (the escrow is watched): close it and try again. An open that raced
    walletd's can succeed without the lock (wallet-rpc re-takes it after loading unchecked, see
    walletd.wallets.keys_lock): that process does not hold the wallet as this test means, so it
    closes it unsaved and tries again."""
    while True:
        await client.delete(f"/v1/escrows/{escrow}/session")
        try:
            await rpc.call("open_wallet", {"filename": file, "password": PASSWORD})
        except RpcCallError as exc:
            if exc.code != -1:
                raise
        else:
            if pid in lock_holders(keys):
                return
            await rpc.call("close_wallet", {"autosave_current": False})
        await trio.sleep(0.5)


async def test_a_wallet_held_by_another_process_is_not_repaired(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """A real wallet-rpc outside walletd has the vendor wallet open (its keys-file lock): walletd's
    open gets -1 and must not "repair" it: the session fails, the live cache and keys stay as they
    were, nothing is set aside or replaced, no wallet_repaired event; once the other process lets
    go, the session opens. The monitor is on: its reopening of the session may race the other
    process's open, and walletd then gives its open up (never both holding the wallet)."""
    daemon = WalletdProcess(tmp_path / "w", monerod.daemon_address)
    (s,) = await make_multisig_sets.acreate(daemon.wallet_dir, 1, PASSWORD)
    with daemon, trio.fail_after(240):
        async with daemon.client() as client:
            assert (await client.post("/v1/escrows", json=_adopt_body("l1", s))).status_code == 201
            assert (await client.delete("/v1/escrows/l1/session")).json()["closed"] is True
            vendor = daemon.wallet_dir / s.files["vendor"]
            other = WalletRpcProcess(
                wallet_dir=daemon.wallet_dir,
                work_dir=tmp_path / "other",
                daemon_address=monerod.daemon_address,
            )
            with other:
                await trio.to_thread.run_sync(other.wait_ready)
                rpc = other.client()
                try:
                    keys = vendor.with_name(vendor.name + ".keys")
                    assert other.pid is not None
                    await _take_from_walletd(client, rpc, "l1", s.files["vendor"], keys, other.pid)
                    # From here on nothing of walletd's may write them (the monitor's closes store).
                    before = {p: p.read_bytes() for p in (vendor, keys)}
                    r = await client.post("/v1/escrows/l1/session")
                    assert r.status_code != 200, r.text
                    assert {p: p.read_bytes() for p in before} == before
                    assert list((daemon.state_dir / "backups").rglob("replaced-*")) == []
                    assert list((daemon.state_dir / "backups").rglob("damaged-*")) == []
                    assert await events_of(client, "wallet_repaired") == []
                    await rpc.call("close_wallet", {"autosave_current": False})
                finally:
                    await rpc.aclose()
            r = await client.post("/v1/escrows/l1/session")
            assert r.status_code == 200, r.text


# Offsets (s) between the two opens, walletd first when positive: a sweep across the moment
# their loads meet, both orders, each once. The window where both opens succeed is ~50 ms wide.
RACE_OFFSETS = [round(-0.5 + 0.05 * i, 2) for i in range(21)]


async def _race(
    client: httpx.AsyncClient, rpc: WalletRpc, file: str, offset: float
) -> tuple[httpx.Response, bool]:
    """walletd's session open and another wallet-rpc's open of `file`, `offset` seconds apart
    (positive: walletd first); walletd's answer and whether the other open succeeded."""
    answers: dict[str, httpx.Response] = {}
    opened: list[bool] = []

    async def walletd_side() -> None:
        await trio.sleep(max(0.0, -offset))
        answers["walletd"] = await client.post("/v1/escrows/r1/session")

    async def outside() -> None:
        await trio.sleep(max(0.0, offset))
        try:
            await rpc.call("open_wallet", {"filename": file, "password": PASSWORD})
        except RpcCallError as exc:
            if exc.code != -1:
                raise
            opened.append(False)
        else:
            opened.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(walletd_side)
        nursery.start_soon(outside)
    return answers["walletd"], opened[0]


async def test_a_wallet_opened_elsewhere_at_the_same_moment_is_never_shared(
    tmp_path: Path, monerod: MonerodProcess, make_multisig_sets: MultisigSetFactory
) -> None:
    """An outside wallet-rpc opens the vendor wallet at about the moment walletd opens the
    escrow's session, each side first by turns (wallet-rpc's own lock check lets both opens
    succeed then): whenever walletd answers with an open session, its own child is the only
    holder of the vendor keys-file lock, never the outside process; when walletd refuses, it
    holds the lock nowhere. What no check of walletd's can see (and this test only counts): an
    outside open that lost the lock's re-take to walletd's child is open with no lock at all."""
    daemon = WalletdProcess(tmp_path / "w", monerod.daemon_address, monitor={"enabled": False})
    (s,) = await make_multisig_sets.acreate(daemon.wallet_dir, 1, PASSWORD)
    # The outside process opens as fast as walletd's children do, so their loads can meet.
    fast = prepare_fast_open(tmp_path / "fast", wanted=True)
    with daemon, trio.fail_after(600):
        async with daemon.client() as client:
            assert (await client.post("/v1/escrows", json=_adopt_body("r1", s))).status_code == 201
            assert (await client.delete("/v1/escrows/r1/session")).json()["closed"] is True
            keys = daemon.wallet_dir / f"{s.files['vendor']}.keys"
            other = WalletRpcProcess(
                wallet_dir=daemon.wallet_dir,
                work_dir=tmp_path / "other",
                daemon_address=monerod.daemon_address,
                extra_env=fast.env(),
            )
            with other:
                await trio.to_thread.run_sync(other.wait_ready)
                rpc = other.client()
                outcomes: collections.Counter[tuple[int, bool]] = collections.Counter()
                try:
                    for offset in random.sample(RACE_OFFSETS, len(RACE_OFFSETS)):
                        answer, outside_opened = await _race(client, rpc, s.files["vendor"], offset)
                        holders = lock_holders(keys)
                        outcomes[(answer.status_code, outside_opened)] += 1
                        why = "" if answer.status_code == 200 else answer.json()["error"]["message"]
                        print(
                            f"offset {offset:+.2f}: walletd {answer.status_code} {why!r}, outside "
                            f"{'opened' if outside_opened else 'refused'}, holders {set(holders)}"
                        )
                        if answer.status_code == 200:
                            assert other.pid not in holders, (offset, answer.text, holders)
                            assert holders, "walletd's open holds no keys-file lock"
                        else:
                            assert holders <= {other.pid}, (offset, answer.text, holders)
                        assert (await client.delete("/v1/escrows/r1/session")).status_code == 200
                        with contextlib.suppress(NoWalletFile):
                            await rpc.call("close_wallet", {"autosave_current": False})
                finally:
                    await rpc.aclose()
                print("walletd status, outside opened -> rounds:", dict(outcomes))
