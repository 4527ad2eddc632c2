"""The PagerDuty REST client against the local REST fake: every request it sends is valid against PagerDuty's own
OpenAPI (the fake checks each one and each answer), the dedup_key → incident lookup goes through the alerts,
actions come back as signed v3 webhooks that parse to what was done (and to echoes of our bot user), errors are
classified per the status table (429 retryable with when), the token never shows, requests are paced."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import responses
from pydantic import SecretStr

from connectors.pagerduty_rest import (
    ACCEPT,
    EU_API_URL,
    RATE_LIMIT_FALLBACK_SECONDS,
    REQUESTS_PER_MINUTE,
    US_API_URL,
    Pacer,
    PagerDutyRestClient,
    Region,
)
from connectors.pagerduty_webhooks import (
    EventType,
    IgnoredEvent,
    IncidentEvent,
    Reference,
    parse_event,
    verify_signature,
)
from kernel.clock import FakeClock
from kernel.errors import PermanentError, RetryableError, UnknownOutcome
from kernel.retry import RetryPolicy, call
from tests.fakes.pagerduty_openapi import SHARED_SPEC_PATH, SPEC, SPEC_PATH
from tests.fakes.pagerduty_rest import BOT_EMAIL, TOKEN, FakePagerDutyRest

KEY = "ticketpager/jira/10001/page-p1/1"
BOT = "PBOT001"


@pytest.fixture
def pd() -> Iterator[FakePagerDutyRest]:
    with FakePagerDutyRest() as fake:
        yield fake
        assert fake.spec_errors == [], "every request and answer must be valid against PagerDuty's OpenAPI"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(pd: FakePagerDutyRest, clock: FakeClock, **kwargs: Any) -> PagerDutyRestClient:
    token = kwargs.pop("token", TOKEN)
    options: dict[str, Any] = {"api_url": pd.url, "from_email": BOT_EMAIL, "clock": clock, **kwargs}
    return PagerDutyRestClient(SecretStr(token), **options)


def paged(pd: FakePagerDutyRest, key: str = KEY, title: str = "OPS-123: checkout latency") -> str:
    """An incident opened by an Events API trigger (its alert_key is the dedup_key); webhooks are queued for a
    subscription of its service from now on (the trigger's own dropped)."""
    if not pd.state.subscriptions:
        pd.subscribe("http://127.0.0.1:9/not-delivered", "test-secret-1")
    incident_id = pd.apply_event({"event_action": "trigger", "dedup_key": key, "payload": {"summary": title}})
    pd.outbox.clear()
    return incident_id


def only_event(pd: FakePagerDutyRest) -> IncidentEvent:
    """The one webhook the last action queued, parsed as ticketpager will parse it."""
    assert len(pd.outbox) == 1, [d.body[:80] for d in pd.outbox]
    event = parse_event(pd.outbox.pop().body)
    assert isinstance(event, IncidentEvent)
    return event


# -- the spec ----------------------------------------------------------------------------------------------------


def test_vendored_spec_matches_the_shared_one() -> None:
    if not SHARED_SPEC_PATH.exists():
        pytest.skip(f"{SHARED_SPEC_PATH} is not beside this checkout; the vendored copy is used")
    assert SPEC_PATH.read_bytes() == SHARED_SPEC_PATH.read_bytes()


def test_the_spec_check_refuses_what_pagerduty_refuses() -> None:
    headers = {"Accept": "application/vnd.pagerduty+json;version=2", "Content-Type": "application/json"}
    ack = {"incident": {"type": "incident_reference", "status": "acknowledged"}}
    assert SPEC.check_request("PUT", "/incidents/Q1", {}, {**headers, "From": BOT_EMAIL}, ack) == []
    assert any("From" in e for e in SPEC.check_request("PUT", "/incidents/Q1", {}, headers, ack))
    bad_status = {"incident": {"type": "incident_reference", "status": "closed"}}
    assert SPEC.check_request("PUT", "/incidents/Q1", {}, {**headers, "From": BOT_EMAIL}, bad_status) != []
    assert SPEC.check_request("GET", "/incidents", {"statuses": ["triggered"]}, headers, None) != [], "needs []"


def test_the_wrapped_responder_targets_we_send_are_the_specs_own_example() -> None:
    example = SPEC.request_example("createIncidentResponderRequest")
    target = example["responder_request_targets"][0]
    assert set(target) == {"responder_request_target"}
    headers = {"Accept": "x", "Content-Type": "application/json"}
    assert SPEC.check_request("POST", "/incidents/Q1/responder_requests", {}, headers, example) == []


# -- incidents ---------------------------------------------------------------------------------------------------


def test_the_incident_of_a_dedup_key_is_found_through_its_alert(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    paged(pd, "some/other/key", "other")
    incident_id = paged(pd)
    found = client_for(pd, clock).find_incident(KEY, service_ids=["PSVC001"])
    assert found is not None and found.id == incident_id
    assert (found.status, found.title, found.service_id) == ("triggered", "OPS-123: checkout latency", "PSVC001")
    assert found.html_url.endswith(f"/incidents/{incident_id}") and found.number is not None
    listing = next(r for r in pd.requests if r.path == "/incidents")
    assert listing.query["incident_key"] == [KEY]
    assert listing.query["date_range"] == ["all"], "without it only the last month is searched"
    assert listing.query["statuses[]"] == ["triggered", "acknowledged"]
    assert any(r.path == f"/incidents/{incident_id}/alerts" and r.query["alert_key"] == [KEY] for r in pd.requests)


def test_an_unknown_or_resolved_key_finds_nothing(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    client = client_for(pd, clock)
    assert client.find_incident("never/paged") is None
    incident_id = paged(pd)
    pd.resolve(incident_id)
    assert client.find_incident(KEY) is None
    found = client.find_incident(KEY, open_only=False)
    assert found is not None and found.status == "resolved"


def test_an_incident_older_than_a_month_is_still_found(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    pd.now += timedelta(days=40)  # PagerDuty searches only the last month unless told date_range=all
    found = client_for(pd, clock).find_incident(KEY)
    assert found is not None and found.id == incident_id
    bare = requests.get(
        f"{pd.url}/incidents",
        params={"incident_key": KEY},
        headers={"Authorization": f"Token token={TOKEN}", "Accept": ACCEPT, "Content-Type": "application/json"},
        timeout=5,
    )
    assert bare.json()["incidents"] == [], "the fake keeps PagerDuty's default window"


def test_an_empty_dedup_key_is_never_sent(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    paged(pd)
    with pytest.raises(PermanentError, match="empty dedup_key"):
        client_for(pd, clock).find_incident(" ")
    assert pd.requests == [], "PagerDuty would answer every open incident"


def test_acknowledge_comes_back_as_a_webhook_from_our_bot_user(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    incident = client_for(pd, clock).acknowledge(incident_id)
    assert incident.status == "acknowledged"
    put = next(r for r in pd.requests if r.method == "PUT")
    assert put.headers["From"] == BOT_EMAIL and put.headers["Authorization"] == f"Token token={TOKEN}"
    event = only_event(pd)
    assert event.event_type is EventType.ACKNOWLEDGED and event.incident_id == incident_id
    assert event.agent is not None and event.agent.id == BOT
    assert event.is_echo(own_user_ids={BOT}), "our own REST write must be recognised when it comes back"


def test_a_change_already_made_is_success(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    client = client_for(pd, clock)
    client.acknowledge(incident_id)
    pd.fail_next(1, 400, body={"error": {"message": "Incident Already Acknowledged", "code": 1002}})
    assert client.acknowledge(incident_id).status == "acknowledged"
    pd.fail_next(1, 400, body={"error": {"message": "Incident Already Resolved", "code": 1001}})
    with pytest.raises(PermanentError, match="1001"):
        client.acknowledge(incident_id)  # 1001 answers a resolve, not an acknowledge


def test_resolve_with_a_resolution(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    incident = client_for(pd, clock).resolve(incident_id, "ticket OPS-123 done")
    assert incident.status == "resolved" and incident.assignees == ()
    assert pd.state.incidents[incident_id]["resolution"] == "ticket OPS-123 done"
    assert only_event(pd).event_type is EventType.RESOLVED


def test_reassign_to_an_escalation_policy_is_a_delegation(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    incident = client_for(pd, clock).reassign_to_policy(incident_id, "PEP0002")
    assert incident.escalation_policy_id == "PEP0002"
    assert [a.id for a in incident.assignees] == ["PUSER02"], "the new policy's on-call is paged"
    event = only_event(pd)
    assert event.event_type is EventType.DELEGATED
    assert event.incident is not None and event.incident.escalation_policy_id == "PEP0002"


def test_reassign_to_an_unknown_policy_is_permanent(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    with pytest.raises(PermanentError, match="1014") as caught:
        client_for(pd, clock).reassign_to_policy(incident_id, "PNOPE99")
    assert caught.value.status == 400


def test_notes_are_written_as_the_bot_and_read_back(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    client = client_for(pd, clock)
    note = client.add_note(incident_id, "[OPS-123] customer informed")
    assert note.id and note.content == "[OPS-123] customer informed"
    assert [(n.id, n.content) for n in client.list_notes(incident_id)] == [(note.id, note.content)]
    event = only_event(pd)
    assert event.event_type is EventType.ANNOTATED and event.note is not None
    assert event.note.content == "[OPS-123] customer informed" and event.is_echo(own_user_ids={BOT})


def test_responders_are_requested_with_wrapped_targets(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    policy = Reference("PEP0002", "escalation_policy_reference", "DB on-call")
    request_id = client_for(pd, clock).add_responders(incident_id, BOT, "OPS-123 needs DBA help", [policy])
    assert request_id
    sent = next(r for r in pd.requests if r.path.endswith("/responder_requests"))
    assert sent.body["responder_request_targets"] == [
        {"responder_request_target": {"id": "PEP0002", "type": "escalation_policy_reference"}}
    ]
    event = only_event(pd)
    assert event.event_type is EventType.RESPONDER_ADDED and event.responder is not None
    assert event.responder.escalation_policy is not None and event.responder.escalation_policy.id == "PEP0002"


def test_without_from_an_account_key_cannot_act(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    with pytest.raises(PermanentError, match="From") as caught:
        client_for(pd, clock, from_email=None).acknowledge(incident_id)
    assert caught.value.status == 400
    pd.spec_errors.clear()  # the fake noted the refused request: that was the point


def test_a_user_token_acts_as_its_user_without_from() -> None:
    with FakePagerDutyRest(token_users={"user-token-abcdef": "PUSER02"}) as pd:
        incident_id = paged(pd)
        client = PagerDutyRestClient(SecretStr("user-token-abcdef"), api_url=pd.url, clock=FakeClock())
        assert client.current_user().id == "PUSER02"
        client.acknowledge(incident_id)
        assert "From" not in next(r for r in pd.requests if r.method == "PUT").headers
        event = only_event(pd)
        assert event.agent is not None and event.agent.id == "PUSER02"
        assert pd.spec_errors == []


def test_a_persons_reassignment_and_a_timeout_arrive_as_their_events(pd: FakePagerDutyRest) -> None:
    incident_id = paged(pd)
    pd.reassign(incident_id, ["PUSER02"], by="PUSER01")
    reassigned = only_event(pd)
    assert reassigned.event_type is EventType.REASSIGNED and reassigned.incident is not None
    assert [a.id for a in reassigned.incident.assignees] == ["PUSER02"] and not reassigned.is_echo(own_user_ids={BOT})
    pd.acknowledge(incident_id, by="PUSER02")
    pd.outbox.clear()
    pd.unacknowledge(incident_id)
    timed_out = only_event(pd)
    assert timed_out.event_type is EventType.UNACKNOWLEDGED and timed_out.agent is None


def test_a_write_without_an_answer_in_time_is_an_unknown_outcome(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    pd.latency_seconds = 0.5
    client = client_for(pd, clock, timeout=0.1)
    with pytest.raises(UnknownOutcome):
        client.acknowledge(incident_id)  # PagerDuty may have acted: the caller re-reads before acting again
    with pytest.raises(RetryableError) as caught:
        client.get_incident(incident_id)
    assert not isinstance(caught.value, UnknownOutcome), "a read has no outcome to be unsure of"


# -- lookups and pagination --------------------------------------------------------------------------------------


def test_escalation_policies_are_read_across_pages(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    for i in range(3, 253):
        pd.add_policy(f"PEP{i:04d}", f"Team {i}", "PUSER01")
    policies = client_for(pd, clock).list_escalation_policies()
    assert len(policies) == 252 and len({p.id for p in policies}) == 252
    assert {p.summary for p in policies} >= {"Checkout EP", "DB on-call", "Team 252"}
    offsets = [r.query["offset"] for r in pd.requests if r.path == "/escalation_policies"]
    assert offsets == [["0"], ["100"], ["200"]]


def test_the_service_names_its_policy_and_our_events_integration(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    service = client_for(pd, clock).get_service("PSVC001")
    assert (service.name, service.escalation_policy_id, service.integration_ids) == (
        "Checkout",
        "PEP0001",
        ("PINTEG1",),
    )


def test_users_me_needs_a_user_token(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    with pytest.raises(PermanentError) as caught:
        client_for(pd, clock).current_user()
    assert caught.value.status == 400


# -- webhook subscriptions and the signed deliveries -------------------------------------------------------------


class Receiver:
    """A real HTTP endpoint that records what PagerDuty (the fake) posts to it."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.received.append((dict(self.headers.items()), body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/pagerduty"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_a_created_subscription_shows_its_secret_once_and_its_ping_arrives_signed(
    pd: FakePagerDutyRest, clock: FakeClock, receiver: Receiver
) -> None:
    client = client_for(pd, clock)
    created = client.create_webhook_subscription(receiver.url, [e.value for e in EventType], service_id="PSVC001")
    assert created.secret is not None and created.secret.get_secret_value()
    assert created.secret.get_secret_value() not in repr(created)
    listed = client.list_webhook_subscriptions("service", "PSVC001")
    assert [(s.id, s.url, s.secret) for s in listed] == [(created.id, receiver.url, None)]
    assert client.list_webhook_subscriptions("service", "POTHER1") == []
    client.ping(created.id)
    assert pd.deliver() == [202]
    headers, body = receiver.received[0]
    verify_signature(headers, body, [created.secret])
    assert headers["X-Webhook-Subscription"] == created.id and headers["X-Webhook-Id"]
    assert headers["User-Agent"] == "PagerDuty-Webhook/V3.0"
    ping = parse_event(body)
    assert isinstance(ping, IgnoredEvent) and ping.event_type == "pagey.ping"


def test_registering_the_same_url_twice_creates_one_subscription(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    client = client_for(pd, clock)
    first, created = client.ensure_webhook_subscription(
        "https://tp.example/webhooks/pagerduty", ["incident.resolved"], service_id="PSVC001"
    )
    assert created and first.secret is not None
    again, created_again = client.ensure_webhook_subscription(
        "https://tp.example/webhooks/pagerduty", ["incident.resolved"], service_id="PSVC001"
    )
    assert not created_again and again.id == first.id and again.secret is None
    assert len(pd.state.subscriptions) == 1
    other, created_other = client.ensure_webhook_subscription(
        "https://tp.example/webhooks/pagerduty", ["incident.resolved"]
    )
    assert created_other and other.filter_type == "account_reference" and len(pd.state.subscriptions) == 2


def test_a_persons_actions_in_pagerduty_arrive_as_signed_webhooks_during_a_secret_rotation(
    pd: FakePagerDutyRest, receiver: Receiver
) -> None:
    sub = pd.subscribe(receiver.url, "old-secret-123")
    incident_id = pd.apply_event({"event_action": "trigger", "dedup_key": KEY, "payload": {"summary": "OPS-1"}})
    pd.rotate_secret(sub, "new-secret-456")
    pd.acknowledge(incident_id, by="PUSER01")
    pd.add_note(incident_id, "looking", by="PUSER01")
    pd.apply_event({"event_action": "resolve", "dedup_key": KEY})
    assert pd.deliver() == [202, 202, 202, 202]
    events = []
    for n, (headers, body) in enumerate(receiver.received):
        verify_signature(headers, body, [SecretStr("old-secret-123")])  # a receiver not yet rotated
        if n > 0:  # queued after the rotation began: signed with both
            verify_signature(headers, body, [SecretStr("new-secret-456")])  # a receiver already rotated
        event = parse_event(body)
        assert isinstance(event, IncidentEvent)
        events.append((event.event_type, event.is_echo(own_user_ids={BOT})))
    assert events == [
        (EventType.TRIGGERED, True),  # our Events API trigger: an integration agent
        (EventType.ACKNOWLEDGED, False),  # a person
        (EventType.ANNOTATED, False),
        (EventType.RESOLVED, True),  # our Events API resolve
    ]
    assert receiver.received[1][0]["X-PagerDuty-Signature"].count("v1=") == 2
    ids = [h["X-Webhook-Id"] for h, _ in receiver.received]
    assert len(set(ids)) == 4
    assert pd.redeliver(pd.delivered[1]) == 202
    assert receiver.received[-1][0]["X-Webhook-Id"] == ids[1], "a retry keeps its X-Webhook-Id"


# -- errors ------------------------------------------------------------------------------------------------------


def test_a_wrong_token_is_permanent_and_never_shown(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    client = client_for(pd, clock, token="wrong-token-99999")
    with pytest.raises(PermanentError) as caught:
        client.get_incident("Q1")
    assert caught.value.status == 401
    assert "wrong-token-99999" not in f"{caught.value} {caught.value!r} {client!r}"


def test_a_token_echoed_in_an_error_body_is_redacted(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    pd.fail_next(1, 403, body={"error": {"message": f"key {TOKEN} lacks the role", "code": 2010}})
    with pytest.raises(PermanentError) as caught:
        client_for(pd, clock).get_incident("Q1")
    assert caught.value.status == 403 and TOKEN not in str(caught.value) and "2010" in str(caught.value)


def test_an_unknown_incident_is_404_permanent(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    with pytest.raises(PermanentError) as caught:
        client_for(pd, clock).get_incident("QNOPE")
    assert caught.value.status == 404


def test_a_hostile_id_stays_one_path_segment(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    with pytest.raises(PermanentError) as caught:
        client_for(pd, clock).get_incident("../users/me")
    assert caught.value.status == 404
    assert pd.requests[-1].path == "/incidents/..%2Fusers%2Fme"


def test_429_is_retryable_with_retry_after(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    pd.rate_limit_next(retry_after=30)
    with pytest.raises(RetryableError) as caught:
        client_for(pd, clock).get_incident("Q1")
    assert caught.value.status == 429 and caught.value.retry_after == 30


def test_a_bare_429_waits_a_whole_rate_window(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    pd.rate_limit_next(retry_after=None)
    with pytest.raises(RetryableError) as caught:
        client_for(pd, clock).get_incident("Q1")
    assert caught.value.retry_after == RATE_LIMIT_FALLBACK_SECONDS


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retryable(pd: FakePagerDutyRest, clock: FakeClock, status: int) -> None:
    pd.fail_next(1, status)
    with pytest.raises(RetryableError):
        client_for(pd, clock).get_incident("Q1")


def test_under_the_retry_runner_a_429_waits_as_told_then_succeeds(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    incident_id = paged(pd)
    client = client_for(pd, clock)
    pd.rate_limit_next(retry_after=7)
    incident = call(lambda: client.acknowledge(incident_id), RetryPolicy(), clock)
    assert incident.status == "acknowledged" and clock.sleeps == [7.0]


# -- region and pacing -------------------------------------------------------------------------------------------


def test_region_base_urls() -> None:
    assert PagerDutyRestClient(SecretStr(TOKEN)).base_url == US_API_URL == "https://api.pagerduty.com"
    assert PagerDutyRestClient(SecretStr(TOKEN), region=Region.EU).base_url == EU_API_URL
    assert PagerDutyRestClient(SecretStr(TOKEN), region=Region.EU, api_url="http://proxy:8080/").base_url == (
        "http://proxy:8080"
    )


@responses.activate
def test_the_eu_region_talks_to_the_eu_api() -> None:
    responses.get(f"{EU_API_URL}/services/PSVC001", json={"service": {"id": "PSVC001", "name": "Checkout"}})
    service = PagerDutyRestClient(SecretStr(TOKEN), region=Region.EU, clock=FakeClock()).get_service("PSVC001")
    assert service.name == "Checkout"
    assert str(responses.calls[0].request.url).startswith("https://api.eu.pagerduty.com/services/PSVC001?")


def test_pacing_allows_960_requests_a_minute_then_waits_for_the_window() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    assert REQUESTS_PER_MINUTE == 960
    for _ in range(960):
        assert pacer.wait() == 0.0
        clock.advance(0.01)
    assert pacer.wait() == pytest.approx(60.0 - 9.6)
    assert clock.sleeps == [pytest.approx(50.4)]
    assert pacer.wait() == pytest.approx(0.01), "then one request per slot freed"


def test_the_client_paces_its_requests_on_the_injected_clock(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    client = client_for(pd, clock, requests_per_minute=3)
    for _ in range(3):
        client.get_service("PSVC001")
    assert clock.sleeps == []
    client.get_service("PSVC001")
    assert clock.sleeps == [60.0] and len(pd.requests) == 4


def test_a_missing_token_is_a_configuration_error() -> None:
    with pytest.raises(PermanentError, match="API_TOKEN"):
        PagerDutyRestClient(SecretStr(""))


def test_the_from_users_id_is_found_by_its_exact_email(pd: FakePagerDutyRest, clock: FakeClock) -> None:
    """``GET /users?query=`` also matches parts of other emails and names: only the exact email counts."""
    pd.add_user("PROBOT1", "Robot", "robot-" + BOT_EMAIL)  # contains the bot's email
    pd.add_user("PNAMED1", BOT_EMAIL, "someone@acme.example")  # named like it
    api = client_for(pd, clock)
    assert api.user_id_by_email(BOT_EMAIL.upper()) == "PBOT001"
    with pytest.raises(LookupError, match="no PagerDuty user has the email nobody@acme.example"):
        api.user_id_by_email("nobody@acme.example")
    [first, _] = [r for r in pd.requests if r.path == "/users"]
    assert first.query["query"] == [BOT_EMAIL.upper()]
    assert pd.spec_errors == []
    # the operation is PagerDuty's own (listUsers, from api-schema), and the checker refuses what it does not declare
    operation = SPEC.find("GET", "/users")
    assert operation is not None and operation.spec["operationId"] == "listUsers"
    headers = {"Accept": "application/vnd.pagerduty+json;version=2", "Content-Type": "application/json"}
    assert SPEC.check_request("GET", "/users", {"email": [BOT_EMAIL]}, headers, None) != []
