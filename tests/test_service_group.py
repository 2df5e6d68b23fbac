"""The service group: its services start in the order listed and stop in the declared stages.

`walletd.app` lists every service once, with the stage of a graceful stop at which it stops;
these tests hold the group to that list: the start order, the stage order (intake, sessions,
events, leases, the rest), what each way of stopping does, and the bound on a stage.
"""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from walletd.daemon.services import Service, ServiceGroup, Stage


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def service(self, name: str, *, ends_when_drained: trio.Event | None = None) -> object:
        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            self.lines.append(f"start {name}")
            task_status.started()
            try:
                if ends_when_drained is not None:
                    await ends_when_drained.wait()
                else:
                    await trio.sleep_forever()
            finally:
                self.lines.append(f"end {name}")

        return run

    def step(self, name: str) -> object:
        async def step(left: float) -> None:
            self.lines.append(f"step {name}")
            await trio.lowlevel.checkpoint()

        return step


async def test_services_start_in_list_order_and_stop_stage_by_stage(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Each service starts after the one before it said it was ready; a stop cancels the
    intake first (waiting for a `wait` service to end), then runs the sessions' step, drains
    the event writer and waits for it, runs the leases' step, and cancels the rest last."""
    log = _Log()
    drained = trio.Event()
    group = ServiceGroup(
        [
            Service(
                "events",
                log.service("events", ends_when_drained=drained),  # type: ignore[arg-type]
                Stage.EVENTS,
                drain=drained.set,
            ),
            Service("pool", log.service("pool"), Stage.LAST),  # type: ignore[arg-type]
            Service(
                "registry",
                log.service("registry"),  # type: ignore[arg-type]
                Stage.LAST,
                steps=((Stage.SESSIONS, log.step("close sessions")),),  # type: ignore[arg-type]
            ),
            Service(
                "cluster",
                log.service("cluster"),  # type: ignore[arg-type]
                Stage.LAST,
                steps=((Stage.LEASES, log.step("release leases")),),  # type: ignore[arg-type]
            ),
            Service("monitor", log.service("monitor"), Stage.INTAKE),  # type: ignore[arg-type]
            Service("server", log.service("server"), Stage.INTAKE, wait=True),  # type: ignore[arg-type]
        ]
    )
    async with trio.open_nursery() as nursery:
        await group.start(nursery)
        assert log.lines == [
            "start events",
            "start pool",
            "start registry",
            "start cluster",
            "start monitor",
            "start server",
        ]
        log.lines.clear()
        await group.stop(trio.current_time() + 30)
        await trio.testing.wait_all_tasks_blocked()  # the services cancelled last end
        # The intake: both cancelled, the server waited for before the next stage.
        assert sorted(log.lines[:2]) == ["end monitor", "end server"]
        assert log.lines[2:5] == [
            "step close sessions",
            "end events",  # drained, not cancelled: it wrote what it had, then ended
            "step release leases",
        ]
        assert sorted(log.lines[5:]) == ["end cluster", "end pool", "end registry"]
        nursery.cancel_scope.cancel()


async def test_a_stage_waits_no_longer_than_the_stop_is_bounded(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A service waited for at the intake that never ends holds the stop only until its
    deadline; the later stages still run, each given at least its floor."""
    log = _Log()

    async def stuck(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        with trio.CancelScope(shield=True):  # ignores the cancel, as a hung call would
            await trio.sleep(1000)

    group = ServiceGroup(
        [
            Service("server", stuck, Stage.INTAKE, wait=True),
            Service(
                "cluster",
                log.service("cluster"),  # type: ignore[arg-type]
                Stage.LAST,
                steps=((Stage.LEASES, log.step("release leases")),),  # type: ignore[arg-type]
            ),
        ]
    )
    async with trio.open_nursery() as nursery:
        await group.start(nursery)
        started = trio.current_time()
        await group.stop(started + 10)
        assert trio.current_time() - started < 11  # the deadline, and the leases' floor of 0.5 s
        assert "step release leases" in log.lines
        nursery.cancel_scope.cancel()
