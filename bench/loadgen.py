"""A lean HTTP/1.1 load generator for walletd's Unix socket, run as its own process.

`python -m bench.loadgen --socket S [--socket S2 ...] --path P [--path P2 ...] --connections N
--start-at T --warmup W --duration D --out FILE`

Each connection is a keep-alive stream that sends one GET and reads the answer before the next
(a closed loop, like N clients each waiting for its answer). Connection i (counted from
`--offset`) asks path i mod #paths on socket i mod #sockets: several sockets spread the clients
over several walletd hosts. The request bytes are built once and
the answer is parsed only as far as the status line and Content-Length: httpx costs ~0.3 ms of
CPU per request, which on 2 cores would make the client, not walletd, the bottleneck.

Only requests sent after T+W and answered by T+W+D count. The result file holds the count, the
errors, the latencies (microseconds) and this process's CPU time over the window.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import trio

__all__ = ["main"]


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("walletd closed the connection")
        self.buf += data

    async def response(self) -> int:
        """Read one answer; returns its HTTP status."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self.buf[:end]).lower()
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        total = end + 4 + length
        while len(self.buf) < total:
            await self._fill()
        del self.buf[:total]
        return status


async def _worker(
    sock: str, request: bytes, begin: float, end: float, lat_us: list[int], errors: list[str]
) -> None:
    conn = _Conn(await trio.open_unix_socket(sock))
    async with conn.stream:
        while (sent := time.perf_counter()) < end:
            await conn.stream.send_all(request)
            status = await conn.response()
            done = time.perf_counter()
            if sent >= begin and done <= end:
                if status == 200:
                    lat_us.append(round((done - sent) * 1e6))
                else:
                    errors.append(f"HTTP {status}")


async def _run(args: argparse.Namespace) -> dict[str, object]:
    # Wall-clock instants from the parent, on this process's perf_counter scale.
    offset = time.time() - time.perf_counter()
    begin = args.start_at + args.warmup - offset
    end = begin + args.duration
    lat_us: list[int] = []
    errors: list[str] = []
    requests = [
        f"GET {p} HTTP/1.1\r\nHost: walletd\r\nAccept: application/json\r\n\r\n".encode()
        for p in args.path
    ]
    await trio.sleep(max(0.0, args.start_at - time.time()))
    cpu: list[float] = []

    async def mark_cpu() -> None:
        for instant in (begin, end):
            await trio.sleep(max(0.0, instant - time.perf_counter()))
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append(usage.ru_utime + usage.ru_stime)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mark_cpu)
        for i in range(args.connections):
            request = requests[(args.offset + i) % len(requests)]
            sock = args.socket[(args.offset + i) % len(args.socket)]
            nursery.start_soon(_worker, sock, request, begin, end, lat_us, errors)
    return {
        "count": len(lat_us),
        "errors": len(errors),
        "first_errors": errors[:5],
        "duration": args.duration,
        "cpu_s": cpu[1] - cpu[0] if len(cpu) == 2 else None,
        "latencies_us": lat_us,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("--socket", action="append", required=True)
    p.add_argument("--path", action="append", required=True)
    p.add_argument("--offset", type=int, default=0, help="first path index for connection 0")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--start-at", type=float, required=True, help="time.time() to start at")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = trio.run(_run, args)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(args.out)


if __name__ == "__main__":
    main()
