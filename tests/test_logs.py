"""walletd's log lines as journald and an operator's tools see them."""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import structlog
import trio

from tests.fakes import FakeDaemon, call, fake_app, fake_pool, make_fake_multisig, start
from walletd.ops.logs import configure_logging
from walletd.testing.fake_chain import FakeWalletWorld
from walletd.testing.fake_pool import FakePool

REPO = Path(__file__).resolve().parents[1]
PREFIX = re.compile(r"^<([0-7])>")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


def _journal(monkeypatch: pytest.MonkeyPatch, stream: IO[str]) -> None:
    """Make `stream` look like the journal stream systemd hands a service as its stderr."""
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def _log_each_level() -> None:
    log = structlog.get_logger("walletd.test")  # a fresh logger: sees this configuration
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")
    log.error("an error line")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("an exception line")
    log.critical("a critical line")


@pytest.mark.usefixtures("restore_logging")
def test_under_systemd_each_json_line_carries_its_syslog_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stderr on the journal ($JOURNAL_STREAM names it), each line starts with its syslog
    priority (sd-daemon(3): <3> error, <4> warning, <6> info, <7> debug), which journald strips
    and files the line under, so `journalctl -p err` shows errors; what is left is one JSON
    object, as before."""
    with (tmp_path / "journal").open("w+") as stream:
        _journal(monkeypatch, stream)
        configure_logging("debug", "json", stream=stream)
        _log_each_level()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert len(lines) == 6, lines
    seen = []
    for line in lines:
        match = PREFIX.match(line)
        assert match, line
        entry = json.loads(line[match.end() :])  # what journald keeps as MESSAGE
        seen.append((entry["event"], entry["level"], int(match.group(1))))
    assert seen == [
        ("a debug line", "debug", 7),
        ("an info line", "info", 6),
        ("a warning line", "warning", 4),
        ("an error line", "error", 3),
        ("an exception line", "error", 3),
        ("a critical line", "critical", 2),
    ]


@pytest.mark.usefixtures("restore_logging")
def test_console_lines_under_systemd_are_prefixed_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-line console entry (a traceback) has the prefix on every line: journald files
    each line on its own, and an unprefixed one would be filed as info."""
    with (tmp_path / "journal").open("w+") as stream:
        _journal(monkeypatch, stream)
        configure_logging("info", "console", stream=stream)
        log = structlog.get_logger("walletd.test")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("it failed")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert len(lines) > 3, lines
    assert all(line.startswith("<3>") for line in lines), lines


@pytest.mark.usefixtures("restore_logging")
def test_no_prefix_off_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $JOURNAL_STREAM, or when stderr is not the stream it names (a unit that sends
    stderr to a file keeps the variable), lines are plain JSON."""
    with (tmp_path / "other").open("w+") as other, (tmp_path / "log").open("w+") as stream:
        elsewhere = f"{os.fstat(other.fileno()).st_dev}:{os.fstat(other.fileno()).st_ino}"
        for env in (None, "bogus", elsewhere):
            if env is None:
                monkeypatch.delenv("JOURNAL_STREAM", raising=False)
            else:
                monkeypatch.setenv("JOURNAL_STREAM", env)
            configure_logging("info", "json", stream=stream)
            structlog.get_logger("walletd.test").error("plain", env=env)
        stream.seek(0)
        lines = stream.read().splitlines()
    assert [json.loads(line)["env"] for line in lines] == [None, "bogus", elsewhere]


def _event_names() -> Iterator[tuple[str, int, str]]:
    """(file, line, event) of every `log.<level>("event", ...)` call in walletd."""
    for path in sorted((REPO / "walletd").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.func.attr in ("debug", "info", "warning", "error", "exception", "critical")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                yield str(path.relative_to(REPO)), node.lineno, node.args[0].value


def test_event_names_are_lowercase_words() -> None:
    """Every event name in walletd is in one style: lowercase words ("session opened",
    "http request"), not snake_case identifiers ("http_request") nor capitalised sentences;
    names of things (close_wallet, SIGTERM) may appear inside."""
    events = list(_event_names())
    assert len(events) > 50
    identifier = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)+$")
    bad = [
        f"{path}:{line}: {event!r}"
        for path, line, event in events
        if identifier.match(event) or not event[:1].islower()
    ]
    assert not bad, "\n".join(bad)


async def test_a_session_labels_its_processes_while_it_holds_their_wallets(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A session marks each process with its escrow and role once the wallet is open there
    (`wallet_of`: what the pool's log lines about that process name), and clears the mark
    once the wallet is closed and the process goes back to the pool as a spare."""
    world = FakeWalletWorld()
    ready = await make_fake_multisig(world, "l1")
    app = fake_app(tmp_path, world, FakePool(world), chain=FakeDaemon(world), idle_ttl=10**9)
    async with trio.open_nursery() as nursery:
        await start(nursery, app)
        assert (await call(app, "POST", "/v1/escrows", ready.adopt_body("l1")))[0] == 201
        pool = fake_pool(app)
        held = list(pool.in_use.values())
        assert sorted(p.wallet_of or ("", "") for p in held) == [
            ("l1", "arbiter"),
            ("l1", "buyer"),
            ("l1", "vendor"),
        ]
        assert (await call(app, "DELETE", "/v1/escrows/l1/session"))[0] == 200
        assert not pool.in_use
        assert [p.wallet_of for p in held] == [None, None, None]
        nursery.cancel_scope.cancel()
