"""One wall clock for two fake vendors. Real ticketing systems and PagerDuty both stamp their news from the wall
clock, so what a person does later in either system carries a later time. Two fakes with their own clocks (the
desk's tickets in November, PagerDuty's fake in September) would stamp a move made in PagerDuty after a ticket
edit as older than that edit, which the service's ordering of the two streams must not be tested against."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta


class Timeline:
    """Stamps each action after every action before it, in either system (``step`` apart at least)."""

    def __init__(self, step: timedelta = timedelta(seconds=1)) -> None:
        self.step = step
        self.last: datetime | None = None
        self._lock = threading.Lock()  # PagerDuty's fake stamps from its HTTP server's threads too

    def after(self, at: datetime) -> datetime:
        """``at``, or just after the last stamp if that is later; recorded as the last stamp."""
        with self._lock:
            stamped = at if self.last is None or at > self.last else self.last + self.step
            self.last = stamped
            return stamped
