"""The pages' charts as plain geometry for inline SVG: stacked bars, and a call's time line.

Pure: numbers in, rectangles out (in the SVG's own units); the templates draw them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The parts of a bar, bottom up, each with its CSS class.
PARTS = ("answered", "missed", "other")
# The bar chart's box, and the room for its labels below, on the left and above.
WIDTH, HEIGHT, BOTTOM, LEFT, TOP = 1000, 220, 30, 44, 10


@dataclass
class Bar:
    label: str
    x: float
    width: float
    total: int
    parts: list[dict[str, Any]] = field(default_factory=list)  # kind, y, height, count
    title: str = ""


@dataclass
class BarChart:
    bars: list[Bar]
    top: int  # the count at the top of the scale
    ticks: list[dict[str, Any]]  # y and label of the scale's lines
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = BOTTOM


def nice_top(most: int) -> int:
    """A round number at or above `most` for the top of a scale."""
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if most <= step * 4:
            return step * 4
    return -(-most // 10000) * 10000


def bar_chart(columns: list[tuple[str, dict[str, int]]], label_every: int = 1) -> BarChart:
    """Stacked bars, one a column: (label, counts by part)."""
    top = nice_top(max([sum(counts.values()) for _, counts in columns] + [1]))
    plot = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / max(1, len(columns))
    bars = []
    for index, (label, counts) in enumerate(columns):
        bar = Bar(
            label=label if index % label_every == 0 else "",
            x=LEFT + index * slot + (slot - min(slot * 0.7, 90)) / 2,
            width=min(slot * 0.7, 90),
            total=sum(counts.values()),
        )
        y = float(TOP + plot)
        for kind in PARTS:
            count = counts.get(kind, 0)
            if count:
                height = plot * count / top
                y -= height
                bar.parts.append({"kind": kind, "y": y, "height": height, "count": count})
        bar.title = f"{label}: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in PARTS)
        bars.append(bar)
    ticks = [{"y": TOP + plot - plot * n / 4, "label": top * n // 4} for n in range(5)]
    return BarChart(bars, top, ticks)


@dataclass
class Lane:
    label: str
    y: float
    ring: tuple[float, float] | None  # x and width, in the SVG's units
    talk: tuple[float, float] | None
    answered: bool
    title: str


@dataclass
class Timeline:
    lanes: list[Lane]
    ticks: list[dict[str, Any]]
    width: int
    height: int
    left: int


def seconds_between(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def timeline(call: dict[str, Any], now_iso: str, names: list[str]) -> Timeline:
    """Each leg of a call on one line: ringing from its start to its answer (or its end), then
    talking to its end; a leg not ended yet runs to now."""
    width, left, lane_height = 1000, 150, 30
    start = call["started_at"]
    legs = call["legs"]
    ends = [leg["ended_at"] or now_iso for leg in legs] + [call["ended_at"] or now_iso]
    span = max([seconds_between(start, end) or 0 for end in ends] + [1.0])
    scale = (width - left - 10) / span

    def x(at: str | None) -> float:
        return left + max(0.0, seconds_between(start, at) or 0.0) * scale

    lanes = []
    for index, (leg, name) in enumerate(zip(legs, names, strict=True)):
        began, answered, ended = leg["started_at"], leg["answered_at"], leg["ended_at"] or now_iso
        ring_end = answered or ended
        ring = (x(began), max(2.0, x(ring_end) - x(began))) if began else None
        talk = (x(answered), max(2.0, x(ended) - x(answered))) if answered else None
        title = f"{name}: rang {began or '?'}"
        if answered:
            title += f", answered {answered}"
        label = f"{name} {'↑' if leg['direction'] == 'out' else '↓'}" if leg["direction"] else name
        lanes.append(Lane(label, 8 + index * lane_height, ring, talk, leg["answered"], title))
    step = nice_top(int(span)) / 4 if span >= 4 else 1
    ticks = []
    mark = 0.0
    while mark <= span:
        ticks.append({"x": left + mark * scale, "label": f"{int(mark)} s"})
        mark += step
    return Timeline(lanes, ticks, width, 8 + len(legs) * lane_height + 24, left)
