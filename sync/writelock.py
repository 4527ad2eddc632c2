"""One write lock per process for SQLite, where the webhook writer goes first.

SQLite has one writer at a time; threads that contend through its busy handler sleep in coarse steps
(measured: p99 of seconds). Instead every write transaction takes this lock, and the webhook writer —
whose latency PagerDuty and Zendesk watch — is served before background work (engine, delivery, polls).
Background holders call :meth:`PriorityLock.urgent` to see if they should commit early and yield.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PriorityLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._urgent_waiting = 0

    @contextmanager
    def hold(self, urgent: bool = False) -> Iterator[None]:
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
                try:
                    while self._held:
                        self._cond.wait()
                finally:
                    self._urgent_waiting -= 1
            else:
                while self._held or self._urgent_waiting:
                    self._cond.wait()
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    def urgent(self) -> bool:
        """True while an urgent writer waits: a background holder should finish up and release."""
        return self._urgent_waiting > 0
