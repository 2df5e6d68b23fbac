"""How a fake wallet-rpc process is reached: in-process through httpx, or over real TCP.

`FakeTransport` plugs a `FakeWalletRpc` into `rpc.WalletRpc` with no sockets, so trio's autojump
clock skips its delays; `serve_tcp` serves one over loopback HTTP/1.1 for the benchmark and the
transport tests. Both turn `ProcessGone` into what a client of a real dead process sees.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import h11
import httpx
import trio

from walletd.testing.fake_rpc_wire import ProcessGone

if TYPE_CHECKING:
    from walletd.testing.fake_wallet_rpc import FakeWalletRpc


class FakeTransport(httpx.AsyncBaseTransport):
    """Routes httpx requests to a `FakeWalletRpc` in-process, honouring the read timeout.

    A dead process gives `httpx.ConnectError` (or `RemoteProtocolError` for a call it dropped),
    a silent one `httpx.ReadTimeout`: the errors httpx raises against a real process.
    """

    def __init__(self, fake: FakeWalletRpc) -> None:
        self.fake = fake

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                answer = await self.fake.handle_http(
                    request.method, request.url.path, request.headers, body
                )
        except trio.TooSlowError as exc:
            raise httpx.ReadTimeout("fake wallet-rpc did not answer", request=request) from exc
        except ProcessGone as exc:
            if exc.mid_call:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                ) from exc
            raise httpx.ConnectError("All connection attempts failed", request=request) from exc
        return httpx.Response(
            answer.status, headers=list(answer.headers), content=answer.body, request=request
        )


async def serve_tcp(
    fake: FakeWalletRpc,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    instant: bool = True,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `fake` over HTTP/1.1 on a real socket until it dies (or the caller cancels).

    `instant` zeroes the fake's delays, for a benchmark that wants wallet-rpc's protocol with
    none of its cost. Reports the bound port through `task_status`.
    """
    if instant:
        fake.open_delay = fake.create_delay = fake.call_delay = 0.0
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(trio.serve_listeners, partial(_serve_connection, fake), listeners)
        )
        task_status.started(int(listeners[0].socket.getsockname()[1]))
        await fake.wait_dead()
        nursery.cancel_scope.cancel()  # a dead process refuses connections


async def _serve_connection(fake: FakeWalletRpc, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _next_event(conn, stream)
            if not isinstance(request, h11.Request):
                return
            body = bytearray()
            while isinstance(event := await _next_event(conn, stream), h11.Data):
                body += event.data
            if not isinstance(event, h11.EndOfMessage):
                return
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            answer = await fake.handle_http(
                request.method.decode("ascii"),
                request.target.decode("ascii"),
                headers,
                bytes(body),
            )
            response_headers = [*answer.headers, ("content-length", str(len(answer.body)))]
            for out in (
                h11.Response(status_code=answer.status, headers=response_headers),
                h11.Data(data=answer.body),
                h11.EndOfMessage(),
            ):
                data = conn.send(out)
                if data:
                    await stream.send_all(data)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (ProcessGone, h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the peer or the process went away: drop the connection
    finally:
        await stream.aclose()


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))
