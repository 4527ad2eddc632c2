"""One write lock per process for SQLite: the webhook writer goes first; the engine and the rest share the turns.

SQLite has one writer at a time; threads that contend through its busy handler sleep in coarse steps
(measured: p99 of seconds). Instead every write transaction takes this lock, in one of three lanes:

* ``webhooks`` (``urgent``): what must not wait, the webhook writer above all (whose latency the vendors watch),
  PagerDuty's webhooks and the heartbeat's beat. It goes before every other waiter, so it waits for at most the
  transaction in progress (and a long one, an engine batch, commits early for it: :meth:`PriorityLock.urgent`).
* ``engine``: the engine's batches. ``background``: everything else (the delivery workers' claims and ``sent``
  marks, the pollers, pruning, the console's writes). While both wait, the one that has held the lock for less
  time goes: an engine batch holds it for as long as dozens of claims and marks. What one lane held more than
  the other is remembered up to :data:`SHARE_MEMORY_SECONDS`, so a lane that had the lock to itself for a while
  is not owed a long run of turns for it, and a moment in which one lane did not wait erases nothing.

Before the two lanes, the engine took the lock again the moment it released it (a ``threading.Condition`` lets
the thread that holds the interpreter lock take it first), so after a burst of webhooks the delivery workers'
claims waited while the engine caught up: pages were queued and not sent for a second (issue 19;
docs/performance.md, the thirteenth session). Within a lane, whichever waiter runs first takes the lock: a strict
queue would hand the lock to a thread that must first get the interpreter lock, and on this machine that wait is
most of a short transaction.

The webhook writer's priority stays strict: giving the other lanes a turn during a burst (after 20 ms of waiting)
made the engine's pages go out sooner and the webhooks slower, the interpreter lock being the limit (measured in
the thirteenth session, not kept).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Literal

Lane = Literal["webhooks", "engine", "background"]

URGENT: Final[Lane] = "webhooks"
ENGINE: Final[Lane] = "engine"
BACKGROUND: Final[Lane] = "background"
#: how much longer one of the two sharing lanes may have held the lock than the other, as remembered for the
#: next turns (about five engine batches; more is forgotten)
SHARE_MEMORY_SECONDS = 0.05


class PriorityLock:
    """A lock in lanes: ``webhooks`` before any other, then ``engine`` and ``background`` by their share of the
    time held. ``timer``: seconds, for the shares (a fake one in tests)."""

    def __init__(self, timer: Callable[[], float] = time.monotonic, memory: float = SHARE_MEMORY_SECONDS) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._timer = timer
        self._memory = memory
        self._waiting: dict[Lane, int] = {URGENT: 0, ENGINE: 0, BACKGROUND: 0}
        self._since = 0.0  # when the latest holder took the lock
        self._lead = 0.0  # how much longer the engine held the lock than the background lane, within ±memory

    @contextmanager
    def hold(self, urgent: bool = False, *, lane: Lane = BACKGROUND) -> Iterator[None]:
        """Hold the lock; ``urgent``: in the ``webhooks`` lane (whatever ``lane`` says)."""
        lane = URGENT if urgent else lane
        with self._cond:
            self._waiting[lane] += 1
            try:
                while self._held or self._turn() != lane:
                    self._cond.wait()
                since = self._timer()
            except BaseException:  # interrupted: a free lock may have been this waiter's turn
                self._cond.notify_all()
                raise
            finally:
                self._waiting[lane] -= 1
            self._held = True
            self._since = since
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                try:
                    if lane != URGENT:
                        held = self._timer() - self._since
                        lead = self._lead + (held if lane == ENGINE else -held)
                        self._lead = max(-self._memory, min(lead, self._memory))
                finally:
                    self._cond.notify_all()

    def urgent(self) -> bool:
        """True while an urgent holder waits: a long background holder should commit what it did and release."""
        return self._waiting[URGENT] > 0

    def waiting(self) -> dict[Lane, int]:
        """How many holders wait now, per lane (diagnostics, tests)."""
        with self._cond:
            return dict(self._waiting)

    def _turn(self) -> Lane | None:
        """Whose turn a free lock is (under the condition): the ``webhooks`` lane's if it waits, else the sharing
        lane's that has held the lock less (the engine's on a tie); None: nobody waits. It depends only on what
        changes under the condition, so every waiter that wakes sees the same turn (a turn that also depended on
        the time of each waiter's look once left the lock free with all of them waiting: the thirteenth
        session)."""
        if self._waiting[URGENT]:
            return URGENT
        engine, background = self._waiting[ENGINE], self._waiting[BACKGROUND]
        if engine and background:
            return BACKGROUND if self._lead > 0 else ENGINE
        if engine:
            return ENGINE
        return BACKGROUND if background else None
