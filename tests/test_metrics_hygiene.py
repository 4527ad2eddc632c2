"""What a Prometheus scrape of ``/metrics`` holds: no ``_created`` twin of every counter, the process metrics
and a build_info every exporter is expected to have, and a rate-limited count of events, not of re-checks."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.metrics import METRICS
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager.app import build_app
from ticketpager.service import Service


@pytest.fixture
def service(db_url: str, rules_path: Path, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(db_url, rules_path, "http://127.0.0.1:9/v2/enqueue", clock)
    yield svc
    svc.store.dispose()


def scrape(service: Service) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], parsed from the app's /metrics as Prometheus would read it."""
    with TestClient(build_app(service)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_no_created_series(service: Service) -> None:
    samples = scrape(service)
    assert "ticketpager_webhooks_total" in samples, "the scrape is not ticketpager's"
    created = sorted(name for name in samples if name.endswith("_created"))
    assert not created, f"{len(created)} _created series: {created}"


def test_process_metrics_are_exported(service: Service) -> None:
    samples = scrape(service)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert name in samples, f"{name} missing from /metrics"
    ((_, rss),) = samples["process_resident_memory_bytes"]
    assert rss > 1_000_000, "a Python process uses more than 1 MB"


def test_build_info_carries_the_version_and_python(service: Service) -> None:
    ((labels, value),) = scrape(service)["ticketpager_build_info"]
    assert value == 1
    assert labels == {"version": version("ticketpager"), "python_version": platform.python_version()}


def rate_limited() -> float:
    labels = {"action": "trigger", "outcome": "rate_limited"}
    value = METRICS.registry.get_sample_value("ticketpager_events_total", labels)
    return value or 0.0


def test_rate_limited_counts_held_events_not_rechecks(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    """A limit of 1 a minute and 4 triggers at once: 3 are held back. Each is re-checked every time the window
    frees a slot (that another one takes), but is counted once."""
    with MockPagerDuty() as pd:
        svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": 1})
        try:
            receive(svc, [change(ticket(str(10001 + n))) for n in range(4)])
            svc.engine.drain()
            before = rate_limited()
            delivery = svc.delivery()
            for _ in range(4):
                delivery.drain()
                clock.advance(61)
            assert len(pd.events) == 4
        finally:
            svc.store.dispose()
    assert rate_limited() - before == 3


def test_the_memory_of_held_events_is_bounded(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A held event is counted once while remembered; the oldest are forgotten past HELD_MEMORY."""
    from connectors import pagerduty

    monkeypatch.setattr(pagerduty, "HELD_MEMORY", 2)
    limiter = pagerduty.RateLimiter(1, clock)
    assert [limiter.first_hold(event) for event in (1, 2, 1, 3)] == [True, True, False, True]
    assert limiter.first_hold(2) is True, "2 was the oldest once 3 came: forgotten"
    assert limiter.first_hold(3) is False, "3 is remembered"
    assert limiter.first_hold(1) is True, "1 was pushed out by 2"
