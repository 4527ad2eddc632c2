"""Wake-ups of the delivery workers: one event per worker, so no worker's wake-up is swallowed by another, and
only as many workers woken as there is work for.

With one shared ``threading.Event`` each worker cleared it at the top of its loop, so a worker whose wake-up
another had cleared before it waited slept through it (issue 19: bursts lost 10–20 % of throughput when the
idle look was shared). Here each worker waits on and clears its own event.

Waking every worker for each engine batch made each of them run a claim probe (~0.8 ms of CPU) when one would
do. :meth:`Wakeups.wake` wakes one idle worker; a worker whose claim came back full, when more may be due
(``Delivery.more_may_be_due``), wakes the next (``_delivery_loop``), so a burst still brings every worker in within
a few claims. A wake-up that finds no
idle worker (all are between their claim and their wait) is owed to the next worker that would wait, which
then claims again at once instead of sleeping: no wake-up is lost. :meth:`set` still wakes them all (shutdown,
a dead-letter retry).
"""

from __future__ import annotations

import threading


class Wakeups:
    """One event per waiter; :meth:`wake` wakes idle ones (owing the rest), :meth:`set` wakes every one."""

    def __init__(self) -> None:
        self._events: tuple[threading.Event, ...] = ()
        self._idle: list[threading.Event] = []  # waiting now, most recently idle last (woken first: warm)
        self._owed = 0  # wake-ups that found no idle waiter, taken by the next ones that would wait
        self._lock = threading.Lock()
        self.count = 0  # how many times :meth:`wake` or :meth:`set` was called (tests, diagnostics)

    def new(self) -> threading.Event:
        """A waiter's own event, set by every later :meth:`set` and by a :meth:`wake` that picks it."""
        event = threading.Event()
        with self._lock:
            self._events = (*self._events, event)
        return event

    def set(self) -> None:
        """Wake every waiter (shutdown, rows freed by an operator)."""
        with self._lock:
            self.count += 1
        for event in self._events:
            event.set()

    def wake(self, n: int = 1) -> None:
        """Wake ``n`` idle waiters (the engine queued rows, a retry or a rate-limit hold came due, a claim came
        back full); the wake-ups no idle waiter takes are owed, at most one per waiter."""
        with self._lock:
            self.count += 1
            while n > 0 and self._idle:
                self._idle.pop().set()
                n -= 1
            self._owed = min(self._owed + n, len(self._events))

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Wait on ``event`` (the caller's own, cleared by it before its last claim) for at most ``timeout``
        seconds; True at once if it was set meanwhile or a wake-up is owed."""
        with self._lock:
            if event.is_set():
                return True
            if self._owed:
                self._owed -= 1
                return True
            self._idle.append(event)
        try:
            return event.wait(timeout)
        finally:
            with self._lock:
                if event in self._idle:
                    self._idle.remove(event)

    @property
    def idle(self) -> int:
        """How many waiters wait now."""
        with self._lock:
            return len(self._idle)


class Arrivals:
    """How many changes were stored since the engine last claimed, so that after a wake-up it can start its batch
    as soon as enough of them are there instead of always waiting out its coalescing window (issue 19): at a
    low rate a batch shares its fixed cost (a transaction, its fsync, the claim and reads) among the changes of
    the window; under load it starts once :meth:`gather`'s ``enough`` have arrived, adding no wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self._stopped = False

    def add(self, n: int) -> None:
        """``n`` changes were stored (the webhook writer's commit)."""
        with self._cond:
            self._count += n
            self._cond.notify_all()

    def reset(self) -> None:
        """The engine claims now: what arrived so far is in this batch."""
        with self._cond:
            self._count = 0

    def gather(self, enough: int, timeout: float) -> int:
        """Wait until ``enough`` changes arrived since :meth:`reset`, at most ``timeout`` seconds (real time: a
        few milliseconds of batching, not business time); how many arrived."""
        with self._cond:
            self._cond.wait_for(lambda: self._count >= enough or self._stopped, timeout)
            return self._count

    def stop(self) -> None:
        """Shutdown: every :meth:`gather`, now and later, returns at once."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
