"""Issue 13 item 8: while PagerDuty says "later" (429, ``Retry-After``) a page is never dead-lettered, unless
the operator's retry budget (``max_retry_seconds``) says so; then the dead letter says why and a re-drive
sends it. ``Retry-After`` is always honoured as given: never retried earlier."""

from __future__ import annotations

from pathlib import Path

from kernel.clock import FakeClock
from kernel.errors import PermanentError, RetryableError
from kernel.retry import RetryPolicy
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive


def test_repeated_429s_do_not_use_up_the_attempts(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Twenty 429s 30 s apart (10 minutes, well inside the hour's budget) with max_attempts 5: still sent."""
    svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"max_attempts": 5})
    pd.fail_next(20, 429, {"Retry-After": "30"})
    receive(svc, [change(ticket())])
    svc.engine.drain()
    delivery = svc.delivery()
    for _ in range(25):
        delivery.drain()
        assert svc.store.status().dead_letters == 0, svc.store.dead_letters()[0]["last_error"]
        clock.advance(30)
    assert len(pd.requests) == 21 and [e["event_action"] for e in pd.events] == ["trigger"]
    svc.store.dispose()


def test_retry_after_past_the_budget_is_a_dead_letter_that_says_why_and_can_be_redriven(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"max_retry_seconds": 3600})
    pd.fail_next(1, 429, {"Retry-After": "7200"})
    receive(svc, [change(ticket())])
    svc.engine.drain()
    delivery = svc.delivery()
    delivery.drain()
    dead = svc.store.dead_letters()
    assert len(dead) == 1 and not pd.events
    why = dead[0]["last_error"]
    assert "retries exhausted" not in why
    assert "7200" in why and "max_retry_seconds" in why and "3600" in why, why
    assert "HTTP 429" in why, "PagerDuty's answer is kept"
    clock.advance(7200)  # the operator re-drives it when PagerDuty accepts events again
    assert svc.store.retry_dead(None, clock.now()) == (1, 0)
    delivery.drain()
    assert [e["event_action"] for e in pd.events] == ["trigger"]
    assert svc.store.status().dead_letters == 0
    svc.store.dispose()


def test_retry_after_within_the_budget_is_waited_exactly(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"max_retry_seconds": 3600})
    pd.fail_next(1, 429, {"Retry-After": "3000"})
    receive(svc, [change(ticket())])
    svc.engine.drain()
    delivery = svc.delivery()
    delivery.drain()
    clock.advance(2999)
    delivery.drain()
    assert len(pd.requests) == 1 and svc.store.status().dead_letters == 0
    clock.advance(1)
    delivery.drain()
    assert [e["event_action"] for e in pd.events] == ["trigger"]
    svc.store.dispose()


def test_the_decision_names_its_reason() -> None:
    policy = RetryPolicy(
        max_attempts=3, max_total_seconds=100, later_uses_attempts=False, budget_name="budget max_retry_seconds"
    )
    assert policy.decide(9, 0, RetryableError("429", retry_after=30, status=429)).wait == 30
    assert policy.decide(9, 0, RetryableError("429", status=429)).wait is not None, "a 429 without Retry-After"
    late = policy.decide(1, 80, RetryableError("429", retry_after=30, status=429))
    assert late.wait is None and "asked to retry in 30 s" in late.reason and "max_retry_seconds" in late.reason
    exhausted = policy.decide(3, 0, RetryableError("500", status=500))
    assert exhausted.wait is None and "retries exhausted" in exhausted.reason
    assert policy.decide(1, 0, PermanentError("400")).reason == "permanent"
    counting = RetryPolicy(max_attempts=3)  # the vendor clients' policy: a 429 still uses an attempt
    assert counting.decide(3, 0, RetryableError("429", retry_after=1, status=429)).wait is None
