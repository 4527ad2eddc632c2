"""Console login rate limiting: after N failed logins from one address within the window, that address gets 429
(even with the right token) until the block ends, counted in ``ticketpager_console_logins_total`` and logged;
other addresses are not affected; the limiter's memory is bounded. Time from the injected clock."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.metrics import METRICS
from tests.harness import make_service
from tests.test_console import CONSOLE, TOKEN, csrf
from ticketpager.app import build_app
from ticketpager.console.ratelimit import BLOCK_SECONDS, MAX_FAILURES, WINDOW_SECONDS, LoginLimiter
from ticketpager.service import Service


@pytest.fixture
def service(tmp_path: Path, rules_path: Path, clock: FakeClock) -> Iterator[Service]:
    # behind a proxy that says who the client is, so one test client can be several addresses
    console = {**CONSOLE, "trust_proxy_headers": True}
    svc = make_service(
        f"sqlite:///{tmp_path / 'tp.db'}", rules_path, "http://127.0.0.1:9/v2/enqueue", clock, console=console
    )
    yield svc
    svc.store.dispose()


def attempt(client: TestClient, token: str, address: str) -> int:
    headers = {"X-Forwarded-For": f"198.51.100.77, {address}"}  # the proxy appends the peer last
    form = client.get("/console/login", headers=headers)
    answer = client.post("/console/login", data={"csrf": csrf(form.text), "token": token}, headers=headers)
    return answer.status_code


def logins(outcome: str) -> float:
    return METRICS.registry.get_sample_value("ticketpager_console_logins_total", {"outcome": outcome}) or 0.0


def test_too_many_failed_logins_get_429_until_the_block_ends(
    service: Service, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limited_before, failed_before = logins("rate_limited"), logins("failed")
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as client:
        for _ in range(MAX_FAILURES):
            clock.advance(1)
            assert attempt(client, "guess", "203.0.113.5") == 401
        with caplog.at_level(logging.WARNING, "ticketpager.console"):
            form = client.get("/console/login", headers={"X-Forwarded-For": "203.0.113.5"})
            refused = client.post(
                "/console/login",
                data={"csrf": csrf(form.text), "token": TOKEN},
                headers={"X-Forwarded-For": "203.0.113.5"},
            )
        assert refused.status_code == 429, "the right token is not even checked while blocked"
        assert "too many failed logins" in refused.text and int(refused.headers["retry-after"]) == BLOCK_SECONDS
        assert "tp_console=" not in refused.headers.get("set-cookie", "")
        assert any("203.0.113.5" in r.getMessage() and "too many" in r.getMessage() for r in caplog.records)
        assert TOKEN not in caplog.text
        assert attempt(client, TOKEN, "203.0.113.9") == 303, "another address logs in"
        clock.advance(BLOCK_SECONDS - 1)
        assert attempt(client, TOKEN, "203.0.113.5") == 429
        clock.advance(1)
        assert attempt(client, TOKEN, "203.0.113.5") == 303, "the block is over"
    assert logins("failed") - failed_before == MAX_FAILURES
    assert logins("rate_limited") - limited_before == 2


def test_failures_spread_wider_than_the_window_are_not_blocked(service: Service, clock: FakeClock) -> None:
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as client:
        for _ in range(MAX_FAILURES * 2):
            clock.advance(WINDOW_SECONDS / (MAX_FAILURES - 1) + 1)
            assert attempt(client, "guess", "203.0.113.5") == 401
        assert attempt(client, TOKEN, "203.0.113.5") == 303


def test_a_good_login_forgets_the_failures() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(clock, max_failures=3, window=60, block=60)
    assert limiter.attempt("a") == 0 and limiter.attempt("a") == 0
    limiter.succeeded("a")
    assert limiter.attempt("a") == 0 and limiter.attempt("a") == 0
    assert limiter.attempt("a") == 0, "the third is checked"
    assert limiter.blocked("a") == 60 and limiter.attempt("a") == 60


def test_attempts_count_before_their_credentials_are_checked() -> None:
    """Guesses that arrive together, none of them answered yet: only the limit's number are let through to the
    check; the rest are refused, not counted, for the block's length."""
    clock = FakeClock()
    limiter = LoginLimiter(clock, max_failures=3, window=60, block=60)
    assert [limiter.attempt("a") for _ in range(5)] == [0, 0, 0, 60, 60]
    assert limiter.attempt("b") == 0, "another address is not held back"
    limiter.succeeded("a")  # one of the three in the check was right
    assert limiter.attempt("a") == 0


def test_memory_is_bounded_and_stale_addresses_go_first() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(clock, max_failures=2, window=60, block=600, max_addresses=100)
    limiter.attempt("blocked")
    limiter.attempt("blocked")
    for n in range(99):
        limiter.attempt(f"10.0.0.{n}")
    clock.advance(120)  # every address's failures are stale; "blocked" is still blocked
    for n in range(5000):
        limiter.attempt(f"10.1.{n // 256}.{n % 256}")
        assert len(limiter) <= 100
    assert limiter.blocked("blocked") == 0, "at the worst the least recently seen address is dropped"
    limiter = LoginLimiter(clock, max_failures=2, window=60, block=600, max_addresses=100)
    limiter.attempt("blocked")
    limiter.attempt("blocked")
    clock.advance(120)
    for n in range(99):
        limiter.attempt(f"10.0.0.{n}")
    clock.advance(120)
    limiter.attempt("new")
    assert limiter.blocked("blocked") == 360, "stale addresses are dropped before a blocked one"
