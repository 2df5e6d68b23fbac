"""walletd's own HTTP/1.1 transport for wallet-rpc and monerod calls, over real loopback sockets.

Every way a server can misbehave must end as the same typed error the default httpx transport
gave (rpc maps them), and keep-alive must reuse one connection without ever reading a
stale one.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from functools import partial

import h11
import pytest
import trio

from walletd.errors import RpcAuthError, RpcTimeout, RpcUnreachable
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_transport import serve_tcp
from walletd.testing.fake_wallet_rpc import FakeWalletRpc
from walletd.wallets.rpc import DaemonRpc, WalletRpc


class RawServer:
    """A JSON-RPC server on 127.0.0.1 that answers `{"height": n}` (n counts requests) or
    misbehaves as told; it counts the TCP connections it accepted."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.requests = 0

    async def serve(self, *, task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if not isinstance(event, h11.EndOfMessage):
                continue
            self.requests += 1
            if not await self._answer(stream, conn):
                return
            conn.start_next_cycle()

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        match self.behaviour:
            case "hang":
                await trio.sleep_forever()
            case "close":
                await stream.aclose()
                return False
            case "garbage":
                await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
                await stream.aclose()
                return False
            case "truncated":
                await stream.send_all(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"res')
                await stream.aclose()
                return False
        body = b'{"jsonrpc":"2.0","id":0,"result":{"height":%d}}' % self.requests
        status, headers = 200, [("content-length", str(len(body)))]
        parts = [body]
        if self.behaviour == "500":
            status = 500
        elif self.behaviour == "chunked":
            headers = [("transfer-encoding", "chunked")]
            parts = [body[:10], body[10:]]
        out = conn.send(h11.Response(status_code=status, headers=headers))
        for part in parts:
            out += conn.send(h11.Data(data=part))
        await stream.send_all(out + conn.send(h11.EndOfMessage()))
        if self.behaviour == "close_idle":
            await trio.sleep(0.05)
            await stream.aclose()  # the server drops the idle keep-alive connection
            return False
        return True


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def _client(
    nursery: trio.Nursery, behaviour: str, timeout: float = 2.0
) -> tuple[DaemonRpc, RawServer]:
    server = RawServer(behaviour)
    port = await nursery.start(server.serve)
    return DaemonRpc(f"http://127.0.0.1:{port}", timeout=timeout), server


async def test_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    client, server = await _client(nursery, "ok")
    heights = [(await client.call("get_info"))["height"] for _ in range(3)]
    assert (heights, server.connections) == ([1, 2, 3], 1)
    await client.aclose()


async def test_a_connection_the_server_closed_is_never_reused(nursery: trio.Nursery) -> None:
    client, server = await _client(nursery, "close_idle")
    for _ in range(3):
        assert (await client.call("get_info"))["height"] >= 1
        await trio.sleep(0.2)  # the server has closed the idle connection meanwhile
    assert server.connections == 3
    await client.aclose()


async def test_chunked_answers_are_read_whole(nursery: trio.Nursery) -> None:
    client, _ = await _client(nursery, "chunked")
    assert (await client.call("get_info"))["height"] == 1
    await client.aclose()


@pytest.mark.parametrize("behaviour", ["close", "garbage", "truncated", "500"])
async def test_broken_answers_are_unreachable(nursery: trio.Nursery, behaviour: str) -> None:
    client, _ = await _client(nursery, behaviour)
    for _ in range(2):  # and the client stays usable for the next call
        with pytest.raises(RpcUnreachable):
            await client.call("get_info")
    await client.aclose()


async def test_a_hung_server_times_out(nursery: trio.Nursery) -> None:
    client, _ = await _client(nursery, "hang", timeout=0.3)
    with pytest.raises(RpcTimeout):
        await client.call("get_info")
    await client.aclose()


async def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = DaemonRpc(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(RpcUnreachable):
        await client.call("get_info")
    await client.aclose()


async def test_cancelled_call_leaves_the_client_usable(nursery: trio.Nursery) -> None:
    client, server = await _client(nursery, "ok")
    server.behaviour = "hang"
    with trio.move_on_after(0.2):
        await client.call("get_info")
    server.behaviour = "ok"
    assert (await client.call("get_info"))["height"] == 2
    await client.aclose()


async def test_digest_auth_over_the_transport(nursery: trio.Nursery) -> None:
    fake = FakeWalletRpc(FakeWalletWorld(), user="u", password="p", require_auth=True)
    port = await nursery.start(partial(serve_tcp, fake, instant=True))
    good = WalletRpc(f"http://127.0.0.1:{port}", user="u", password="p", timeout=2)
    bad = WalletRpc(f"http://127.0.0.1:{port}", user="u", password="wrong", timeout=2)
    for _ in range(3):
        assert "version" in await good.call("get_version")
    with pytest.raises(RpcAuthError):
        await bad.call("get_version")
    await good.aclose()
    await bad.aclose()
