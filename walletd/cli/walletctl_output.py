"""walletctl's output for people: aligned tables, key-value lists, XMR amounts, durations.

Amounts are atomic units in walletd's JSON and shown in XMR with all 12 decimals, computed
exactly; fields a newer walletd adds are shown as they come rather than hidden (`Fields`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from walletd.jsontypes import JsonObject

__all__ = [
    "ATOMIC_PER_XMR",
    "EVENT_HEADERS",
    "EVENT_WIDTHS",
    "Fields",
    "duration",
    "event_row",
    "pairs",
    "print_json",
    "table",
    "text",
    "xmr",
]

ATOMIC_PER_XMR = 10**12
EVENT_HEADERS = ("SEQ", "AT", "TYPE", "ESCROW", "DETAILS")
EVENT_WIDTHS = (6, 24, 18, 36)  # so the lines of --follow align across answers
_EVENT_KEYS = ("seq", "at", "type", "escrow_id")
# Event fields that are atomic units: shown in XMR (--json keeps walletd's integers).
_AMOUNT_KEYS = frozenset({"amount", "fee", "balance", "unlocked_balance", "previous_balance"})


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Iterable[int] = (),
    min_widths: Sequence[int] = (),
    header: bool = True,
) -> str:
    """Rows as text columns two spaces apart; columns in `right` are right-aligned (numbers)."""
    lines = [list(headers)] if header else []
    body = [list(r) for r in rows]
    widths = [
        max([len(h), *(len(r[i]) for r in body), *min_widths[i : i + 1]])
        for i, h in enumerate(headers)
    ]
    right = set(right)
    lines += body
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in lines
    )


def pairs(items: Iterable[tuple[str, str]]) -> str:
    """Key-value lines with the values aligned."""
    return table(("", ""), items, header=False)


def xmr(atomic: object) -> str:
    """Atomic units as XMR with all 12 decimals, computed exactly (no float)."""
    if not isinstance(atomic, int):
        return text(atomic)
    sign, atomic = ("-", -atomic) if atomic < 0 else ("", atomic)
    whole, frac = divmod(atomic, ATOMIC_PER_XMR)
    return f"{sign}{whole}.{frac:012d}"


def duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return text(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


class Fields:
    """Takes fields out of a JSON object; `rest()` lists those nobody took.

    A newer walletd may add fields: they are shown as they come rather than hidden."""

    def __init__(self, obj: JsonObject) -> None:
        self._rest = dict(obj)

    def __call__(self, key: str) -> Any:
        return self._rest.pop(key, None)

    def rest(self) -> list[tuple[str, str]]:
        return [(k.replace("_", " "), text(v)) for k, v in self._rest.items()]


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def _detail(key: str, value: object) -> str:
    if key in _AMOUNT_KEYS and isinstance(value, int):
        return f"{key}={xmr(value)}XMR"
    return f"{key}={text(value)}"


def event_row(event: JsonObject) -> list[str]:
    details = " ".join(_detail(k, v) for k, v in event.items() if k not in _EVENT_KEYS)
    return [*(text(event.get(k)) for k in _EVENT_KEYS), details]
