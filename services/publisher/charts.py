"""The dashboard's chart, drawn on the server as SVG (no script, no CDN): alerts sent, delivered
and actions reported over time, each as a running total, from per-minute activity buckets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 36
MAX_POINTS = 240  # a two-week action has 20,000 minutes; a line needs no more than this


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    colour: str


SERIES = (
    Series("sent", "Alerts sent", "#1d4ed8"),
    Series("delivered", "SMS delivered", "#0e9f6e"),
    Series("actions", "Actions reported", "#c2410c"),
)


@dataclass(frozen=True)
class Minute:
    minute: datetime
    sent: int
    delivered: int
    actions: int


def _nice_ceiling(value: int) -> int:
    """A round top for the axis: 1, 2, 5, 10, 20, 50, …"""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if value <= step * factor:
                return step * factor
        step *= 10


def _time_label(moment: datetime, span: timedelta) -> str:
    if span >= timedelta(days=1):
        return moment.strftime("%d %b %H:%M")
    # Minutes alone would repeat one label along the axis of a young action.
    return moment.strftime("%H:%M" if span >= timedelta(minutes=10) else "%H:%M:%S")


def activity_svg(buckets: Sequence[Minute], *, start: datetime, end: datetime) -> str:
    """Running totals from ``start`` to ``end`` (UTC); an empty chart says so."""
    start = start.replace(second=0, microsecond=0)
    if end <= start:
        end = start + timedelta(minutes=1)
    span = end - start
    totals = {s.key: 0 for s in SERIES}
    # Sample points: one per bucket, thinned to MAX_POINTS by keeping the latest per slot.
    slot = span / MAX_POINTS
    points: dict[str, list[tuple[datetime, int]]] = {s.key: [(start, 0)] for s in SERIES}
    last_slot = -1
    for bucket in buckets:
        for s in SERIES:
            totals[s.key] += getattr(bucket, s.key)
        moment = min(max(bucket.minute + timedelta(minutes=1), start), end)
        index = int((moment - start) / slot) if slot else 0
        for s in SERIES:
            if index == last_slot and len(points[s.key]) > 1:
                points[s.key][-1] = (moment, totals[s.key])
            else:
                points[s.key].append((moment, totals[s.key]))
        last_slot = index
    for s in SERIES:
        points[s.key].append((end, totals[s.key]))

    top = _nice_ceiling(max(max(totals.values()), 1))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(moment: datetime) -> float:
        return LEFT + plot_w * ((moment - start) / span)

    def y(value: int) -> float:
        return TOP + plot_h * (1 - value / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="chart-title" '
        'font-family="system-ui, sans-serif" font-size="11">',
        '<title id="chart-title">Alerts sent, delivered and actions reported over time</title>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    for i in range(5):
        value = top * i // 4
        out.append(
            f'<line stroke="#e3e3e3" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/>'
            f'<text fill="#5a5a5a" x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
            f"{value:,}</text>"
        )
    for i in range(5):
        moment = start + span * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(
            f'<text fill="#5a5a5a" x="{x(moment):.1f}" y="{HEIGHT - 14}" text-anchor="{anchor}">'
            f"{escape(_time_label(moment, span))}</text>"
        )
    for s in SERIES:
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{x(m):.1f},{y(v):.1f}"
            for i, (m, v) in enumerate(points[s.key])
        )
        out.append(
            f'<path fill="none" stroke="{s.colour}" stroke-width="2.25" d="{path}" '
            f'data-series="{s.key}" '
            f'data-total="{totals[s.key]}"/>'
        )
    if not any(totals.values()):
        out.append(
            f'<text fill="#5a5a5a" x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h / 2:.0f}" '
            'text-anchor="middle" font-size="13">No activity yet</text>'
        )
    out.append("</svg>")
    return "".join(out)
