"""SQLite's write lock in lanes (issue 19): the webhook writer goes first but does not take every turn, and the
engine and the delivery workers share the rest by time, so a burst of webhooks neither stops the engine nor lets
the engine hold off the workers that send its pages."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from kernel.clock import FakeClock
from sync.engine import YIELD_AFTER_CHANGES
from sync.writelock import BACKGROUND, ENGINE, MAX_WAIT_SECONDS, URGENT, Lane, PriorityLock
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
            with self.lock.hold(lane == URGENT, lane=lane):
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


def test_the_webhook_writers_commits_go_first_while_the_others_waited_less_than_the_bound() -> None:
    now = [0.0]
    lock = PriorityLock(timer=lambda: now[0])
    holders = Holders(lock)
    with lock.hold(urgent=True):  # the writer's commit
        holders.queue("engine batch", ENGINE)
        holders.queue("commit", URGENT)
        holders.queue("claim", BACKGROUND)
        holders.queue("commit", URGENT)
        now[0] += MAX_WAIT_SECONDS / 2
    assert holders.join() == ["commit", "commit", "engine batch", "claim"]


def test_the_webhook_writer_does_not_take_every_turn_while_other_work_waits() -> None:
    """During a burst the webhook writer always has the next commit waiting: after the others waited
    ``MAX_WAIT_SECONDS`` it goes after every other holder, or nothing else would ever write."""
    now = [0.0]
    lock = PriorityLock(timer=lambda: now[0])
    holders = Holders(lock)
    with lock.hold(urgent=True):  # the writer's commit
        holders.queue("engine batch", ENGINE)
        holders.queue("commit", URGENT)
        holders.queue("claim", BACKGROUND)
        holders.queue("commit", URGENT)
        now[0] += MAX_WAIT_SECONDS
    assert holders.join() == ["engine batch", "commit", "claim", "commit"]


def test_the_engine_and_the_delivery_workers_share_the_lock_by_the_time_they_hold_it() -> None:
    """An engine batch that held the lock for as long as ten claims is followed by ten claims, not by one claim
    and the next batch (which left pages queued and unsent while the engine caught up)."""
    now = [0.0]
    held_for = {"batch 1": 10.0, "batch 2": 10.0} | {f"claim {i}": 1.0 for i in range(12)}

    def hold(name: str) -> None:
        now[0] += held_for[name]

    lock = PriorityLock(timer=lambda: now[0])
    holders = Holders(lock, on_hold=hold)
    with lock.hold(lane=ENGINE):
        now[0] += 10.0  # the first batch, while the others queue
        for i in range(12):
            holders.queue(f"claim {i}", BACKGROUND)
        holders.queue("batch 2", ENGINE)
    order = holders.join()
    assert order.index("batch 2") == 10, order  # ten claims of one second each, then the next batch


def test_a_lane_that_ran_alone_is_not_owed_turns_for_it() -> None:
    """The shares count only while both lanes wait: after the delivery workers wrote alone for a minute, the
    engine's batches take turns with their claims, not a minute of turns in a row."""
    now = [0.0]
    lock = PriorityLock(timer=lambda: now[0])
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
    assert order[0] == "batch 1" and order[-1] == "batch 2", order


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_engine_processes_a_burst_while_its_webhooks_still_arrive(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """The webhook writer's next commit always waiting (a burst): the engine still gets the lock, and its batch
    processes several changes before it commits for the writer, not one."""
    service = make_service(db_url, rules_path, pd.url, clock)
    stop = threading.Event()
    commits = [0]

    def burst() -> None:  # the webhook writer, committing back to back
        while not stop.is_set():
            with service.store.begin(urgent=True) as conn:
                conn.execute(text("SELECT 1"))
                commits[0] += 1

    try:
        receive(service, [change(ticket(str(20000 + n))) for n in range(30)])
        writer = threading.Thread(target=burst)
        writer.start()
        handled: list[int] = []
        engine = threading.Thread(target=lambda: handled.append(service.engine.run_once(woken=True)))
        engine.start()
        engine.join(timeout=10)
        stop.set()
        writer.join(timeout=10)
        assert not engine.is_alive() and handled, "the engine never got the lock while webhooks were committed"
        assert handled[0] >= YIELD_AFTER_CHANGES
        assert commits[0] > 0
    finally:
        stop.set()
        service.store.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_engine_batch_wakes_a_delivery_worker_per_page_it_queued(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Three pages queued wake three idle workers at once: the burst's sends start together, not one worker
    after another as each claim comes back full."""
    service = make_service(db_url, rules_path, pd.url, clock)
    wakeups = service.outbox_wake
    woken: list[int] = []
    threads = []
    try:
        for i in range(5):
            event = wakeups.new()
            thread = threading.Thread(target=lambda e=event, i=i: wakeups.wait(e, 2.0) and woken.append(i))
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + 5
        while wakeups.idle < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        receive(service, [change(ticket(str(30000 + n))) for n in range(3)])
        assert service.engine.run_once() == 3
        for thread in threads:
            thread.join(timeout=5)
        assert len(woken) == 3
    finally:
        service.store.dispose()


def test_no_holder_is_left_waiting_behind_a_free_lock() -> None:
    """Every lane taking the lock in a loop, with the time bound short enough to matter on every turn: the waiters
    must all agree on whose turn it is, or the lock stays free with every one of them waiting (the service's
    writes stopped for good)."""
    lock = PriorityLock(max_wait=0.0002)
    turns: Counter[str] = Counter()
    stop = threading.Event()

    def loop(lane: Lane) -> None:
        while not stop.is_set():
            with lock.hold(lane == URGENT, lane=lane):
                turns[lane] += 1

    threads = [
        threading.Thread(target=loop, args=(lane,), daemon=True)
        for lane in (URGENT, URGENT, ENGINE, BACKGROUND, BACKGROUND, BACKGROUND)
    ]
    for thread in threads:
        thread.start()
    seen: list[Counter[str]] = []
    for _ in range(10):
        time.sleep(0.1)
        seen.append(Counter(turns))
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads), "holders stuck behind a free lock"
    assert all(later.total() > earlier.total() for earlier, later in itertools.pairwise(seen)), seen
    assert all(turns[lane] for lane in (URGENT, ENGINE, BACKGROUND)), turns
