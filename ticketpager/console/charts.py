"""A tiny inline-SVG chart for the overview: bars (pages per hour) and a line (delivery latency), no script.

The SVG carries a ``<title>`` and ``role="img"`` with an ``aria-label`` summing it up; the same numbers are in
a table next to it for screen readers and text browsers.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from sync.repos.console import HourStats

WIDTH = 720
HEIGHT = 160
PAD = 28


def hourly_svg(stats: Sequence[HourStats]) -> str:
    if not stats:
        return ""
    n = len(stats)
    step = (WIDTH - 2 * PAD) / n
    top_pages = max((s.pages for s in stats), default=0) or 1
    latencies = [s.latency_seconds for s in stats if s.latency_seconds is not None]
    top_latency = max(latencies, default=0.0) or 1.0
    inner = HEIGHT - 2 * PAD
    parts: list[str] = []
    for i, s in enumerate(stats):
        h = inner * s.pages / top_pages
        x = PAD + i * step
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}"><title>{escape(s.hour.strftime("%H:00"))}: {s.pages} pages</title></rect>'
        )
    points = [
        f"{PAD + (i + 0.5) * step:.1f},{HEIGHT - PAD - inner * s.latency_seconds / top_latency:.1f}"
        for i, s in enumerate(stats)
        if s.latency_seconds is not None
    ]
    if points:
        parts.append(f'<polyline class="latency" fill="none" points="{" ".join(points)}"/>')
    for i in (0, n // 2, n - 1):
        parts.append(
            f'<text x="{PAD + (i + 0.5) * step:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
            f"{escape(stats[i].hour.strftime('%H:00'))}</text>"
        )
    parts.append(f'<text x="{PAD}" y="16">pages (max {top_pages})</text>')
    parts.append(f'<text x="{WIDTH - PAD}" y="16" text-anchor="end">latency (max {top_latency:.1f} s)</text>')
    total = sum(s.pages for s in stats)
    label = f"{total} pages in the last {n} hours; longest mean delivery latency {top_latency:.1f} s"
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>{"".join(parts)}</svg>'
    )
