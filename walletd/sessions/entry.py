"""The registry's record of one session: its state, its callers, and its place in LRU order."""

from __future__ import annotations

import enum

import attrs
import trio

from walletd.errors import Conflict
from walletd.sessions.handles import SessionSpec
from walletd.sessions.mailbox import SessionHandle

__all__ = ["MONEY_HOLD", "Entry", "State"]

# A session a money-moving call used last is held for money this long: it spans the gap between
# a payout's steps (a database write, a daemon call), so a read does not take the session the
# payout is about to use again (measured: 5 opens per payout under read pressure without it);
# a finished payout's session is evictable by reads again soon after.
MONEY_HOLD = 10.0


class State(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    LEAVING = "leaving"


@attrs.define
class Entry:
    escrow_id: str
    created_at: float
    spec: SessionSpec  # what the session opens: a caller with another spec is refused
    state: State = State.OPENING
    handle: SessionHandle | None = None
    ready: trio.Event = attrs.field(factory=trio.Event)
    closed: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None
    opened_at: float | None = None
    last_api_use: float | None = None
    last_money_use: float | None = None  # a payout's call or a client's money-moving one
    money_last: bool = False  # its last call moved money (any other call ends the hold)
    inflight: int = 0
    waiting: int = 0  # callers waiting for its opening: a session they asked for is not idle
    leave_reason: str | None = None
    leave_when_open: str | None = None  # a restart asked for while it was opening
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def check_spec(self, spec: SessionSpec | None) -> None:
        """Conflict if the caller names wallets other than those this session opens. A leaving
        entry is no one's to share: the caller waits for it to close and opens its own."""
        if spec is not None and self.state is not State.LEAVING and spec != self.spec:
            raise Conflict(
                f"escrow {self.escrow_id!r} has a session on other wallets "
                "(another request is registering this escrow id)"
            )

    def last_use(self) -> float | None:
        """The last API or money-moving call (the monitor's do not count)."""
        uses = [t for t in (self.last_api_use, self.last_money_use) if t is not None]
        return max(uses) if uses else None

    def held_for_money_until(self) -> float | None:
        """Until when only a money-moving caller may evict it: its last call moved money."""
        money = self.last_money_use
        return money + MONEY_HOLD if money is not None and self.money_last else None

    def lru_key(self, now: float) -> tuple[bool, bool, float]:
        # Monitor-only sessions leave first; sessions held for money leave last.
        until, used = self.held_for_money_until(), self.last_use()
        held = until is not None and now < until
        return (held, used is not None, used if used is not None else self.created_at)
