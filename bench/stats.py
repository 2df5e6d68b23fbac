"""Order statistics over timing samples: median, p90, p99 (linear interpolation, as numpy)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = ["Summary", "fmt_bytes", "fmt_ms", "fmt_s", "percentile", "summarize"]


@attrs.frozen
class Summary:
    n: int
    median: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    def to_json(self) -> dict[str, float | int]:
        return attrs.asdict(self)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted samples."""
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(samples: Sequence[float]) -> Summary:
    ordered = sorted(samples)
    return Summary(
        n=len(ordered),
        median=percentile(ordered, 50),
        p90=percentile(ordered, 90),
        p99=percentile(ordered, 99),
        mean=sum(ordered) / len(ordered),
        min=ordered[0],
        max=ordered[-1],
    )


def _num(value: float) -> str:
    """Three significant figures, never scientific notation."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ms(s: Summary) -> str:
    """Seconds shown as `median / p90 / p99 ms (n=N)`."""
    return f"{_num(s.median * 1e3)} / {_num(s.p90 * 1e3)} / {_num(s.p99 * 1e3)} ms n={s.n}"


def fmt_s(s: Summary) -> str:
    """Seconds shown as `median / p90 / p99 s (n=N)`."""
    return f"{_num(s.median)} / {_num(s.p90)} / {_num(s.p99)} s n={s.n}"


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"
