"""Who wakes whom (issue 19): delivery workers are woken when the engine queued a page, not on every
engine batch; they are woken without waiting for their idle poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event

from connectors.pagerduty_webhooks import parse_event
from kernel.clock import FakeClock
from kernel.incidents import IncidentEvent
from kernel.model import StatusCategory
from sync.repos import incidents as pd_inbox
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager.service import Service
from ticketpager.wakeups import Arrivals, Wakeups

WEBHOOKS = Path(__file__).parent / "fixtures" / "pagerduty" / "webhooks"


def test_delivery_is_woken_by_a_batch_that_queued_a_page_and_only_by_such_a_batch(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    service = make_service(db_url, rules_path, pd.url, clock)
    try:
        woken = service.outbox_wake.count
        receive(service, [change(ticket("1", priority="Low"))])  # no rule matches: nothing to deliver
        assert service.engine.run_once() == 1
        assert service.outbox_wake.count == woken

        receive(service, [change(ticket("2"))])  # pages
        assert service.engine.run_once() == 1
        assert service.outbox_wake.count == woken + 1
    finally:
        service.store.dispose()


def test_a_page_is_sent_at_once_although_the_workers_idle_poll_is_long(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    service = make_service(db_url, rules_path, pd.url, clock, engine={"idle_seconds": 30.0})
    service.start()
    try:
        time.sleep(0.2)  # every worker has made its first round and now waits (30 s) for a wake-up
        receive(service, [change(ticket("3"))])
        started = time.monotonic()
        service.wake.set()  # what the webhook writer does after its commit
        while not pd.events and time.monotonic() - started < 10:
            time.sleep(0.01)
        assert [e["event_action"] for e in pd.events] == ["trigger"]
        assert time.monotonic() - started < 5  # woken, not polled (the poll would take 30 s)
    finally:
        service.stop()
        service.store.dispose()


def _wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate() and time.monotonic() - started < seconds:
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_retry_is_sent_when_it_comes_due_without_any_worker_polling(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    # the workers' own look is 30 s away: only the idle look, which sleeps until the next due row, sends it
    service = make_service(db_url, rules_path, pd.url, clock, engine={"idle_seconds": 0.05})
    pd.fail_next(1, 500)
    service.start()
    try:
        receive(service, [change(ticket("4"))])
        service.wake.set()
        _wait_for(lambda: len(pd.requests) == 1)
        time.sleep(0.3)  # the failure is recorded: the row waits for its retry (fake clock)
        assert pd.events == []
        assert len(pd.requests) == 1
        clock.advance(300)  # the retry comes due
        waited = _wait_for(lambda: bool(pd.events))
        assert [e["event_action"] for e in pd.events] == ["trigger"]
        assert waited < 5  # not the workers' 30 s fallback
    finally:
        service.stop()
        service.store.dispose()


def test_a_row_queued_by_another_replica_is_sent_within_the_idle_bound(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    service = make_service(db_url, rules_path, pd.url, clock, engine={"idle_seconds": 0.2})
    other = make_service(db_url, rules_path, pd.url, clock)  # not started: it queues, it never sends
    service.start()
    try:
        time.sleep(0.3)  # every worker of the running replica waits for a wake-up
        receive(other, [change(ticket("5"))])
        assert other.engine.run_once() == 1  # wakes the other replica's (absent) workers, not ours
        waited = _wait_for(lambda: bool(pd.events))
        assert [e["event_action"] for e in pd.events] == ["trigger"]
        assert waited < 5  # found by the idle look (0.2 s here), not the workers' 30 s fallback
    finally:
        service.stop()
        service.store.dispose()
        other.store.dispose()


#: the threads that touch the database while nothing happens
IDLE_THREADS = {"ticketpager-idle-look", "ticketpager-heartbeat", "ticketpager-scheduler"}


@contextmanager
def database_users(service: Service) -> Iterator[list[str]]:
    """The names of the threads that check out a database connection or begin a transaction while the block runs,
    in order (on SQLite the write transactions share one kept connection: they begin without a checkout)."""
    seen: list[str] = []

    def used(*_: object) -> None:
        seen.append(threading.current_thread().name)

    event.listen(service.store.engine, "checkout", used)
    event.listen(service.store.engine, "begin", used)
    try:
        yield seen
    finally:
        event.remove(service.store.engine, "checkout", used)
        event.remove(service.store.engine, "begin", used)


def _settled(service: Service, quiet: float = 0.3, seconds: float = 10.0) -> None:
    """Wait until every thread of the started ``service`` made its first round and now waits: no thread but the
    idle ones touched the database for ``quiet`` seconds (a loaded machine may take longer than a fixed sleep)."""
    deadline = time.monotonic() + seconds
    with database_users(service) as seen:
        while time.monotonic() < deadline:
            mark = len(seen)
            time.sleep(quiet)
            if not set(seen[mark:]) - IDLE_THREADS:
                return
    raise AssertionError(f"the service's threads did not settle: {seen[-20:]}")


def test_a_change_stored_by_another_replica_is_processed_within_the_idle_bound(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """The engine no longer looks by itself every ``idle_seconds`` (its own fallback is 30 s): the idle look
    finds the change another replica stored and wakes it."""
    service = make_service(db_url, rules_path, pd.url, clock, engine={"idle_seconds": 0.2})
    other = make_service(db_url, rules_path, pd.url, clock)  # not started: it stores, it never processes
    service.start()
    try:
        _settled(service)  # the engine has made its first round and waits for a wake-up
        receive(other, [change(ticket("6"))])  # the other replica's writer: it would wake its own engine only
        waited = _wait_for(lambda: bool(pd.events))
        assert [e["event_action"] for e in pd.events] == ["trigger"]
        assert waited < 5  # the idle look (0.2 s here), not the engine's 30 s fallback
    finally:
        service.stop()
        service.store.dispose()
        other.store.dispose()


def test_a_pagerduty_webhook_stored_by_another_replica_is_handled_within_the_idle_bound(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """The reverse worker runs where its lease is: a webhook another replica answered is found by this one's idle
    look, not by the reverse worker's own 30 s fallback."""
    service = make_service(db_url, rules_path, pd.url, clock, engine={"idle_seconds": 0.2})
    other = make_service(db_url, rules_path, pd.url, clock)
    service.start()
    try:
        _settled(service)  # the reverse worker has made its first round and waits for a wake-up
        body = (WEBHOOKS / "acknowledged_by_user.json").read_bytes()
        parsed = parse_event(body)
        assert isinstance(parsed, IncidentEvent)
        assert other.store_pagerduty_webhook("wh-from-the-other-replica", parsed, body)
        waited = _wait_for(lambda: not pd_inbox.has_pending(service.store))
        assert waited < 5
    finally:
        service.stop()
        service.store.dispose()
        other.store.dispose()


def test_an_idle_service_looks_at_the_database_from_one_thread_only(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Each thread's idle wake-up costs CPU (issue 19, goal 1: idle ``serve``): the engine, the reverse worker
    and the delivery workers wait for wake-ups; only the idle look, the heartbeat and the scheduler's gauges touch
    the database while nothing happens."""
    service = make_service(db_url, rules_path, pd.url, clock, engine={"idle_seconds": 0.05})
    service.start()
    try:
        _settled(service)
        with database_users(service) as looked:
            time.sleep(1.0)  # 20 idle periods
    finally:
        service.stop()
        service.store.dispose()
    assert looked.count("ticketpager-idle-look") >= 5, looked
    assert set(looked) <= IDLE_THREADS, looked


# -- how many workers a wake-up wakes (ticketpager/wakeups.py) ---------------------------------------------
def _waiters(wakeups: Wakeups, n: int) -> tuple[list[threading.Event], list[int], list[threading.Thread]]:
    """``n`` threads, each waiting once on its own event; returns their events, who returned, the threads."""
    events = [wakeups.new() for _ in range(n)]
    woken: list[int] = []

    def wait(i: int) -> None:
        if wakeups.wait(events[i], 5.0):
            woken.append(i)

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    _wait_for(lambda: wakeups.idle == n)
    return events, woken, threads


def test_one_wake_up_wakes_one_idle_worker_not_all() -> None:
    wakeups = Wakeups()
    _, woken, threads = _waiters(wakeups, 4)
    wakeups.wake()
    _wait_for(lambda: len(woken) == 1)
    time.sleep(0.1)
    assert len(woken) == 1, "one page: one worker's claim probe, not four"
    assert wakeups.idle == 3
    wakeups.set()  # shutdown wakes every one
    for t in threads:
        t.join(5)
    assert sorted(woken) == [0, 1, 2, 3]


def test_a_wake_up_that_finds_every_worker_busy_is_not_lost() -> None:
    """All workers are between their claim and their wait when the engine queues a page: the next worker
    that would wait claims again at once instead of sleeping through it."""
    wakeups = Wakeups()
    mine = wakeups.new()
    other = wakeups.new()
    wakeups.wake()  # nobody waits
    started = time.monotonic()
    assert wakeups.wait(mine, 5.0) is True
    assert time.monotonic() - started < 1
    assert wakeups.wait(other, 0.05) is False, "one wake-up was owed, taken once"


def _started_for_bursts(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Service:
    """A started service whose workers only wake when told (no idle look for 30 s) and no rate limit in the way."""
    service = make_service(
        db_url, rules_path, pd.url, clock, engine={"idle_seconds": 30.0}, pagerduty={"rate_limit_per_minute": 10_000}
    )
    service.start()
    return service


def test_a_burst_brings_every_worker_in(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """One wake-up per engine batch, yet 60 pages are spread over the 4 workers: a worker whose claim came back
    full wakes the next."""
    pd.latency_seconds = 0.05
    service = _started_for_bursts(db_url, rules_path, pd, clock)
    try:
        time.sleep(0.3)  # every worker waits
        receive(service, [change(ticket(str(100 + i))) for i in range(60)])
        service.wake.set()
        _wait_for(lambda: len(pd.events) == 60, 30)
        assert len(pd.events) == 60
        with service.store.engine.connect() as conn:
            workers = conn.exec_driver_sql("SELECT COUNT(DISTINCT claimed_by) FROM outbox").scalar()
        assert workers == 4
    finally:
        service.stop()
        service.store.dispose()


def test_a_burst_that_ends_with_a_full_batch_wakes_no_other_worker(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Ten pages, one full claim: the batch's marks claim the next batch and find none, so no other worker is
    woken only to look and find nothing (each idle wake-up costs a thread's CPU: issue 19)."""
    service = _started_for_bursts(db_url, rules_path, pd, clock)
    try:
        _settled(service)
        with database_users(service) as used:
            receive(service, [change(ticket(str(200 + i))) for i in range(10)])
            service.wake.set()
            _wait_for(lambda: len(pd.events) == 10, 30)
            _settled(service)
    finally:
        service.stop()
        service.store.dispose()
    assert len(pd.events) == 10
    senders = {name for name in used if "delivery" in name}
    assert len(senders) == 1, f"one worker sent the batch; the others were not woken: {sorted(senders)}"


def test_a_claim_holds_about_a_quarter_second_of_sends_when_pagerduty_is_slow(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """A worker sends its claimed rows one after another: with PagerDuty answering in 100 ms a claim of 10 would
    hold a second of work the idle workers could share (the tail of a burst). After slow sends a worker claims
    2 rows; after fast ones, 10."""
    with MockPagerDuty(clock=clock, latency=lambda n: 0.1) as slow:
        service = make_service(db_url, rules_path, slow.url, clock, pagerduty={"rate_limit_per_minute": 10_000})
        try:
            receive(service, [change(ticket(str(300 + i))) for i in range(30)])
            service.engine.drain()
            service.heartbeat.register()  # alone on its database: a full batch claims the next with its marks
            worker = service.delivery(heartbeat=service.heartbeat)
            assert worker.claim_size() == 10, "nothing measured yet"
            assert worker.run_once(worker.claim_size()) == 10
            assert worker.claim_size() == 2
            with service.store.engine.connect() as conn:
                ahead = conn.exec_driver_sql(
                    "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND claimed_until IS NOT NULL"
                ).scalar()
            assert ahead == 2, "the next batch, claimed with the marks, is already the smaller claim"
            beside = service.delivery("beside")  # no heartbeat (as beside other replicas): no claim ahead
            assert beside.run_once(beside.claim_size()) == 10
            assert beside.claim_size() == 2
            assert beside.run_once(beside.claim_size()) == 2
            assert worker.run_once(worker.claim_size()) == 2
            with service.store.engine.connect() as conn:
                held = conn.exec_driver_sql(
                    "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND claimed_until IS NOT NULL"
                ).scalar()
            assert held == 2, "the next batch claimed with the marks is 2 rows: the other 16 stay for the other workers"
        finally:
            service.store.dispose()
    with MockPagerDuty(clock=clock, latency=lambda n: 0.005) as fast:
        service = make_service(db_url, rules_path, fast.url, clock, pagerduty={"rate_limit_per_minute": 10_000})
        try:
            receive(service, [change(ticket(str(400 + i))) for i in range(20)])
            service.engine.drain()
            worker = service.delivery()
            worker.run_once(worker.claim_size())
            assert worker.claim_size() == 10
        finally:
            service.store.dispose()


# -- the engine's batches (issue 19: a batch's fixed cost shared by the changes of its window) -----------------
def test_a_backlog_is_decided_batch_after_batch_on_one_wake_up(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """After a batch that was not full the engine waits for the next wake-up; after a full one it claims again
    at once, so a backlog never waits for the idle look (30 s here) between batches."""
    service = make_service(db_url, rules_path, pd.url, clock, engine={"idle_seconds": 30.0, "batch_size": 5})
    service.start()
    try:
        time.sleep(0.2)  # the engine waits for a wake-up
        receive(service, [change(ticket(str(500 + i)), delivery_id=f"backlog-{i}") for i in range(23)])
        service.writer.on_commit(23)  # what the webhook writer does after its commit
        waited = _wait_for(lambda: len(pd.events) == 23, 20)
        assert len(pd.events) == 23
        assert waited < 10, "5 batches on one wake-up, not one batch per idle look"
    finally:
        service.stop()
        service.store.dispose()


def test_a_tickets_later_change_is_decided_at_once_not_at_the_idle_look(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """A claim takes one change per ticket: a ticket created and updated within one window needs two batches,
    the second at once (it used to wait for the idle look, 30 s here)."""
    service = make_service(db_url, rules_path, pd.url, clock, engine={"idle_seconds": 30.0})
    service.start()
    try:
        time.sleep(0.2)  # the engine waits for a wake-up
        opened = ticket("700")
        done = ticket("700", status="Done", category=StatusCategory.DONE, minutes=5)
        receive(service, [change(opened, delivery_id="create-700"), change(done, delivery_id="done-700")])
        service.writer.on_commit(2)  # what the webhook writer does after its commit
        waited = _wait_for(lambda: [e["event_action"] for e in pd.events] == ["trigger", "resolve"], 20)
        assert [e["event_action"] for e in pd.events] == ["trigger", "resolve"]
        assert waited < 10, "the second change waited for the idle look"
    finally:
        service.stop()
        service.store.dispose()


def test_the_engine_says_when_its_batch_left_changes_behind(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    service = make_service(db_url, rules_path, pd.url, clock, engine={"batch_size": 2})
    try:
        assert service.engine.run_once(woken=True) == 0, "woken for nothing (another replica took it): no error"
        receive(service, [change(ticket(str(600 + i))) for i in range(3)])
        assert service.engine.run_once(woken=True) == 2 and service.engine.left_pending
        assert service.engine.run_once() == 1 and not service.engine.left_pending
        assert service.engine.run_once() == 0 and not service.engine.left_pending
    finally:
        service.store.dispose()


def test_arrivals_end_the_engines_wait_once_enough_changes_are_there() -> None:
    arrivals = Arrivals()
    started = time.monotonic()
    assert arrivals.gather(8, 0.05) == 0, "nothing arrived: the window runs out"
    assert time.monotonic() - started >= 0.04

    def commits() -> None:
        for _ in range(4):
            time.sleep(0.01)
            arrivals.add(2)  # group commits of two webhooks each

    writer = threading.Thread(target=commits)
    started = time.monotonic()
    writer.start()
    assert arrivals.gather(8, 30.0) == 8
    assert time.monotonic() - started < 10, "ended by the eighth change, not by the window"
    writer.join()
    assert arrivals.gather(8, 30.0) == 8, "already there: no wait"
    arrivals.reset()
    assert arrivals.gather(1, 0.01) == 0, "claimed: counted from zero again"
