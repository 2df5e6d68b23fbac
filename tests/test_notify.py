"""Tests of walletd.ops.notify: the sd_notify datagrams walletd sends to systemd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from walletd.ops import notify


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd, with $NOTIFY_SOCKET pointing at it."""
    path = tmp_path / "notify"
    short = None
    if len(os.fsencode(path)) > 100:  # AF_UNIX paths are limited to about 107 bytes
        short = tempfile.mkdtemp(prefix="wd-", dir="/tmp")
        path = Path(short) / "notify"
    sock = _receiver(os.fspath(path))
    monkeypatch.setenv("NOTIFY_SOCKET", os.fspath(path))
    try:
        yield sock
    finally:
        sock.close()
        if short:
            shutil.rmtree(short, ignore_errors=True)


def _messages(sock: socket.socket, count: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(count)]


def test_state_messages(manager: socket.socket) -> None:
    """Each helper sends exactly its documented assignment in one datagram."""
    assert notify.ready()
    assert notify.stopping()
    assert notify.watchdog()
    assert notify.status("3 escrows")
    assert notify.notify("EXTEND_TIMEOUT_USEC=5000000")
    assert _messages(manager, 5) == [
        "READY=1",
        "STOPPING=1",
        "WATCHDOG=1",
        "STATUS=3 escrows",
        "EXTEND_TIMEOUT_USEC=5000000",
    ]


def test_ready_with_status_and_newlines(manager: socket.socket) -> None:
    """READY can carry STATUS; a newline in the text cannot inject another assignment."""
    notify.ready("serving\nWATCHDOG=trigger")
    notify.status("a\nb")
    assert _messages(manager, 2) == ["READY=1\nSTATUS=serving WATCHDOG=trigger", "STATUS=a b"]


def test_reloading_carries_monotonic_usec(manager: socket.socket) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC, a current CLOCK_MONOTONIC time in microseconds."""
    assert notify.reloading()
    first, second = _messages(manager, 1)[0].split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert abs(int(value) - time.monotonic_ns() // 1000) < 5_000_000


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET starting with '@' names a Linux abstract socket."""
    name = f"walletd-test-{os.getpid()}"
    sock = _receiver("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234", "relative/path"])
def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """Without a usable NOTIFY_SOCKET (not under systemd) nothing is sent and False is returned."""
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert not notify.ready()
    assert not notify.watchdog()


def test_nobody_listening_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET that nobody listens on makes notify() return False instead of raising."""
    monkeypatch.setenv("NOTIFY_SOCKET", os.fspath(tmp_path / "gone"))
    assert not notify.stopping()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    """WATCHDOG_USEC gives the interval in seconds, only when WATCHDOG_PID is unset or ours."""
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() if pid == "self" else os.getpid() + 1))
    assert notify.watchdog_interval() == expected


async def test_watchdog_loop_pings_at_half_interval(
    manager: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    """watchdog_loop pings at once and then every interval/2 until cancelled."""
    with trio.move_on_after(25):  # virtual time: pings at 0, 10 and 20 s
        await notify.watchdog_loop(20.0)
    manager.setblocking(False)
    received = []
    while True:
        try:
            received.append(manager.recv(100))
        except BlockingIOError:
            break
    assert received == [b"WATCHDOG=1"] * 3


# ---- the daemon's use of it ----------------------------------------------------------------------


async def _next_message(sock: trio.socket.SocketType) -> str:
    with trio.fail_after(10):
        return (await sock.recv(4096)).decode()


async def test_app_reports_ready_reload_and_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    """App.run: READY only after the socket is bound and recovery is done; SIGHUP is wrapped in
    RELOADING/READY; shutdown starts with STOPPING; WATCHDOG pings when WATCHDOG_USEC is set."""
    from tests.fakes import fake_app
    from walletd.testing.fake_chain import FakeWalletWorld
    from walletd.testing.fake_pool import FakePool

    root = Path(tempfile.mkdtemp(prefix="wd-", dir="/tmp"))  # short: AF_UNIX path limit
    try:
        manager = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await manager.bind(os.fspath(root / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", os.fspath(root / "notify"))
        monkeypatch.setenv("WATCHDOG_USEC", "600000000")  # 10 min: one ping at start only
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        world = FakeWalletWorld()
        app = fake_app(root, world, FakePool(world, open_delay=0, create_delay=0))
        gate = trio.Event()
        real_recover = app.lifecycle.recover

        async def slow_recover() -> None:
            await gate.wait()
            await real_recover()

        monkeypatch.setattr(app.lifecycle, "recover", slow_recover)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            assert app.config.daemon.socket_path.is_socket()
            assert await _next_message(manager) == "WATCHDOG=1"
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.2) as early:
                await manager.recv(4096)  # everything else waits: a READY would be here now
            assert early.cancelled_caught, "READY before recovery finished"
            gate.set()
            ready = await _next_message(manager)
            assert ready.startswith("READY=1\nSTATUS=serving ")
            await trio.testing.wait_all_tasks_blocked()  # the signal receiver is installed
            os.kill(os.getpid(), signal.SIGHUP)
            assert (await _next_message(manager)).startswith("RELOADING=1\nMONOTONIC_USEC=")
            assert await _next_message(manager) == "READY=1"
            app.request_stop()
            assert await _next_message(manager) == "STOPPING=1"
            await app.stopped.wait()
        manager.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
