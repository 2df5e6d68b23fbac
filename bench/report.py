"""Results: table rows, targets, the printed table and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["ItemResult", "Row", "Target", "render", "write_json"]

Cell = str | tuple[str, ...]
Met = bool | None | tuple[bool | None, ...]  # one per line of the row, or one for the row
HEADERS = (
    "figure",
    "walletd: median / p90 / p99",
    "baseline(s), same run",
    "ratio",
    "target",
    "met",
)


@attrs.frozen
class Row:
    figure: Cell
    measured: Cell
    baselines: Cell = ()
    ratio: Cell = ()
    target: Cell = ()
    met: Met = None


@attrs.frozen
class Target:
    name: str
    met: bool
    detail: str  # what was measured against what was needed, and why when it was missed


@attrs.define
class ItemResult:
    key: str
    rows: list[Row]
    targets: list[Target] = attrs.Factory(list)
    data: dict[str, Any] = attrs.Factory(dict)
    legend: str = ""  # what the figures are, printed under the table


def _lines(cell: Cell) -> list[str]:
    return [cell] if isinstance(cell, str) else list(cell)


def _met(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "NO")


def _met_lines(value: Met) -> list[str]:
    return [_met(v) for v in value] if isinstance(value, tuple) else [_met(value)]


def render(items: Sequence[ItemResult]) -> str:
    table: list[list[list[str]]] = []
    for item in items:
        for row in item.rows:
            raw = [row.figure, row.measured, row.baselines, row.ratio, row.target]
            table.append([*(_lines(c) for c in raw), _met_lines(row.met)])
    widths = [len(h) for h in HEADERS]
    for cells in table:
        for i, cell in enumerate(cells):
            widths[i] = max([widths[i], *(len(text) for text in cell)])
    sep = "-+-".join("-" * w for w in widths)

    def line(parts: Sequence[str]) -> str:
        return " | ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)).rstrip()

    out = [line(HEADERS), sep]
    for cells in table:
        height = max(len(cell) for cell in cells)
        for k in range(height):
            out.append(line([cell[k] if k < len(cell) else "" for cell in cells]))
        out.append(sep)
    legends = [item.legend for item in items if item.legend]
    if legends:
        out.append("")
        out += legends
    targets = [t for item in items for t in item.targets]
    if targets:
        out.append("")
        out.append("targets:")
        for t in targets:
            out.append(f"  [{_met(t.met):>3}] {t.name}: {t.detail}")
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, Any], items: Sequence[ItemResult]) -> None:
    doc = {
        "meta": meta,
        "targets": [attrs.asdict(t) for item in items for t in item.targets],
        "items": {
            item.key: {"rows": [attrs.asdict(r) for r in item.rows], "data": item.data}
            for item in items
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.rename(path)
