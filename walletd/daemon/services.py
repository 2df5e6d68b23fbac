"""The service group: the daemon's long-running parts, started in one declared order and
stopped in declared stages, all within `daemon.shutdown_timeout`.

Each part is a `Service` in one list (`walletd.app` builds it): the list's order is the start
order (each is started, and has said it is ready, before the next starts: the socket server
comes last, so a client never reaches a half-started daemon), and each says at which `Stage`
of a graceful stop it is stopped, and how: cancelled, cancelled and then waited for (it
finishes what it has in flight), or drained (asked to finish by itself, then waited for).
A service may also have steps to run at earlier stages (`steps`): the registry closes every
session at SESSIONS, long before it is cancelled with the rest.

The stages run in order; each is bounded by what is left of the stop's deadline (with the floor
`Stage.floor`, so a late stage still gets a moment), except SESSIONS, whose step bounds itself.
A stop never waits past its bound: what is not done by then is cancelled.
"""

from __future__ import annotations

import enum
import math
import os
import threading
from collections.abc import Awaitable, Callable, Sequence

import attrs
import structlog
import trio

__all__ = ["Runner", "Service", "ServiceGroup", "Stage", "StopStep", "arm_exit_backstop"]

log = structlog.get_logger(__name__)

Runner = Callable[..., Awaitable[None]]  # called as run(task_status=...): nursery.start's way
StopStep = Callable[[float], Awaitable[None]]  # given the seconds left before the deadline


class Stage(enum.IntEnum):
    """The stages of a graceful stop, in order."""

    INTAKE = 1  # no new work: the API server (calls in flight finish), the monitor, monerod
    # failover (no switch while sessions close); a cluster host leaves the host list
    SESSIONS = 2  # every session stores and closes its wallets
    EVENTS = 3  # what the sessions announced while closing is written
    LEASES = 4  # a cluster hands back every lease: another host serves those escrows at once
    LAST = 5  # the rest: the lifecycle, the registry, the process pool (it stores, SIGTERMs and
    # SIGKILLs every child, bounded), the cluster's background parts (after the sessions)

    @property
    def floor(self) -> float | None:
        """The least time the stage gets, even past the deadline; None: its steps bound
        themselves (closing the sessions: `Registry.shutdown` has its own timeout)."""
        return _FLOORS[self]


_FLOORS: dict[Stage, float | None] = {
    Stage.INTAKE: 0.0,
    Stage.SESSIONS: None,
    Stage.EVENTS: 0.5,
    Stage.LEASES: 0.5,
    Stage.LAST: 0.0,
}


@attrs.frozen
class Service:
    """One long-running part of the daemon and how it stops.

    `stop`: the stage at which it is cancelled (None: it runs until the group itself ends, as
    /metrics does, still answering during the stop); `wait`: after the cancel, wait for it to
    end (within the stage's bound); `drain`: instead of a cancel, ask it to finish by itself,
    then wait for it; `steps`: what it does at earlier stages."""

    name: str
    run: Runner
    stop: Stage | None
    wait: bool = False
    drain: Callable[[], None] | None = None
    steps: tuple[tuple[Stage, StopStep], ...] = ()


@attrs.define(eq=False)
class _Running:
    service: Service
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)


class ServiceGroup:
    def __init__(self, services: Sequence[Service]) -> None:
        self._running = [_Running(service) for service in services]

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every service in order, each once it has said it is ready."""
        for running in self._running:
            await nursery.start(self._run, running)

    @staticmethod
    async def _run(running: _Running, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with running.scope:
                await running.service.run(task_status=task_status)
        finally:
            running.done.set()

    async def stop(self, deadline: float) -> None:
        """Stop the services stage by stage (see the module doc), shielded: a stop is never
        itself cancelled half way. `deadline` is on trio's clock."""
        with trio.CancelScope(shield=True):
            for stage in Stage:
                await self._stop_stage(stage, deadline)

    async def _stop_stage(self, stage: Stage, deadline: float) -> None:
        waited: list[trio.Event] = []
        for running in self._running:
            service = running.service
            if service.stop is not stage:
                continue
            if service.drain is not None:
                service.drain()
                waited.append(running.done)
            else:
                running.scope.cancel()
                if service.wait:
                    waited.append(running.done)
        steps = [step for r in self._running for at, step in r.service.steps if at is stage]
        if not waited and not steps:
            return
        left = deadline - trio.current_time()
        floor = stage.floor
        with trio.move_on_after(math.inf if floor is None else max(floor, left)):
            async with trio.open_nursery() as nursery:
                for event in waited:
                    nursery.start_soon(event.wait)
                for step in steps:
                    nursery.start_soon(step, left)


def arm_exit_backstop(after: float) -> None:
    """Last resort if something ignores every bound of a stop: the process exits `after`
    seconds from now anyway (children get SIGTERM through PDEATHSIG and store their wallets)."""
    timer = threading.Timer(after, _hard_exit, args=(after,))
    timer.daemon = True
    timer.start()


def _hard_exit(after: float) -> None:
    log.critical("shutdown overran its bound; exiting now", after_s=after)
    os._exit(70)
