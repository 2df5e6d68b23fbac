"""Structured logging: JSON lines for machines, readable lines in a terminal, no secrets in either.

The chain is structlog's production recipe (contextvars, level, ISO UTC time) plus `mask_secrets`,
which replaces the value of any key that looks like it holds a secret. trio copies contextvars into
child tasks, so binding `escrow_id` once in a session task labels everything that session logs.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict

__all__ = ["SECRET_KEY_PATTERN", "configure_logging", "mask_secrets", "set_level"]

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


def _filter_level(_logger: object, method: str, event_dict: EventDict) -> EventDict:
    if _LEVELS.get(method, logging.CRITICAL) < _threshold:  # "exception" logs as an error
        raise structlog.DropEvent
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process (call once at start-up)."""
    out = stream or sys.stderr
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
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
