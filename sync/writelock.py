"""One write lock per process for SQLite: the webhook writer goes first; the engine and the rest share the turns.

SQLite has one writer at a time; threads that contend through its busy handler sleep in coarse steps
(measured: p99 of seconds). Instead every write transaction takes this lock, in one of three lanes:

* ``webhooks``: the webhook writer, whose latency the vendors watch. It goes before every other waiter, so it
  waits for at most the transaction in progress (and a long one, an engine batch, commits early for it:
  :meth:`PriorityLock.urgent`).
* ``engine``: the engine's batches. ``background``: everything else (the delivery workers' claims and ``sent``
  marks, the pollers, the heartbeat). While both wait, the one that held the lock for less time since they
  began to contend goes: an engine batch holds it for as long as dozens of claims and marks.

Before the two lanes, the engine took the lock again the moment it released it (a ``threading.Condition`` lets
the thread that holds the interpreter lock take it first), so after a burst of webhooks the delivery workers'
claims waited while the engine caught up: pages were queued and not sent for a second (issue 19;
docs/performance.md, the thirteenth session). Within a lane, whichever waiter runs first takes the lock: a strict
queue would hand the lock to a thread that must first get the interpreter lock, and on this machine that wait is
most of a short transaction.

The webhook writer's priority stays strict: giving the other lanes a turn during a burst (after 20 ms of waiting)
made the engine's pages go out sooner and the webhooks slower, with the interpreter lock the limit (measured in
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
#: the lanes that share the turns the webhook writer leaves (a tie: the first)
SHARING: Final[tuple[Lane, ...]] = (ENGINE, BACKGROUND)


class PriorityLock:
    """A lock in lanes: the ``webhooks`` lane before any other, the others by their share of the time.
    ``timer``: seconds, for the shares (a fake one in tests)."""

    def __init__(self, timer: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._timer = timer
        self._waiting: dict[Lane, int] = {URGENT: 0, ENGINE: 0, BACKGROUND: 0}
        self._since = 0.0  # when the latest holder took the lock
        # seconds each sharing lane held the lock since they began to contend (reset whenever one runs alone)
        self._used: dict[Lane, float] = dict.fromkeys(SHARING, 0.0)

    @contextmanager
    def hold(self, urgent: bool = False, *, lane: Lane = BACKGROUND) -> Iterator[None]:
        """Hold the lock; ``urgent``: in the ``webhooks`` lane (whatever ``lane`` says)."""
        lane = URGENT if urgent else lane
        with self._cond:
            self._waiting[lane] += 1
            try:
                while self._held or self._turn() != lane:
                    self._cond.wait()
            except BaseException:  # interrupted: a free lock may have been this waiter's turn
                self._cond.notify_all()
                raise
            finally:
                self._waiting[lane] -= 1
            self._held = True
            if lane != URGENT and not all(self._waiting[other] for other in SHARING if other != lane):
                self._used = dict.fromkeys(SHARING, 0.0)  # nobody else waits: no share to keep
            self._since = self._timer()
        try:
            yield
        finally:
            with self._cond:
                if lane != URGENT:
                    self._used[lane] += self._timer() - self._since
                self._held = False
                self._cond.notify_all()

    def urgent(self) -> bool:
        """True while the webhook writer waits: a long background holder should commit what it did and release."""
        return self._waiting[URGENT] > 0

    def waiting(self) -> dict[Lane, int]:
        """How many holders wait now, per lane (diagnostics, tests)."""
        with self._cond:
            return dict(self._waiting)

    def _turn(self) -> Lane | None:
        """Whose turn a free lock is (under the condition): the webhook writer's if it waits, else the waiting
        sharing lane's that held the lock least; None: nobody waits. It depends only on what changes under the
        condition, so every waiter that wakes sees the same turn (a turn that also depended on the time of
        each waiter's look once left the lock free with all of them waiting: the thirteenth session)."""
        if self._waiting[URGENT]:
            return URGENT
        sharing = [lane for lane in SHARING if self._waiting[lane]]
        if not sharing:
            return None
        return min(sharing, key=self._used.__getitem__)
