"""``ticketpager_events_total{outcome="rate_limited"}`` counts an event once however often it is re-checked
(issue 14, item 12); what the limiter remembers to do so lasts only while the event is held back: a
long-running replica does not keep every event it ever held, and an outbox id the database hands out again
(SQLite reuses the ids of deleted rows once the table is emptied by retention) is a new event."""

from __future__ import annotations

import tracemalloc
from datetime import timedelta
from pathlib import Path

from connectors.pagerduty import RateLimiter
from kernel.clock import FakeClock
from sync.metrics import METRICS
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive


def rate_limited() -> float:
    labels = {"action": "trigger", "outcome": "rate_limited"}
    return METRICS.registry.get_sample_value("ticketpager_events_total", labels) or 0.0


def test_events_sent_are_forgotten(clock: FakeClock) -> None:
    limiter = RateLimiter(1, clock)
    events = range(10**9, 10**9 + 20_000)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for event in events:  # each held back once, then sent
            assert limiter.first_hold(event)
            limiter.sent(event)
        kept = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert kept < 200_000, f"{kept} bytes kept for 20,000 events no longer held"


def test_an_outbox_id_used_again_after_retention_is_a_new_event(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """A limit of 1 a minute: of two triggers the second is held and counted. A month later retention has
    deleted both rows (SQLite then hands out their ids again): of two new triggers the second is held, and
    counted, though it has the id of an event held a month ago."""
    with MockPagerDuty() as pd:
        svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": 1})
        try:
            delivery = svc.delivery()
            before = rate_limited()
            for first, second in (("10001", "10002"), ("10003", "10004")):
                receive(svc, [change(ticket(first)), change(ticket(second))])
                svc.engine.drain()
                delivery.drain()  # the first goes, the second is held
                clock.advance(61)
                delivery.drain()  # the second goes
                clock.advance(timedelta(days=31).total_seconds())
                svc.store.prune(clock.now() - timedelta(days=30))
            assert len(pd.events) == 4
        finally:
            svc.store.dispose()
    assert rate_limited() - before == 2
