"""A session's mailbox: how the registry and callers reach the actor, and how it answers them.

A caller sends a message with a one-slot reply channel and waits on it (`SessionHandle.request`).
The session closes every reply however its serving ends, so a caller never waits on a session
that is gone: it gets `SessionClosed` and may open a new one (the registry does so).
"""

from __future__ import annotations

from typing import TypeVar, cast

import outcome
import structlog
import trio

from walletd.errors import SessionClosed
from walletd.sessions.messages import Message

__all__ = ["Envelope", "Reply", "SessionHandle", "answer"]

log = structlog.get_logger("walletd.sessions.session")  # its lines keep the session's logger name

R = TypeVar("R")
Reply = trio.MemorySendChannel[outcome.Outcome[object]]
Envelope = tuple[Message[object], Reply]


class SessionHandle:
    """The registry's and callers' side of a session: a mailbox and nothing else."""

    def __init__(self, escrow_id: str, send: trio.MemorySendChannel[Envelope]) -> None:
        self.escrow_id = escrow_id
        self._send = send
        self.address: str | None = None
        # The session holds a multisig info exchange that a payout may use (`PreExchange`).
        self.exchanged = False

    async def request(self, message: Message[R]) -> R:
        """Send `message` and wait for its reply; SessionClosed if the session is gone."""
        reply_send, reply_recv = trio.open_memory_channel[outcome.Outcome[object]](1)
        try:
            await self._send.send((message, reply_send))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SessionClosed(self.escrow_id) from None
        with reply_recv:
            try:
                result = await reply_recv.receive()
            except trio.EndOfChannel:
                raise SessionClosed(self.escrow_id) from None
        # The session answers each message with its declared reply type (`_dispatch`).
        return cast("R", result.unwrap())

    def tell(self, message: Message[object]) -> bool:
        """Deliver `message` without waiting for a reply (Leave); False if the inbox is gone."""
        reply_send, _ = trio.open_memory_channel[outcome.Outcome[object]](1)
        try:
            self._send.send_nowait((message, reply_send))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


def answer(reply: Reply, result: outcome.Outcome[object]) -> None:
    """Answer a caller. It may have timed out and gone: that must never crash the actor."""
    try:
        reply.send_nowait(result)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        log.debug("reply dropped: caller gone")
