"""Structured logging: JSON lines for machines, readable lines in a terminal, no secrets in either.

The chain is structlog's production recipe (contextvars, level, ISO UTC time) plus `mask_secrets`,
which replaces the value of any key that looks like it holds a secret. trio copies contextvars into
child tasks, so binding `escrow_id` once in a session task labels everything that session logs.

Under systemd, when stderr is the journal's stream (`$JOURNAL_STREAM` names its device and
inode), each line starts with its syslog priority as sd-daemon(3) describes (`<3>` error,
`<4>` warning, `<6>` info, `<7>` debug): journald takes the prefix off and files the line at that
priority, so `journalctl -p err` shows walletd's errors and the message itself stays one JSON
object. On a terminal or a file there is no prefix.

Event names are lowercase words ("session opened", "http request"); values go in keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import TextIO

import structlog
from structlog.typing import EventDict

__all__ = [
    "SECRET_KEY_PATTERN",
    "configure_logging",
    "enabled",
    "is_journal_stream",
    "mask_secrets",
    "set_level",
    "unlabelled",
]

# Keys whose values must never reach a log line, whatever the caller passed.
SECRET_KEY_PATTERN = re.compile(
    r"pass|secret|token|credential|seed|spend_key|view_key|private|auth|rpc_login|"
    r"multisig_info|tx_data_hex|txset|blob|key_image",
    re.IGNORECASE,
)
_MASK = "***"


def _mask_value(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: (_MASK if SECRET_KEY_PATTERN.search(str(k)) else _mask_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def mask_secrets(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask values under secret-looking keys, also inside nested dicts."""
    for key in list(event_dict):
        if key != "event" and SECRET_KEY_PATTERN.search(key):
            event_dict[key] = _MASK
        else:
            event_dict[key] = _mask_value(event_dict[key])
    return event_dict


# The level is checked by a processor rather than baked into the (cached) bound loggers, so that
# SIGHUP can change it for loggers already in use.
_LEVELS = {name.lower(): n for name, n in logging.getLevelNamesMapping().items()}
_threshold = logging.INFO


def set_level(level: str) -> None:
    """Log `level` and above from now on, in every logger (SIGHUP applies `log.level` here)."""
    global _threshold
    _threshold = _LEVELS[level.lower()]


def enabled(level: int) -> bool:
    """Whether an event at `level` (a `logging` level) would be written now: lets a hot path
    skip building an event the level filter would drop (the access log of every read)."""
    return level >= _threshold


def _filter_level(_logger: object, method: str, event_dict: EventDict) -> EventDict:
    if _LEVELS.get(method, logging.CRITICAL) < _threshold:  # "exception" logs as an error
        raise structlog.DropEvent
    return event_dict


@contextlib.contextmanager
def unlabelled() -> Iterator[None]:
    """Log without the calling task's bound context (its `escrow_id`) inside the block: for
    work the task does on behalf of nothing it is labelled with (a session starting a spare)."""
    saved = structlog.contextvars.get_contextvars()
    structlog.contextvars.clear_contextvars()
    try:
        yield
    finally:
        structlog.contextvars.bind_contextvars(**saved)


# syslog priorities (sd-daemon(3)), by structlog's level names.
_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def is_journal_stream(stream: TextIO) -> bool:
    """True if `stream` is the journal stream systemd connected (`$JOURNAL_STREAM` is
    "DEVICE:INODE" of it; a unit whose stderr was redirected elsewhere keeps the variable)."""
    device, sep, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no descriptor (a StringIO), or closed
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


class _PriorityPrefix:
    """Wraps the renderer: `<N>` before each line, N the syslog priority of the event's level
    (every line of a multi-line console entry, so journald files each at that priority)."""

    def __init__(self, renderer: structlog.typing.Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: object, method: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", method))
        rendered = self._renderer(logger, method, event_dict)
        assert isinstance(rendered, str), "walletd's renderers render text"
        prefix = f"<{_PRIORITY.get(level, 6)}>"
        return "\n".join(prefix + line for line in rendered.split("\n"))


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process (call once at start-up)."""
    out = stream or sys.stderr
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    if is_journal_stream(out):
        renderer = _PriorityPrefix(renderer)
    set_level(level)
    structlog.configure(
        processors=[
            _filter_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_secrets,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
