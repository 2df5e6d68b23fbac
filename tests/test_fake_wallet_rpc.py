"""The fake wallet-rpc keeps the semantics of monero-wallet-rpc that walletd's session manager uses.

Every test drives the fake through the real client, `walletd.wallets.rpc.WalletRpc`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from walletd.errors import NoWalletFile, RpcAuthError, RpcCallError, RpcTimeout, RpcUnreachable
from walletd.testing.fake_chain import FEE, FakeWalletWorld
from walletd.testing.fake_transport import FakeTransport, serve_tcp
from walletd.testing.fake_wallet_rpc import FakeWalletRpc
from walletd.wallets.rpc import WalletRpc

USER, PASSWORD = "walletd", "rpc-secret"
WALLET_PASSWORD = "pw"
Connect = Callable[..., WalletRpc]


@pytest.fixture
def world() -> FakeWalletWorld:
    return FakeWalletWorld()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """A factory of real clients plugged into fake processes; closes them all at the end."""
    clients: list[WalletRpc] = []

    def make(fake: FakeWalletRpc, *, password: str = PASSWORD, timeout: float = 30.0) -> WalletRpc:
        client = WalletRpc(
            fake.url, user=USER, password=password, timeout=timeout, transport=FakeTransport(fake)
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def _open(rpc: WalletRpc, name: str, password: str = WALLET_PASSWORD) -> dict[str, Any]:
    return await rpc.call("open_wallet", {"filename": name, "password": password})


async def test_lock_conflict_between_processes(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """A wallet open in one process fails to open in another with -1 "Failed to open wallet"."""
    world.add_wallet("w1", "pw")
    a, b = FakeWalletRpc(world), FakeWalletRpc(world)
    await _open(connect(a), "w1")
    with pytest.raises(RpcCallError) as info:
        await _open(connect(b), "w1")
    assert (info.value.code, info.value.rpc_message) == (-1, "Failed to open wallet")
    assert world.locks == {"w1": a.pid}


async def test_open_errors_and_reopen(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """Missing wallet, bad password or "/" give -1 and keep the open wallet; reopening works."""
    a_wallet = world.add_wallet("a", "pw")
    world.add_wallet("b", "pw")
    fake = FakeWalletRpc(world)
    rpc = connect(fake)
    await _open(rpc, "a")
    for name, password, message in [
        ("missing", "pw", "Failed to open wallet"),
        ("b", "wrong", "Failed to open wallet"),
        ("../b", "pw", "Invalid filename"),
    ]:
        with pytest.raises(RpcCallError) as info:
            await _open(rpc, name, password)
        assert (info.value.code, info.value.rpc_message) == (-1, message)
    assert (await rpc.call("get_address"))["address"] == a_wallet.address
    await _open(rpc, "a")  # the wallet already open here
    assert world.stores["a"] == 3  # open_wallet stores the current wallet before loading
    await _open(rpc, "b")
    assert world.locks == {"b": fake.pid}


async def test_no_wallet_file_after_close(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """Every wallet call after close_wallet answers -13 "No wallet file"; the lock is released."""
    world.add_wallet("w1", "pw")
    rpc = connect(FakeWalletRpc(world))
    await _open(rpc, "w1")
    await rpc.call("close_wallet", {"autosave_current": True})
    with pytest.raises(NoWalletFile) as info:
        await rpc.call("get_balance", {"account_index": 0})
    assert info.value.code == -13
    assert world.locks == {}
    assert world.stores["w1"] == 1


async def test_one_call_at_a_time(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """A get_version sent during a 1.5 s open_wallet waits for it, as on the single RPC thread."""
    world.add_wallet("w1", "pw")
    fake = FakeWalletRpc(world, open_delay=1.5)
    rpc = connect(fake)
    finished: dict[str, float] = {}

    async def opener() -> None:
        await _open(rpc, "w1")
        finished["open"] = trio.current_time()

    async def version() -> None:
        await trio.sleep(0.1)
        await rpc.call("get_version")
        finished["version"] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(opener)
        nursery.start_soon(version)
    assert finished["open"] - start == pytest.approx(1.5)
    assert finished["version"] >= finished["open"]


async def test_timed_out_call_still_runs(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """A client timeout does not stop the process: the open completes and holds the lock."""
    world.add_wallet("w1", "pw")
    fake = FakeWalletRpc(world, open_delay=3.0)
    with pytest.raises(RpcTimeout):
        await connect(fake, timeout=1.0).call("open_wallet", {"filename": "w1", "password": "pw"})
    await trio.sleep(5)
    assert world.locks == {"w1": fake.pid}
    assert (await connect(fake).call("get_address"))["address"] == world.wallets["w1"].address


async def test_kill_releases_lock_and_loses_unsaved_state(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """After kill() calls raise RpcUnreachable, the lock is gone and unstored state is lost."""
    world.add_wallet("w1", "pw")
    a, b = FakeWalletRpc(world), FakeWalletRpc(world)
    rpc_a = connect(a)
    await _open(rpc_a, "w1")
    await rpc_a.call("auto_refresh", {"enable": False})
    world.mine(5)
    assert (await rpc_a.call("refresh"))["blocks_fetched"] == 5
    a.kill()
    with pytest.raises(RpcUnreachable):
        await rpc_a.call("get_version")
    assert world.locks == {}
    rpc_b = connect(b)
    await _open(rpc_b, "w1")
    await rpc_b.call("auto_refresh", {"enable": False})
    assert (await rpc_b.call("get_height"))["height"] == world.height - 5  # refresh not stored


async def test_kill_drops_a_call_in_progress(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """A call running when the process dies fails with RpcUnreachable, not a timeout."""
    world.add_wallet("w1", "pw")
    fake = FakeWalletRpc(world)
    rpc = connect(fake)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_killer, fake)
        with pytest.raises(RpcUnreachable):
            await _open(rpc, "w1")
    assert world.locks == {}


async def _killer(fake: FakeWalletRpc) -> None:
    await trio.sleep(0.5)
    fake.kill()


async def test_hang_times_out_until_killed(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """A hung process gives RpcTimeout and keeps its lock until it is killed."""
    world.add_wallet("w1", "pw")
    fake = FakeWalletRpc(world)
    await _open(connect(fake), "w1")
    fake.hang()
    with pytest.raises(RpcTimeout):
        await connect(fake, timeout=5.0).call("get_balance")
    assert world.locks == {"w1": fake.pid}
    fake.kill()
    assert world.locks == {}


async def test_stop_wallet_stores_then_exits(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """stop_wallet: -13 with no wallet; else it stores, answers, and the lock goes 0.5 s later."""
    world.add_wallet("w1", "pw")
    fake = FakeWalletRpc(world)
    rpc = connect(fake)
    with pytest.raises(NoWalletFile):
        await rpc.call("stop_wallet")
    await _open(rpc, "w1")
    await rpc.call("stop_wallet")
    assert world.stores["w1"] == 1
    assert world.locks == {"w1": fake.pid}
    with pytest.raises(RpcUnreachable):
        await rpc.call("get_version")
    await trio.sleep(0.6)
    assert world.locks == {}
    assert fake.dead


async def test_rpc_errors(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """-21, -8, -32601, -32700, injected faults and truncated caches answer like wallet-rpc."""
    fake = FakeWalletRpc(world)
    rpc = connect(fake)
    params = {"filename": "w1", "password": "pw", "language": "English"}
    await rpc.call("create_wallet", params)
    expected = [
        ("create_wallet", params, -21, "Cannot create wallet. Already exists."),
        ("get_transfer_by_txid", {"txid": "ab" * 32}, -8, "Transaction not found."),
        ("no_such_method", {}, -32601, "Method not found"),
    ]
    for method, call_params, code, message in expected:
        with pytest.raises(RpcCallError) as info:
            await rpc.call(method, call_params)
        assert (info.value.code, info.value.rpc_message) == (code, message)
    fake.fail_next("get_balance", -38, "no connection to daemon")
    with pytest.raises(RpcCallError) as info:
        await rpc.call("get_balance")
    assert info.value.code == -38
    assert (await rpc.call("get_balance"))["balance"] == 0
    async with httpx.AsyncClient(transport=FakeTransport(fake), base_url=fake.url) as raw:
        answer = (await raw.post("/json_rpc", content=b"{not json")).json()
    assert answer["error"]["code"] == -32700
    await rpc.call("close_wallet")
    world.truncate_cache("w1")
    with pytest.raises(RpcCallError):
        await _open(rpc, "w1")
    world.repair("w1")
    await _open(rpc, "w1")
    assert world.call_count("open_wallet", fake.pid) == 2


async def test_digest_auth(world: FakeWalletWorld, connect: Connect) -> None:
    """With require_auth the digest credentials are checked: a wrong password is RpcAuthError."""
    fake = FakeWalletRpc(world, user=USER, password=PASSWORD, require_auth=True)
    assert (await connect(fake).call("get_version"))["version"] > 0
    with pytest.raises(RpcAuthError):
        await connect(fake, password="wrong").call("get_version")


async def test_credit_refresh_and_confirmations(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """A wallet sees money once it refreshes; it unlocks after 10 confirmations."""
    world.add_wallet("w1", "pw")
    rpc = connect(FakeWalletRpc(world))
    await _open(rpc, "w1")
    await rpc.call("auto_refresh", {"enable": False})
    txid = world.credit("w1", 5_000, unlocked=False)
    assert (await rpc.call("get_balance"))["balance"] == 0
    assert (await rpc.call("refresh"))["received_money"] is True
    balance = await rpc.call("get_balance")
    assert (balance["balance"], balance["unlocked_balance"], balance["blocks_to_unlock"]) == (
        5_000,
        0,
        9,
    )
    world.mine(9)
    await rpc.call("refresh")
    transfer = (await rpc.call("get_transfer_by_txid", {"txid": txid}))["transfer"]
    assert (transfer["type"], transfer["amount"], transfer["confirmations"]) == ("in", 5_000, 10)
    assert (await rpc.call("get_balance"))["unlocked_balance"] == 5_000


async def test_multisig_recipe(
    world: FakeWalletWorld, connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    """prepare, make, exchange x2, then import before spending; a resubmitted txset spends once."""
    roles = ("buyer", "vendor", "arbiter")
    rpcs = {role: connect(FakeWalletRpc(world)) for role in roles}
    for role, rpc in rpcs.items():
        await rpc.call("create_wallet", {"filename": role, "password": "pw", "language": "English"})
        await rpc.call("auto_refresh", {"enable": False})

    async def each(method: str, params: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        return {role: await rpcs[role].call(method, params(role)) for role in roles}

    def others(values: dict[str, Any], key: str) -> Callable[[str], dict[str, Any]]:
        return lambda role: {
            key: [values[r]["multisig_info"] for r in roles if r != role],
            "password": "pw",
            "threshold": 2,
        }

    answers = await each("prepare_multisig", lambda _: {"enable_multisig_experimental": True})
    answers = await each("make_multisig", others(answers, "multisig_info"))
    answers = await each("exchange_multisig_keys", others(answers, "multisig_info"))
    assert {a["address"] for a in answers.values()} == {""}
    answers = await each("exchange_multisig_keys", others(answers, "multisig_info"))
    addresses = {a["address"] for a in answers.values()}
    assert len(addresses) == 1
    address = addresses.pop()
    assert address.startswith("4")
    assert len(address) == 95
    assert (await rpcs["arbiter"].call("is_multisig")) == {
        "multisig": True,
        "ready": True,
        "threshold": 2,
        "total": 3,
    }

    world.add_wallet("payee", "pw")
    payee = world.wallets["payee"].address
    world.credit(address, 1_000_000_000, unlocked=True)
    for rpc in rpcs.values():
        await rpc.call("refresh")
    buyer, vendor = rpcs["buyer"], rpcs["vendor"]
    spend = {"destinations": [{"address": payee, "amount": 400_000_000}]}
    with pytest.raises(RpcCallError) as info:
        await buyer.call("transfer", spend)
    assert (info.value.code, info.value.rpc_message) == (-16, "No transaction created")
    assert (await buyer.call("get_balance"))["multisig_import_needed"] is True

    infos = {role: (await rpcs[role].call("export_multisig_info"))["info"] for role in roles[:2]}
    assert (await buyer.call("import_multisig_info", {"info": [infos["vendor"]]}))["n_outputs"] == 1
    await vendor.call("import_multisig_info", {"info": [infos["buyer"]]})
    txset = (await buyer.call("transfer", spend))["multisig_txset"]

    with pytest.raises(RpcCallError) as info:
        await buyer.call("sign_multisig", {"tx_data_hex": txset})
    assert info.value.code == -35
    with pytest.raises(RpcCallError) as info:
        await vendor.call("submit_multisig", {"tx_data_hex": txset})
    assert (info.value.code, info.value.rpc_message) == (
        -33,
        "Not enough signers signed this transaction.",
    )
    signed = await vendor.call("sign_multisig", {"tx_data_hex": txset})
    first = await vendor.call("submit_multisig", {"tx_data_hex": signed["tx_data_hex"]})
    again = await vendor.call("submit_multisig", {"tx_data_hex": signed["tx_data_hex"]})
    assert first["tx_hash_list"] == again["tx_hash_list"] == signed["tx_hash_list"]
    assert sum(1 for tx in world.txs.values() if tx.sender == address) == 1

    world.mine(1)
    for rpc in rpcs.values():
        await rpc.call("refresh")
    vendor_balance = await vendor.call("get_balance")
    assert vendor_balance["balance"] == 1_000_000_000 - 400_000_000 - FEE
    assert vendor_balance["multisig_import_needed"] is True
    # The arbiter took no part in the export/import round: it counts the change but not the
    # spend, so its balance is too high.
    arbiter_balance = (await rpcs["arbiter"].call("get_balance"))["balance"]
    assert arbiter_balance == 1_000_000_000 + vendor_balance["balance"]
    payee_rpc = connect(FakeWalletRpc(world))
    await _open(payee_rpc, "payee")
    await payee_rpc.call("refresh")  # auto-refresh would only run 1 s after the open
    txid = first["tx_hash_list"][0]
    received = (await payee_rpc.call("get_transfer_by_txid", {"txid": txid}))["transfer"]
    assert (received["type"], received["amount"], received["confirmations"]) == (
        "in",
        400_000_000,
        1,
    )
    world.mine(3)
    await payee_rpc.call("refresh")
    received = (await payee_rpc.call("get_transfer_by_txid", {"txid": txid}))["transfer"]
    assert received["confirmations"] == 4


async def test_serve_tcp_over_loopback(world: FakeWalletWorld) -> None:
    """serve_tcp answers the real client over a real socket, digest auth included."""
    world.add_wallet("w1", "pw")
    fake = FakeWalletRpc(world, user=USER, password=PASSWORD, require_auth=True)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tcp, fake)
        rpc = WalletRpc(f"http://127.0.0.1:{port}", user=USER, password=PASSWORD, timeout=5.0)
        try:
            with trio.fail_after(5):
                assert (await rpc.call("get_version"))["release"] is True
                await _open(rpc, "w1")  # serve_tcp makes the fake instant
                assert (await rpc.call("get_address"))["address"] == world.wallets["w1"].address
                fake.kill()
                with pytest.raises(RpcUnreachable):
                    await rpc.call("get_version")
        finally:
            await rpc.aclose()
