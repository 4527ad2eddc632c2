"""PagerDuty v3 webhooks in: the signature is checked as PagerDuty documents it (rotation included), every event
type issue 16 acts on parses from documented-format payloads, other types are ignored (2xx, never a 4xx that
would count towards disabling the subscription), and our own actions are told apart from a person's."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connectors.pagerduty_webhooks import (
    MAX_BODY_BYTES,
    EventType,
    IgnoredEvent,
    IncidentEvent,
    parse_event,
    verify_signature,
    webhook_id,
)
from kernel.errors import WebhookRejected

FIXTURES = Path(__file__).parent / "fixtures" / "pagerduty" / "webhooks"
OLD, NEW = "old-webhook-secret-1", "new-webhook-secret-2"


def body_of(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sign(secret: str, body: bytes) -> str:
    """PagerDuty's documented scheme, computed here independently: v1=hex(HMAC-SHA256(secret, raw body))."""
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def parsed(name: str) -> IncidentEvent:
    event = parse_event(body_of(name))
    assert isinstance(event, IncidentEvent)
    return event


# -- signatures --------------------------------------------------------------------------------------------------


def test_a_body_signed_with_the_configured_secret_is_accepted() -> None:
    body = body_of("acknowledged_by_user.json")
    verify_signature({"X-PagerDuty-Signature": sign(NEW, body)}, body, [SecretStr(NEW)])


def test_during_rotation_pagerduty_sends_two_signatures_and_either_secret_accepts() -> None:
    body = body_of("acknowledged_by_user.json")
    header = f"{sign(OLD, body)},{sign(NEW, body)}"
    verify_signature({"x-pagerduty-signature": header}, body, [SecretStr(OLD)])  # not yet rotated here
    verify_signature({"x-pagerduty-signature": header}, body, [SecretStr(NEW)])  # already rotated here
    verify_signature({"x-pagerduty-signature": sign(OLD, body)}, body, [SecretStr(NEW), SecretStr(OLD)])


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing X-PagerDuty-Signature"),
        ("", "missing X-PagerDuty-Signature"),
        ("sha256=abcdef", "must be v1="),
        ("v1=", "must be v1="),
        ("v1=" + "0" * 64, "invalid X-PagerDuty-Signature"),
    ],
)
def test_unsigned_or_wrongly_signed_bodies_are_refused_401(header: str | None, reason: str) -> None:
    body = body_of("acknowledged_by_user.json")
    headers = {} if header is None else {"X-PagerDuty-Signature": header}
    with pytest.raises(WebhookRejected) as caught:
        verify_signature(headers, body, [SecretStr(NEW)])
    assert caught.value.status == 401 and reason in caught.value.reason


def test_a_tampered_body_is_refused_even_with_a_signature_that_was_valid_for_the_original() -> None:
    body = body_of("resolved_by_user.json")
    header = sign(NEW, body)
    tampered = body.replace(b'"resolved"', b'"triggered"', 1)
    assert tampered != body
    with pytest.raises(WebhookRejected, match="invalid X-PagerDuty-Signature"):
        verify_signature({"X-PagerDuty-Signature": header}, tampered, [SecretStr(NEW)])


def test_a_signature_over_reserialised_json_does_not_match_the_raw_bytes() -> None:
    body = body_of("annotated.json")
    compact = json.dumps(json.loads(body), separators=(",", ":")).encode()
    with pytest.raises(WebhookRejected):
        verify_signature({"X-PagerDuty-Signature": sign(NEW, compact)}, body, [SecretStr(NEW)])


def test_without_a_configured_secret_nothing_is_accepted() -> None:
    body = body_of("ping.json")
    with pytest.raises(WebhookRejected, match="secret not configured") as caught:
        verify_signature({"X-PagerDuty-Signature": sign("", body)}, body, [SecretStr("")])
    assert caught.value.status == 401


def test_the_refusal_never_names_the_secret_or_the_expected_signature() -> None:
    body = body_of("ping.json")
    with pytest.raises(WebhookRejected) as caught:
        verify_signature({"X-PagerDuty-Signature": "v1=00"}, body, [SecretStr(NEW)])
    text = f"{caught.value} {caught.value!r}"
    assert NEW not in text and sign(NEW, body)[3:] not in text


def test_webhook_id_is_the_dedupe_key_and_required() -> None:
    assert webhook_id({"X-Webhook-Id": "f3e1b2c4-1111"}) == "f3e1b2c4-1111"
    with pytest.raises(WebhookRejected, match="missing X-Webhook-Id") as caught:
        webhook_id({})
    assert caught.value.status == 400


# -- parsing -----------------------------------------------------------------------------------------------------

INCIDENT_TYPED = [
    ("triggered_events_api.json", EventType.TRIGGERED, "triggered"),
    ("acknowledged_by_user.json", EventType.ACKNOWLEDGED, "acknowledged"),
    ("unacknowledged_timeout.json", EventType.UNACKNOWLEDGED, "triggered"),
    ("resolved_events_api.json", EventType.RESOLVED, "resolved"),
    ("resolved_by_user.json", EventType.RESOLVED, "resolved"),
    ("reopened_by_user.json", EventType.REOPENED, "triggered"),
    ("reassigned_to_user.json", EventType.REASSIGNED, "triggered"),
    ("delegated_to_policy.json", EventType.DELEGATED, "triggered"),
    ("escalated.json", EventType.ESCALATED, "triggered"),
    ("priority_updated.json", EventType.PRIORITY_UPDATED, "acknowledged"),
]


@pytest.mark.parametrize(("name", "event_type", "status"), INCIDENT_TYPED)
def test_every_incident_event_type_parses_with_the_incident_it_carries(
    name: str, event_type: EventType, status: str
) -> None:
    raw = json.loads(body_of(name))["event"]
    event = parsed(name)
    assert event.event_type is event_type
    assert event.event_id == raw["id"]
    assert event.occurred_at == datetime.fromisoformat(raw["occurred_at"])
    incident = event.incident
    assert incident is not None
    assert (incident.id, incident.number, incident.status) == ("Q1ABCDEF", 812, status)
    assert incident.html_url == "https://acme.pagerduty.com/incidents/Q1ABCDEF"
    assert incident.title == "OPS-123: checkout latency" == event.incident_summary
    assert incident.service_id == "PSVC001"
    assert incident.escalation_policy_id == raw["data"]["escalation_policy"]["id"]
    assert incident.priority == raw["data"]["priority"]["summary"]
    assert [a.id for a in incident.assignees] == [a["id"] for a in raw["data"]["assignees"]]
    assert incident.incident_key is None, "Events-API incidents carry no incident_key (the key is on the alert)"


def test_delegation_carries_the_new_escalation_policy_and_reassignment_the_new_user() -> None:
    delegated, reassigned = parsed("delegated_to_policy.json"), parsed("reassigned_to_user.json")
    assert delegated.incident is not None and delegated.incident.escalation_policy_id == "PEP0002"
    assert reassigned.incident is not None
    assert [(a.id, a.summary) for a in reassigned.incident.assignees] == [("PUSER02", "Sam Roe")]


def test_priority_update_carries_the_new_priority() -> None:
    event = parsed("priority_updated.json")
    assert event.incident is not None and event.incident.priority == "P1"


def test_a_note_carries_its_content_and_the_incident_reference() -> None:
    event = parsed("annotated.json")
    assert event.event_type is EventType.ANNOTATED
    assert event.incident is None and event.incident_id == "Q1ABCDEF"
    assert event.note is not None
    assert (event.note.id, event.note.content, event.note.trimmed) == ("PNOTE01", "[OPS-123] rolled back v2.14", False)
    assert event.agent is not None and event.agent.summary == "Jane Doe"


def test_a_trimmed_note_says_so() -> None:
    raw = json.loads(body_of("annotated.json"))
    raw["event"]["data"]["trimmed"] = True
    event = parse_event(json.dumps(raw).encode())
    assert isinstance(event, IncidentEvent) and event.note is not None and event.note.trimmed


def test_a_responder_request_names_who_was_asked_and_why() -> None:
    event = parsed("responder_added.json")
    assert event.event_type is EventType.RESPONDER_ADDED and event.incident_id == "Q1ABCDEF"
    responder = event.responder
    assert responder is not None
    assert (responder.state, responder.message) == ("pending", "Please join the bridge")
    assert responder.user is not None and responder.user.id == "PUSER02"
    assert responder.escalation_policy is not None and responder.escalation_policy.summary == "DB on-call"


@pytest.mark.parametrize("name", ["ping.json", "service_updated.json"])
def test_other_event_types_are_ignored_not_refused(name: str) -> None:
    event = parse_event(body_of(name))
    assert isinstance(event, IgnoredEvent)
    assert event.event_type == json.loads(body_of(name))["event"]["event_type"]


def test_parsed_events_are_frozen() -> None:
    event = parsed("acknowledged_by_user.json")
    with pytest.raises(AttributeError):
        event.event_type = EventType.RESOLVED  # type: ignore[misc]


# -- echoes ------------------------------------------------------------------------------------------------------


def test_our_own_events_api_resolve_is_an_echo_and_a_persons_resolve_is_not() -> None:
    ours, theirs = parsed("resolved_events_api.json"), parsed("resolved_by_user.json")
    assert ours.agent is not None and ours.agent.is_integration
    assert ours.is_echo()
    assert not theirs.is_echo()


def test_with_known_integration_ids_only_ours_count_as_echoes() -> None:
    ours = parsed("resolved_events_api.json")
    assert ours.is_echo(own_integration_ids={"PINTEG1"})
    assert not ours.is_echo(own_integration_ids={"POTHER9"}), "another integration's action is not our echo"


def test_our_rest_writes_come_back_as_the_from_user_and_are_echoes() -> None:
    event = parsed("annotated.json")
    assert event.is_echo(own_user_ids={"PUSER01"})
    assert not event.is_echo(own_user_ids={"PBOT999"})


def test_automation_has_no_agent_and_is_not_an_echo() -> None:
    event = parsed("unacknowledged_timeout.json")
    assert event.agent is None and not event.is_echo(own_user_ids={"PUSER01"})


# -- malformed ---------------------------------------------------------------------------------------------------


def _mutated(name: str, change: Any) -> bytes:
    raw = json.loads(body_of(name))
    change(raw["event"])
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b'"\\ud800"', "surrogate"),
        (b"[]", "body must be a JSON object"),
        (b"{}", "event must be a JSON object"),
        (_mutated("acknowledged_by_user.json", lambda e: e.pop("id")), "event.id"),
        (_mutated("acknowledged_by_user.json", lambda e: e.update(event_type=7)), "event.event_type"),
        (_mutated("acknowledged_by_user.json", lambda e: e.update(occurred_at="yesterday")), "occurred_at"),
        (_mutated("acknowledged_by_user.json", lambda e: e.update(occurred_at="2026-09-27T10:00:00")), "time zone"),
        (_mutated("acknowledged_by_user.json", lambda e: e.pop("data")), "event.data must be"),
        (_mutated("acknowledged_by_user.json", lambda e: e["data"].pop("id")), "event.data.id"),
        (_mutated("acknowledged_by_user.json", lambda e: e["data"].update(type="incident_note")), "event.data.type"),
        (_mutated("acknowledged_by_user.json", lambda e: e["data"].update(number="812")), "event.data.number"),
        (_mutated("acknowledged_by_user.json", lambda e: e["data"].update(assignees={})), "assignees"),
        (_mutated("acknowledged_by_user.json", lambda e: e.update(agent={"type": "user_reference"})), "agent.id"),
        (_mutated("annotated.json", lambda e: e["data"].pop("incident")), "event.data.incident"),
    ],
)
def test_malformed_bodies_are_refused_400_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(WebhookRejected) as caught:
        parse_event(body)
    assert caught.value.status == 400 and reason in caught.value.reason


def test_a_body_bigger_than_pagerduty_ever_sends_is_refused_413_before_parsing() -> None:
    body = b'{"event": {"id": "x", "pad": "' + b"a" * MAX_BODY_BYTES + b'"}}'
    with pytest.raises(WebhookRejected) as caught:
        parse_event(body)
    assert caught.value.status == 413


def test_occurred_at_keeps_its_zone() -> None:
    event = parsed("resolved_events_api.json")
    assert event.occurred_at == datetime(2026, 9, 27, 10, 15, 2, 120000, tzinfo=UTC)


# -- hostile input -----------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.glob("*.json"))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(FIXTURE_NAMES), pick=st.integers(min_value=0), value=JSON_VALUES)
def test_any_value_anywhere_in_a_documented_payload_parses_or_is_refused_400(name: str, pick: int, value: Any) -> None:
    raw = json.loads(body_of(name))
    paths = _paths(raw)[1:]
    path = paths[pick % len(paths)]
    node = raw
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    try:
        parse_event(json.dumps(raw).encode())
    except WebhookRejected as exc:
        assert exc.status == 400 and exc.reason
