"""Who wakes whom (issue 19): delivery workers are woken when the engine queued a page, not on every
engine batch; they are woken without waiting for their idle poll."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive


@pytest.fixture
def pd() -> Iterator[MockPagerDuty]:
    with MockPagerDuty() as mock:
        yield mock


def test_delivery_is_woken_by_a_batch_that_queued_a_page_and_only_by_such_a_batch(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    service = make_service(db_url, rules_path, pd.url, clock)
    try:
        receive(service, [change(ticket("1", priority="Low"))])  # no rule matches: nothing to deliver
        assert service.engine.run_once() == 1
        assert not service.outbox_wake.is_set()

        receive(service, [change(ticket("2"))])  # pages
        assert service.engine.run_once() == 1
        assert service.outbox_wake.is_set()
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
