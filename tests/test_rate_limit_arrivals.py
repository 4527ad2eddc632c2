"""Issue 13 item 6: never more than the configured number of events arrive at PagerDuty in any 60 s.

The limiter used to record when it decided to send, not when the event could arrive: a send that takes
longer than a later one (latency varies) let 121 events arrive within 59.99 s. Here the local PagerDuty fake
spends each request's latency on the same fake clock the service runs on and records the arrival time, so
the sliding-window check is exact and nothing sleeps. With two replicas the limit is the cluster's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from connectors.pagerduty import RateLimiter
from kernel.clock import FakeClock
from tests.factories import ROUTING_KEY, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty, most_in_any_minute
from tests.harness import make_service, receive
from ticketpager.service import Service

LIMIT = 120
EVENTS = 130
WINDOW = timedelta(seconds=60)


@pytest.fixture
def pd(clock: FakeClock) -> Iterator[MockPagerDuty]:
    rng = random.Random(13)

    def latency(n: int) -> float:  # a slow start (1 s for the first ten), then about 100 ms, never the same
        return 1.0 if n < 10 else rng.uniform(0.05, 0.15)

    with MockPagerDuty(clock=clock, latency=latency) as mock:
        yield mock



@pytest.mark.parametrize(("replicas", "threads"), [(1, 1), (2, 1), (1, 4)])
def test_no_60s_window_at_pagerduty_holds_more_than_the_limit(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, replicas: int, threads: int
) -> None:
    """One replica, two replicas sharing the database, and four delivery threads of one replica sending at
    once (their sends overlap: the in-flight ones must count)."""
    services: list[Service] = [
        make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": LIMIT})
        for _ in range(replicas)
    ]
    receive(services[0], [change(ticket(str(10_000 + n))) for n in range(EVENTS)])
    services[0].engine.drain()
    workers = [svc.delivery(str(n)) for svc in services for n in range(threads)]
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        for _ in range(2_000):  # until everything went out; the clock moves by the requests' latency and here
            if len(pd.events) == EVENTS:
                break
            sent = sum(pool.map(lambda worker: worker.run_once(limit=5), workers))
            if not sent:
                clock.advance(0.25)
    for svc in services:
        svc.store.dispose()
    assert len(pd.events) == EVENTS and {e["routing_key"] for e in pd.events} == {ROUTING_KEY}
    assert len({e["dedup_key"] for e in pd.events}) == EVENTS, "each event once"
    assert most_in_any_minute(pd.arrived_at) <= LIMIT


def test_a_send_counts_from_when_it_ended_not_from_when_it_was_decided(clock: FakeClock) -> None:
    """One per minute: a send decided at 0 s that took 5 s to answer may have arrived at 5 s, so the next
    goes no earlier than 5 + 60 s (+ the margin); one still in flight counts for as long as a POST can last."""
    limiter = RateLimiter(1, clock, send_seconds=20)
    wait, sending = limiter.reserve("k")
    assert wait == 0 and sending is not None
    clock.advance(5)
    assert limiter.reserve("k")[0] == pytest.approx(20 - 5 + 61), "in flight: counted until its longest end"
    sending.finished()
    assert limiter.reserve("k")[0] == pytest.approx(61)
    clock.advance(60.5)
    assert limiter.reserve("k")[1] is None
    clock.advance(0.5)
    assert limiter.reserve("k")[1] is not None
