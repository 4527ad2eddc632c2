"""When each connection's poll loop starts: spread over its poll interval, so 50 connections with a 60 s
interval poll about one a second instead of all at the same second (issue 17, "no thundering herd").

The default connections (one per system, from the environment) start at once, as they always have; the
connections of the connections file start at evenly spaced offsets, by name. Each loop then waits its interval
after each poll, so the spread persists (and slow polls only push their own connection later).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def poll_offset(name: str, spread: Collection[str], interval: float) -> float:
    """Seconds connection ``name`` waits before its first poll: 0 unless it is one of ``spread`` (the
    connections to spread), else its rank among them (by name) times ``interval / len(spread)`` — the
    same answer on every replica, and at most one start per ``interval / len(spread)`` seconds."""
    if name not in spread or interval <= 0:
        return 0.0
    ordered = sorted(spread)
    return interval * ordered.index(name) / len(ordered)


def poll_starts(
    offsets: Mapping[str, float], intervals: Mapping[str, float], horizon: float
) -> list[tuple[float, str]]:
    """Every poll start before ``horizon`` seconds if each poll took no time: (seconds, connection), in
    time order. What a schedule does to the vendors, for tests and ``bench/``."""
    starts = []
    for name, offset in offsets.items():
        at, step = offset, intervals[name]
        while at < horizon and step > 0:
            starts.append((at, name))
            at += step
    return sorted(starts)


__all__ = ["poll_offset", "poll_starts"]
