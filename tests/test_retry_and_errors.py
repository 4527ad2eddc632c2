"""The retry decision is pure and bounded; statuses are classified once, per vendor table."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from kernel import retry
from kernel.clock import FakeClock
from kernel.errors import (
    Kind,
    PermanentError,
    RetryableError,
    StatusRule,
    classify_status,
    parse_retry_after,
)

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = retry.RetryPolicy(max_attempts=20, max_total_seconds=1e9, base_seconds=1, cap_seconds=30)
    rng = random.Random(7)
    waits = [policy.delay(n, 0, RetryableError("x"), rng) for n in range(1, 10)]
    assert all(w is not None for w in waits)
    assert 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2 and 2 <= waits[2] <= 4  # type: ignore[operator]
    assert all(w <= 30 for w in waits if w is not None)
    assert len({round(w, 6) for w in waits if w is not None}) > 3, "jitter spreads retries"


def test_retry_after_wins_over_backoff() -> None:
    policy = retry.RetryPolicy()
    assert policy.delay(1, 0, RetryableError("x", retry_after=37)) == 37


def test_gives_up_on_attempts_total_time_and_permanent_errors() -> None:
    policy = retry.RetryPolicy(max_attempts=3, max_total_seconds=100)
    assert policy.delay(3, 0, RetryableError("x")) is None
    assert policy.delay(1, 99.9, RetryableError("x", retry_after=5)) is None
    assert policy.delay(1, 0, PermanentError("x")) is None
    assert policy.delay(1, 0, ValueError("x")) is None
    assert policy.delay(1, 0, RetryableError("x", retry_after=10_000)) is None


def test_call_sleeps_on_the_injected_clock_only() -> None:
    clock = FakeClock()
    attempts = []

    def flaky() -> str:
        attempts.append(clock.now())
        if len(attempts) < 3:
            raise RetryableError("429", retry_after=12)
        return "ok"

    assert retry.call(flaky, retry.RetryPolicy(), clock) == "ok"
    assert clock.sleeps == [12, 12]
    assert (attempts[2] - attempts[0]).total_seconds() == 24


def test_call_does_not_retry_permanent_errors() -> None:
    clock = FakeClock()
    calls = []

    def broken() -> None:
        calls.append(1)
        raise PermanentError("401")

    with pytest.raises(PermanentError):
        retry.call(broken, retry.RetryPolicy(), clock)
    assert calls == [1] and clock.sleeps == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30", 30.0), ("0", 0.0), ("  5 ", 5.0), ("Fri, 27 Nov 2026 09:01:00 GMT", 60.0), ("soon", None), (None, None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_classification_table() -> None:
    table = {429: StatusRule(Kind.RETRYABLE, "https://doc"), 409: StatusRule(Kind.SKIPPABLE, "https://doc")}
    err = classify_status("V", 429, table, message="slow down", headers={"Retry-After": "3"})
    assert isinstance(err, RetryableError) and err.retry_after == 3
    assert classify_status("V", 409, table, message="x").kind is Kind.SKIPPABLE  # type: ignore[union-attr]
    assert classify_status("V", 502, table, message="x").kind is Kind.RETRYABLE  # type: ignore[union-attr]
    assert classify_status("V", 401, table, message="x").kind is Kind.PERMANENT  # type: ignore[union-attr]
    assert classify_status("V", 204, table, message="x") is None
