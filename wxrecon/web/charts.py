"""Inline SVG bar charts rendered on the server: no script, no CDN."""

from __future__ import annotations

from html import escape
from typing import Any

COLOURS = {"finalised": "#2e7d32", "errors": "#c62828"}


def bars(buckets: list[dict[str, Any]], series: tuple[str, ...], height: int = 120) -> str:
    """One group of bars per bucket (hour), one bar per series; labelled axis of hours."""
    width_per = 12 * len(series) + 8
    width = max(1, len(buckets)) * width_per + 40
    top = max([1] + [int(b[s]) for b in buckets for s in series])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
        f'width="{width}" height="{height + 30}" '
        f'aria-label="{escape(" and ".join(series))} per hour">',
        f'<text x="0" y="12" font-size="10">max {top}</text>',
    ]
    for i, b in enumerate(buckets):
        x0 = 30 + i * width_per
        for j, s in enumerate(series):
            h = int(height * int(b[s]) / top)
            parts.append(
                f'<rect x="{x0 + j * 12}" y="{height - h + 15}" width="10" height="{h}" '
                f'fill="{COLOURS.get(s, "#555")}"><title>{escape(s)} {int(b[s])}</title></rect>'
            )
        label = escape(str(b["hour"])[11:13])
        parts.append(f'<text x="{x0}" y="{height + 28}" font-size="9">{label}h</text>')
    parts.append("</svg>")
    return "".join(parts)
