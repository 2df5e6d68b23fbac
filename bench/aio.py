"""Small trio helpers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

__all__ = ["in_batches"]

# Session opens are CPU-bound (wallet-rpc makes an RSA-4096 key per open): a few at a time keeps
# both cores busy without queueing dozens of opens behind each other until they time out.
OPEN_BATCH = 3


async def in_batches(
    calls: Sequence[Callable[[], Awaitable[object]]], size: int = OPEN_BATCH
) -> None:
    """Run `calls` concurrently, `size` at a time (each batch waits for the previous one)."""
    for start in range(0, len(calls), size):
        async with trio.open_nursery() as nursery:
            for call in calls[start : start + size]:
                nursery.start_soon(call)
