"""One write lock per process for SQLite: the webhook writer goes first, and the rest take turns.

SQLite has one writer at a time; threads that contend through its busy handler sleep in coarse steps
(measured: p99 of seconds). Instead every write transaction takes this lock, in one of three lanes:

* ``webhooks``: the webhook writer, whose latency the vendors watch. It goes after every other holder, so it
  waits for at most one other transaction (and a long one, an engine batch, commits early for it:
  :meth:`PriorityLock.urgent`); and it goes again after its own turn, unless another lane has waited
  :data:`MAX_WAIT_SECONDS` for a turn.
* ``engine``: the engine's batches. ``background``: everything else (the delivery workers' claims and
  ``sent`` marks, the pollers, the heartbeat). While both wait, the one that held the lock for less time since
  they began to contend goes (a fair share of the lock's time: an engine batch holds it for as long as dozens
  of claims and ``sent`` marks).

Before lanes, the webhook writer took every turn while it had work, so during a burst the engine processed 4 of
800 changes and the burst's first page waited for its end; and the engine, taking the lock again the moment it
released it, held off the delivery workers' claims, so pages were queued and not sent for half a second after
the burst (issue 19; docs/performance.md, the thirteenth session). Within a lane, whichever waiter runs first
takes the lock: a strict queue would hand the lock to a thread that must first get the interpreter lock, and on
this machine that wait is most of a short transaction.
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
#: the lanes that take turns between the webhook writer's (a tie: the first)
TAKING_TURNS: Final[tuple[Lane, ...]] = (ENGINE, BACKGROUND)
#: how long the other lanes wait for a turn at most while the webhook writer has work: the writer's commits go
#: first for this long, then one of theirs (so a burst of webhooks waits for one more transaction per this long)
MAX_WAIT_SECONDS = 0.02


class PriorityLock:
    """A lock in lanes: the ``webhooks`` lane after every other holder, the others by their share of the time
    between. ``timer``: seconds, for the shares (a fake one in tests)."""

    def __init__(self, timer: Callable[[], float] = time.monotonic, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._timer = timer
        self._max_wait = max_wait
        self._waiting: dict[Lane, int] = {URGENT: 0, ENGINE: 0, BACKGROUND: 0}
        self._last: Lane = URGENT  # the lane of the latest holder
        self._since = 0.0  # when the latest holder took the lock
        # seconds each rotating lane held the lock since they began to contend (reset whenever one runs alone)
        self._used: dict[Lane, float] = dict.fromkeys(TAKING_TURNS, 0.0)
        self._waits_since: dict[Lane, float] = dict.fromkeys(TAKING_TURNS, 0.0)  # its last turn, or its first waiter
        # the lane chosen to take the free lock, once for every waiter: a choice that depends on the time, made
        # by each waiter when it wakes, could differ between them and leave the lock free with all waiting
        self._next: Lane | None = None

    @contextmanager
    def hold(self, urgent: bool = False, *, lane: Lane = BACKGROUND) -> Iterator[None]:
        """Hold the lock; ``urgent``: in the ``webhooks`` lane (whatever ``lane`` says)."""
        lane = URGENT if urgent else lane
        with self._cond:
            if not self._waiting[lane] and lane != URGENT:
                self._waits_since[lane] = self._timer()
            self._waiting[lane] += 1
            try:
                while self._held or self._chosen() != lane:
                    self._cond.wait()
            except BaseException:  # interrupted: the lock may have been chosen for this lane, choose again
                self._next = None
                self._cond.notify_all()
                raise
            finally:
                self._waiting[lane] -= 1
            self._held = True
            self._next = None
            self._last = lane
            if lane != URGENT and not all(self._waiting[other] for other in TAKING_TURNS if other != lane):
                self._used = dict.fromkeys(TAKING_TURNS, 0.0)  # nobody else waits: no share to keep
            self._since = self._timer()
            if lane != URGENT:
                self._waits_since[lane] = self._since  # the lane's other waiters wait from here
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

    def _chosen(self) -> Lane | None:
        """The lane whose waiter takes the free lock: chosen once (:meth:`_turn`) and kept until it is taken."""
        if self._next is None or not self._waiting[self._next]:
            self._next = self._turn()
        return self._next

    def _turn(self) -> Lane | None:
        """The lane that takes the lock next (under the condition): the webhook writer's after any other lane's
        holder and after its own unless another lane waited too long, else the waiting lane that held it least;
        None: nobody waits."""
        others = [lane for lane in TAKING_TURNS if self._waiting[lane]]
        if self._waiting[URGENT]:
            if self._last != URGENT or not others:
                return URGENT
            now = self._timer()
            others = [lane for lane in others if now - self._waits_since[lane] >= self._max_wait]
            if not others:
                return URGENT
        if not others:
            return None
        return min(others, key=self._used.__getitem__)  # a tie: the first in TAKING_TURNS
