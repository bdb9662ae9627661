"""Server-side SVG charts for the operator dashboards: no JavaScript, no CDN, print-friendly.

Each function returns SVG markup (marked safe; every label is escaped) sized to its container.
"""

import math
from collections.abc import Mapping, Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#2f6fba", "#e0812f", "#3a9a5b", "#c2453e", "#8a5cb8", "#8c6d3f", "#d46aa8", "#7f7f7f")
STATUS_COLORS = {
    "succeeded": "#3a9a5b",
    "failed": "#c2453e",
    "cancelled": "#7f7f7f",
    "running": "#2f6fba",
    "pending": "#e0b12f",
}
WIDTH, HEIGHT = 880, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 56


def color_for(name: str, index: int) -> str:
    return STATUS_COLORS.get(name, PALETTE[index % len(PALETTE)])


def _nice_max(value: float) -> float:
    """The smallest 1/2/2.5/5 x 10^n at or above value, so gridlines fall on round numbers."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def _fmt(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
    if unit == "%":
        return f"{value:.0f}%"
    return f"{value:,.0f}{unit}" if value >= 10 or value == int(value) else f"{value:,.1f}{unit}"


def _frame(labels: Sequence[str], top: float, unit: str, title: str) -> list[str]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg class="dspex-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        tick = escape(_fmt(top * i / 4, unit))
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{tick}</text>')
    step = max(1, len(labels) // 12)
    slot = plot_w / max(1, len(labels))
    for i, label in enumerate(labels):
        if i % step == 0:
            x, y = LEFT + slot * (i + 0.5), HEIGHT - BOTTOM + 16
            parts.append(f'<text x="{x:.1f}" y="{y}" text-anchor="middle" fill="#555">{escape(label)}</text>')
    return parts


def _legend(names: Sequence[str]) -> list[str]:
    parts, x = [], LEFT
    for i, name in enumerate(names):
        parts.append(f'<rect x="{x}" y="{HEIGHT - 22}" width="10" height="10" fill="{color_for(name, i)}"/>')
        parts.append(f'<text x="{x + 14}" y="{HEIGHT - 13}" fill="#333">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return parts


def bar_chart(
    labels: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str, unit: str = ""
) -> SafeString:
    """Stacked bars: one bar per label, one colored segment per series."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0))
    parts = _frame(labels, top, unit, title)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(labels))
    bar_w = max(1.0, slot * 0.7)
    for i in range(len(labels)):
        base: float = TOP + plot_h
        for index, (name, values) in enumerate(series.items()):
            height = plot_h * values[i] / top if top else 0
            if height <= 0:
                continue
            x = LEFT + slot * i + (slot - bar_w) / 2
            base -= height
            tip = f"{labels[i]} {name}: {_fmt(values[i], unit)}"
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{height:.1f}" '
                f'fill="{color_for(name, index)}"><title>{escape(tip)}</title></rect>'
            )
    parts += _legend(list(series))
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated label is escaped above


def line_chart(
    labels: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str, unit: str = ""
) -> SafeString:
    """Lines with a point per label; None leaves a gap."""
    values = [v for line in series.values() for v in line if v is not None]
    top = _nice_max(max(values, default=0))
    parts = _frame(labels, top, unit, title)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(labels))
    for index, (name, line) in enumerate(series.items()):
        color = color_for(name, index)
        points = [
            (LEFT + slot * (i + 0.5), TOP + plot_h - plot_h * v / top, f"{labels[i]} {name}: {_fmt(v, unit)}")
            for i, v in enumerate(line)
            if v is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, tip in points:
            dot = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}">'
            parts.append(f"{dot}<title>{escape(tip)}</title></circle>")
    parts += _legend(list(series))
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated label is escaped above
