"""PagerDuty limits are enforced before sending, so a page is never lost to a 400; every body we build is
valid against PagerDuty's own OpenAPI of Events API v2 (shared/specs) plus the documented limits."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import requests
import responses

from connectors.pagerduty import (
    EVENT_MAX_BYTES,
    SUMMARY_MAX,
    TRUNCATION_MARK,
    PagerDutySink,
    RateLimiter,
    build_event,
    mask,
)
from kernel.clock import FakeClock
from kernel.errors import PermanentError, RetryableError
from kernel.lifecycle import DEDUP_KEY_MAX, dedup_key_for
from kernel.model import EventAction, PlannedEvent, TriggerSpec
from tests.factories import ticket
from tests.fakes.pagerduty_server import EVENT_SCHEMA, SHARED_SPEC_PATH, SPEC_PATH, validate_event

KEY = "0123456789abcdef0123456789abcdef"
URL = "https://events.pagerduty.com/v2/enqueue"


def trigger(**spec: object) -> PlannedEvent:
    base: dict[str, object] = {"routing_key": KEY, "severity": "critical", "summary": "s", "source": "jira:OPS-1"}
    base.update(spec)
    return PlannedEvent(
        rule="r", action=EventAction.TRIGGER, dedup_key="ticketpager/jira/1/r/1", routing_key=KEY,
        generation=1, reason="matched", trigger=TriggerSpec(**base),  # type: ignore[arg-type]
    )


def test_spec_is_available_for_validation() -> None:
    assert EVENT_SCHEMA is not None
    assert validate_event({"event_action": "trigger", "routing_key": KEY}) != [], "the schema rejects a bad event"


def test_vendored_spec_matches_the_shared_one() -> None:
    if not SHARED_SPEC_PATH.exists():
        pytest.skip(f"{SHARED_SPEC_PATH} is not beside this checkout; the vendored copy is used")
    assert SPEC_PATH.read_bytes() == SHARED_SPEC_PATH.read_bytes()


def test_long_summary_is_truncated_visibly() -> None:
    body = build_event(trigger(summary="x" * 5000), ticket())
    summary = body["payload"]["summary"]
    assert len(summary) == SUMMARY_MAX and summary.endswith(TRUNCATION_MARK)
    assert validate_event(body) == []


def test_short_summary_is_untouched() -> None:
    body = build_event(trigger(summary="[OPS-1] down"), ticket())
    assert body["payload"]["summary"] == "[OPS-1] down"


def test_long_dedup_key_is_hashed_stably() -> None:
    rule = "r" * 300
    a = dedup_key_for("jira", "10001", rule, 1)
    assert len(a) <= DEDUP_KEY_MAX
    assert a == dedup_key_for("jira", "10001", rule, 1)
    assert a != dedup_key_for("jira", "10001", rule, 2)
    assert a != dedup_key_for("jira", "10002", rule, 1)
    assert dedup_key_for("jira", "10001", "short", 1) == "ticketpager/jira/10001/short/1"


def test_oversized_custom_details_are_trimmed_to_fit() -> None:
    details = {"log": "y" * (700 * 1024), "small": "keep me"}
    body = build_event(trigger(custom_details=details), ticket())
    assert len(json.dumps(body).encode()) <= EVENT_MAX_BYTES
    got = body["payload"]["custom_details"]
    assert got["small"] == "keep me"
    assert got["ticketpager_trimmed"] == ["log"]
    assert "trimmed by ticketpager" in got["log"]
    assert validate_event(body) == []


def test_invalid_severity_still_pages_as_critical() -> None:
    body = build_event(trigger(severity="urgent"), ticket())
    assert body["payload"]["severity"] == "critical"
    assert body["payload"]["custom_details"]["ticketpager_invalid_severity"] == "urgent"
    assert validate_event(body) == []


def test_links_and_images_are_cleaned() -> None:
    body = build_event(
        trigger(
            links=({"href": "https://x/browse/OPS-1", "text": "Open ticket"}, {"href": "", "text": "empty"}),
            images=({"src": "http://insecure/img.png"}, {"src": "https://ok/img.png", "alt": "graph"}),
        ),
        ticket(),
    )
    assert body["links"] == [{"href": "https://x/browse/OPS-1", "text": "Open ticket"}]
    assert body["images"] == [{"src": "https://ok/img.png", "alt": "graph"}]
    assert validate_event(body) == []


@pytest.mark.parametrize("action", [EventAction.ACKNOWLEDGE, EventAction.RESOLVE])
def test_follow_up_events_are_minimal_and_valid(action: EventAction) -> None:
    event = PlannedEvent(rule="r", action=action, dedup_key="k", routing_key=KEY, generation=1, reason="x")
    body = build_event(event, ticket())
    assert body == {"routing_key": KEY, "event_action": action.value, "dedup_key": "k"}
    assert validate_event(body) == []


def test_routing_key_never_in_repr() -> None:
    event = trigger()
    assert KEY not in repr(event) and KEY not in repr(event.trigger)
    assert mask(KEY) == "****cdef"


@responses.activate
def test_send_202() -> None:
    responses.post(URL, status=202, json={"status": "success", "message": "Event processed", "dedup_key": "k"})
    result = PagerDutySink(URL).send({"routing_key": KEY, "event_action": "resolve", "dedup_key": "k"})
    assert result.status == 202 and result.dedup_key == "k"



@responses.activate
@pytest.mark.parametrize("environment", [False, True], ids=["prepared-once", "session.post"])
def test_each_send_posts_its_own_bytes_with_the_sessions_headers_and_cookies(environment: bool) -> None:
    """The sink prepares its request once and copies it per event (a session that reads the environment per
    request is posted to as ``session.post`` does): each POST must carry exactly its own body and length, what the
    session adds (its headers), and the cookies the jar holds by then (a load balancer's, set by an answer)."""
    responses.post(URL, status=202, json={"status": "success"}, headers={"Set-Cookie": "AWSALB=abc; Path=/"})
    session = requests.Session()
    session.trust_env = environment
    session.headers["User-Agent"] = "ticketpager-test"
    sink = PagerDutySink(URL, session=session)
    bodies = [b'{"event_action":"resolve","dedup_key":"a-much-longer-key"}', b'{"event_action":"resolve"}']
    for body in bodies:
        sink.send(body)
    sent = [call.request for call in responses.calls]
    assert [r.body for r in sent] == bodies
    assert [r.headers["Content-Length"] for r in sent] == [str(len(b)) for b in bodies]
    assert all(r.method == "POST" and r.url == URL for r in sent)
    assert all(r.headers["Content-Type"] == "application/json" for r in sent)
    assert all(r.headers["User-Agent"] == "ticketpager-test" for r in sent)
    assert "Cookie" not in sent[0].headers and sent[1].headers["Cookie"] == "AWSALB=abc"
    sink.session = other = requests.Session()  # a new session: its own headers, not the first one's
    other.trust_env = environment
    other.headers["User-Agent"] = "other"
    sink.send(bodies[0])
    assert responses.calls[-1].request.headers["User-Agent"] == "other"
    assert "Cookie" not in responses.calls[-1].request.headers


@responses.activate
def test_send_400_is_permanent_with_pagerduty_text() -> None:
    responses.post(
        URL,
        status=400,
        json={"status": "invalid event", "message": "Event object is invalid",
              "errors": ["'summary' is too long (maiximum is 1024 characters)"]},
    )
    with pytest.raises(PermanentError) as info:
        PagerDutySink(URL).send({"event_action": "trigger"})
    assert "summary' is too long" in str(info.value) and info.value.status == 400


@responses.activate
def test_send_429_is_retryable_with_retry_after() -> None:
    responses.post(URL, status=429, headers={"Retry-After": "42"}, json={"status": "throttle"})
    with pytest.raises(RetryableError) as info:
        PagerDutySink(URL).send({})
    assert info.value.retry_after == 42


@responses.activate
def test_send_network_error_is_retryable() -> None:
    responses.post(URL, body=requests.ConnectionError("refused"))
    with pytest.raises(RetryableError):
        PagerDutySink(URL).send({})


def test_rate_limiter_spaces_sends_per_routing_key() -> None:
    clock = FakeClock()
    limiter = RateLimiter(120, clock)
    assert all(limiter.wait_for("a") == 0 for _ in range(120))
    wait = limiter.wait_for("a")
    assert 60 < wait <= 61, "the rolling minute plus a one-second margin"
    assert limiter.wait_for("b") == 0, "other routing keys are not held back"
    clock.advance(60)
    assert limiter.wait_for("a") > 0, "not before the margin has passed"
    clock.advance(1)
    assert limiter.wait_for("a") == 0


def test_rate_limiter_counts_the_other_replicas_sends() -> None:
    """Three per minute, two sent elsewhere 50 s and 10 s ago (one more 70 s ago, outside the window): one
    send goes now, the next waits until the 50-s-old one leaves the rolling minute and its 1 s margin, 11 s
    from now."""
    clock = FakeClock()
    now = clock.now()
    others = [now - timedelta(seconds=70), now - timedelta(seconds=50), now - timedelta(seconds=10)]
    limiter = RateLimiter(3, clock, elsewhere=lambda key, since: [t for t in others if t > since])
    assert limiter.wait_for("k") == 0
    assert limiter.wait_for("k") == pytest.approx(11.0)
    clock.advance(11)
    assert limiter.wait_for("k") == 0


def test_rate_limiter_reads_the_other_replicas_sends_seldom_while_far_from_the_limit() -> None:
    """120 per minute: while most of the minute is free, a burst of sends reads the shared outbox once per 5 sends
    (and at least once a second), not once per send; within a tenth of the limit every send reads it again, so a
    replica that sent meanwhile is counted at once and the limit holds exactly."""
    clock = FakeClock()
    now = clock.now()
    others: list[Any] = []
    reads: list[Any] = []

    def elsewhere(key: str, since: Any) -> list[Any]:
        reads.append(clock.now())
        return [t for t in others if t > since]

    limiter = RateLimiter(120, clock, elsewhere=elsewhere)
    assert all(limiter.wait_for("k") == 0 for _ in range(50))
    assert len(reads) == 10, "one read per 5 sends far from the limit"
    others.extend([now] * 55)  # another replica sent 55 meanwhile: 105 of 120 counted at the next read
    reads.clear()
    assert [limiter.wait_for("k") == 0 for _ in range(16)] == [True] * 15 + [False], "120 exactly, then wait"
    # 105 counted is still more than a tenth free: the read is reused twice more; from 108 (12 free) every send
    # reads again
    assert len(reads) == 1 + 13, "within a tenth of the limit, every send read the other replicas' sends again"

    quiet = RateLimiter(120, clock, elsewhere=elsewhere)
    reads.clear()
    assert all(quiet.wait_for("q") == 0 for _ in range(3)) and len(reads) == 1
    clock.advance(1)
    assert quiet.wait_for("q") == 0 and len(reads) == 2, "read again after a second"


def test_rate_limiter_keeps_paging_when_the_other_replicas_sends_cannot_be_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database is down: the limiter counts this replica's own sends instead of failing every send."""
    def unreadable(key: str, since: Any) -> list[Any]:
        raise OSError("database unavailable")

    limiter = RateLimiter(2, FakeClock(), elsewhere=unreadable)
    assert [limiter.wait_for("k") for _ in range(2)] == [0, 0]
    assert limiter.wait_for("k") > 0
    assert "other replicas' sends unknown" in caplog.text
