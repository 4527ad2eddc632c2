"""The other replicas' sends per rate-limit key, for the PagerDuty rate limiter's ``elsewhere``
(:class:`connectors.pagerduty.RateLimiter`): read from the shared outbox, and while this replica is alone on its
database, read once per key for a while rather than every second (issue 19: those reads were about two thirds of
the delivery workers' SELECTs at keep-up).

While this replica's heartbeat sees no other replica (:meth:`sync.heartbeat.Heartbeat.alone_since`), nobody else
sends: a read made during that streak stays true, and the limiter drops what left its window. So a read is kept
for :data:`ALONE_TRUST`, and only while the streak that it was made in lasts. A beat that sees another replica, a
beat that fails, or a gap in the heartbeat ends the streak; the next send reads again. What it does not see: a
replica that starts is seen at this one's next beat (within ``engine.heartbeat_seconds``, which ends the streak),
and a process without a heartbeat (``poll --once``) not at all: its sends count here up to :data:`ALONE_TRUST` late
(plus the limiter's own second). Near the limit that can let a few events more through than PagerDuty allows;
PagerDuty answers 429 and they are retried.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from kernel.clock import Clock

#: how long a read of the other replicas' sends is kept while this replica is alone (see the module's docstring)
ALONE_TRUST = timedelta(seconds=10)
#: keys remembered at most (they come from the rules; past it all are forgotten and read again)
KEYS_MEMORY = 20_000


class AloneSince(Protocol):
    def alone_since(self) -> datetime | None:
        """When this replica's current streak alone on its database began (None: not alone now)."""
        ...


class SendsElsewhere:
    """``elsewhere(key, since)`` for the rate limiter: ``read(key, since)`` (the outbox query), or the last read of
    ``key`` while it was made in the current streak alone (``heartbeat``) and less than :data:`ALONE_TRUST` ago."""

    def __init__(
        self,
        read: Callable[[str, datetime], list[datetime]],
        heartbeat: AloneSince,
        clock: Clock,
        *,
        trust: timedelta = ALONE_TRUST,
    ) -> None:
        self.read = read
        self.heartbeat = heartbeat
        self.clock = clock
        self.trust = trust
        self._kept: dict[str, tuple[datetime, list[datetime]]] = {}  # key → (read at, the others' sends)
        self._lock = threading.Lock()

    def __call__(self, key: str, since: datetime) -> list[datetime]:
        streak = self.heartbeat.alone_since()
        now = self.clock.now()
        if streak is not None:
            with self._lock:
                kept = self._kept.get(key)
            if kept is not None and kept[0] >= streak and now - kept[0] < self.trust:
                return kept[1]
        sends = self.read(key, since)
        if streak is not None:
            with self._lock:
                if len(self._kept) >= KEYS_MEMORY:
                    self._kept.clear()
                self._kept[key] = (now, sends)
        return sends
