"""SQLite's write lock in lanes (issue 19): the webhook writer goes first, and the engine and the delivery workers
share the rest by time, so the engine catching up after a burst does not hold off the workers that send its
pages."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from sync.writelock import BACKGROUND, ENGINE, URGENT, Lane, PriorityLock
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive


class Holders:
    """Threads that each take the lock once, in the order the test queues them, and record when they got it."""

    def __init__(self, lock: PriorityLock, on_hold: Callable[[str], None] | None = None) -> None:
        self.lock = lock
        self.order: list[str] = []
        self.on_hold = on_hold
        self.threads: list[threading.Thread] = []

    def queue(self, name: str, lane: Lane) -> None:
        """Start ``name`` and return once it waits for the lock (in ``lane``)."""
        before = self.lock.waiting()[lane]

        def run() -> None:
            with self.lock.hold(lane=lane):
                self.order.append(name)
                if self.on_hold is not None:
                    self.on_hold(name)

        thread = threading.Thread(target=run, name=name)
        thread.start()
        self.threads.append(thread)
        deadline = time.monotonic() + 5
        while self.lock.waiting()[lane] == before and time.monotonic() < deadline:
            time.sleep(0.001)
        assert self.lock.waiting()[lane] == before + 1, f"{name} is not waiting for the lock"

    def join(self) -> list[str]:
        for thread in self.threads:
            thread.join(timeout=5)
            assert not thread.is_alive(), f"{thread.name} never got the lock"
        return self.order


def test_the_webhook_writer_goes_before_background_work_that_waited_longer() -> None:
    lock = PriorityLock()
    holders = Holders(lock)
    with lock.hold(lane=BACKGROUND):
        holders.queue("claim", BACKGROUND)
        holders.queue("engine batch", ENGINE)
        holders.queue("webhooks", URGENT)
    order = holders.join()
    assert order[0] == "webhooks", order


def test_a_delivery_worker_gets_the_lock_while_the_engine_runs_batch_after_batch() -> None:
    """After a burst the engine catches up batch after batch, taking the lock again as soon as it released it; the
    workers' claims and ``sent`` marks go between its batches, so the pages it queued go out meanwhile."""
    lock = PriorityLock()
    stop = threading.Event()
    batches = [0]

    def engine() -> None:
        while not stop.is_set():
            with lock.hold(lane=ENGINE):
                batches[0] += 1
                time.sleep(0.002)  # a batch's statements (the interpreter lock is released meanwhile)

    def worker() -> None:  # a worker's claims and marks, one after another
        for _ in range(50):
            with lock.hold(lane=BACKGROUND):
                done[0] += 1

    done = [0]
    thread = threading.Thread(target=engine, daemon=True)
    thread.start()
    try:
        while not batches[0]:
            time.sleep(0.001)
        sender = threading.Thread(target=worker, daemon=True)
        sender.start()
        sender.join(timeout=2.0)
        assert done[0] == 50, f"{done[0]} of a worker's 50 transactions in 2 s beside the engine's batches"
    finally:
        stop.set()
        thread.join(timeout=5)


def test_the_engine_and_the_delivery_workers_share_the_lock_by_the_time_they_hold_it() -> None:
    """An engine batch that held the lock for as long as ten claims is followed by ten claims, not by one claim
    and the next batch (which left pages queued and unsent while the engine caught up)."""
    now = [0.0]
    held_for = {"batch 1": 10.0, "batch 2": 10.0} | {f"claim {i}": 1.0 for i in range(12)}

    def hold(name: str) -> None:
        now[0] += held_for[name]

    lock = PriorityLock(timer=lambda: now[0], memory=100.0)
    holders = Holders(lock, on_hold=hold)
    with lock.hold(lane=ENGINE):
        now[0] += 10.0  # the first batch, while the others queue
        for i in range(12):
            holders.queue(f"claim {i}", BACKGROUND)
        holders.queue("batch 2", ENGINE)
    order = holders.join()
    assert order.index("batch 2") == 10, order  # ten claims of one second each, then the next batch


def test_the_engine_is_not_let_off_its_share_by_a_moment_it_was_not_waiting() -> None:
    """Between two batches the engine does a read outside the lock: a claim taking the lock in that moment does
    not wipe out what the engine held, so the engine's next batch still waits for its share of claims."""
    now = [0.0]
    first_claim = threading.Event()
    engine_queued = threading.Event()

    def hold(name: str) -> None:
        if not first_claim.is_set():
            first_claim.set()
            assert engine_queued.wait(5)
        now[0] += 10.0 if name.startswith("batch") else 1.0

    lock = PriorityLock(timer=lambda: now[0], memory=100.0)
    holders = Holders(lock, on_hold=hold)
    with lock.hold(lane=ENGINE):
        now[0] += 10.0  # the first batch
        for i in range(12):
            holders.queue(f"claim {i}", BACKGROUND)
    assert first_claim.wait(5)  # a claim holds the lock, the engine not waiting
    holders.queue("batch 2", ENGINE)
    engine_queued.set()
    order = holders.join()
    assert order.index("batch 2") == 10, order


def test_a_lane_that_ran_alone_is_not_owed_turns_for_it() -> None:
    """What one lane held more is remembered up to a bound: after the delivery workers wrote alone for a minute,
    the engine's batches take turns with their claims, not a minute of turns in a row."""
    now = [0.0]
    lock = PriorityLock(timer=lambda: now[0], memory=5.0)
    for _ in range(60):
        with lock.hold(lane=BACKGROUND):
            now[0] += 1.0
    holders = Holders(lock, on_hold=lambda name: now.__setitem__(0, now[0] + (10.0 if "batch" in name else 1.0)))
    with lock.hold(lane=BACKGROUND):
        now[0] += 1.0
        holders.queue("batch 1", ENGINE)
        for name in ("claim a", "claim b", "claim c"):
            holders.queue(name, BACKGROUND)
        holders.queue("batch 2", ENGINE)
    order = holders.join()
    assert order[0].startswith("batch") and order[-1].startswith("batch"), order  # which batch first: either


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_engine_batch_wakes_a_delivery_worker_per_claim_of_what_it_queued(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """25 pages queued wake three idle workers at once (claims of up to ten): the burst's sends start together,
    not one worker after another as each claim comes back full; and not 25 workers, 22 of them to claim
    nothing under the write lock."""
    service = make_service(db_url, rules_path, pd.url, clock)
    wakeups = service.outbox_wake
    woken: list[int] = []
    threads = []
    try:
        for i in range(5):
            event = wakeups.new()
            thread = threading.Thread(target=lambda e=event, i=i: wakeups.wait(e, 60.0) and woken.append(i))
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + 30
        while wakeups.idle < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert wakeups.idle == 5
        receive(service, [change(ticket(str(30000 + n))) for n in range(25)])
        assert service.engine.run_once() == 25
        deadline = time.monotonic() + 30
        while len(woken) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.2)  # time for a fourth, had it been woken
        assert len(woken) == 3 and wakeups.idle == 2
    finally:
        wakeups.set()
        for thread in threads:
            thread.join(timeout=5)
        service.store.dispose()


def test_no_holder_is_left_waiting_behind_a_free_lock() -> None:
    """Every lane taking the lock in a loop: the waiters must all agree on whose turn it is, or the lock stays free
    with every one of them waiting (the service's writes stopped for good; it happened to a version whose turns
    depended on the time)."""
    lock = PriorityLock()
    turns: Counter[str] = Counter()
    stop = threading.Event()

    def loop(lane: Lane) -> None:
        while not stop.is_set():
            with lock.hold(lane=lane):
                turns[lane] += 1
            if lane == URGENT:
                time.sleep(0.0005)  # the webhook writer waits for the next requests: the others get turns

    threads = [
        threading.Thread(target=loop, args=(lane,), daemon=True)
        for lane in (URGENT, URGENT, ENGINE, BACKGROUND, BACKGROUND, BACKGROUND)
    ]
    for thread in threads:
        thread.start()
    seen: list[Counter[str]] = []
    for _ in range(5):
        time.sleep(0.2)
        seen.append(Counter(turns))
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads), "holders stuck behind a free lock"
    assert all(later.total() > earlier.total() for earlier, later in itertools.pairwise(seen)), seen
    assert all(turns[lane] for lane in (URGENT, ENGINE, BACKGROUND)), turns
