"""Zendesk webhooks: signature checks (good, bad, stale, missing, rotation, test secret) and both modes."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.base import WebhookResult
from connectors.zendesk import TEST_SIGNING_SECRET, ZendeskConnector
from kernel.clock import FakeClock
from kernel.errors import WebhookRejected
from kernel.model import Origin, StatusCategory
from tests.fakes.zendesk_server import fixture, sign
from ticketpager.settings import ZendeskSettings

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SECRET = "whsec-Zendesk-signing-secret-1"
BASE = "https://acme.zendesk.com/api/v2"


def connector(**overrides: Any) -> ZendeskConnector:
    values: dict[str, Any] = {"enabled": True, "subdomain": "acme", "webhook_secrets": [SECRET]}
    values.update(overrides)
    return ZendeskConnector(ZendeskSettings(**values), clock=FakeClock(NOW), session=requests.Session())


def signed(body: bytes, secret: str = SECRET, when: datetime = NOW) -> dict[str, str]:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "x-zendesk-webhook-signature": sign(secret, stamp, body),
        "x-zendesk-webhook-signature-timestamp": stamp,
        "x-zendesk-webhook-id": "01HW4E0QJ3",
    }


def body_of(name: str) -> bytes:
    return json.dumps(fixture(name)).encode()


def receive(conn: ZendeskConnector, headers: dict[str, str], body: bytes) -> WebhookResult:
    conn.verify_webhook(headers, body)
    return conn.parse_webhook(headers, body)


# -- signatures ------------------------------------------------------------------------------------
def test_good_signature_event_subscription_becomes_a_change() -> None:
    body = body_of("event_status_changed.json")
    result = receive(connector(), signed(body), body)
    [change] = result.changes
    ticket = change.ticket
    assert change.origin is Origin.WEBHOOK
    assert change.delivery_id == "zendesk:event:cbe4028c-7239-495d-b020-f22348516046"
    assert change.event_type == "ticket.status_changed"
    assert (ticket.id, ticket.key, ticket.status) == ("35436", "#35436", "solved")
    assert ticket.status_category is StatusCategory.DONE
    assert ticket.priority == "urgent"  # arrives upper-case in events
    assert ticket.attributes["ticket_type"] == "incident"
    assert ticket.attributes["organization_id"] == 509974
    assert ticket.url == "https://acme.zendesk.com/agent/tickets/35436"
    assert ticket.updated == datetime(2026, 11, 27, 8, 58, 30, tzinfo=UTC)


def test_stale_timestamp_is_rejected_as_replay() -> None:
    body = body_of("event_status_changed.json")
    headers = signed(body, when=NOW - timedelta(minutes=6))
    with pytest.raises(WebhookRejected) as err:
        connector().verify_webhook(headers, body)
    assert err.value.status == 401 and "tolerance" in err.value.reason
    # inside the window it passes
    connector().verify_webhook(signed(body, when=NOW - timedelta(minutes=4)), body)


@pytest.mark.parametrize(
    ("missing", "reason"),
    [
        ("x-zendesk-webhook-signature", "missing X-Zendesk-Webhook-Signature header"),
        ("x-zendesk-webhook-signature-timestamp", "missing X-Zendesk-Webhook-Signature-Timestamp header"),
    ],
)
def test_missing_header_is_rejected(missing: str, reason: str) -> None:
    body = body_of("event_status_changed.json")
    headers = signed(body)
    del headers[missing]
    with pytest.raises(WebhookRejected) as err:
        connector().verify_webhook(headers, body)
    assert (err.value.status, err.value.reason) == (401, reason)


def test_secret_is_used_verbatim_not_base64_decoded() -> None:
    secret = "c2VjcmV0LXRoYXQtbG9va3MtYmFzZTY0"  # looks like base64: must still be used as-is
    conn = connector(webhook_secrets=[secret])
    body = body_of("event_status_changed.json")
    conn.verify_webhook(signed(body, secret=secret), body)
    import base64
    import hashlib
    import hmac

    stamp = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    decoded_key = base64.b64decode(secret)
    wrong = base64.b64encode(hmac.new(decoded_key, stamp.encode() + body, hashlib.sha256).digest()).decode()
    with pytest.raises(WebhookRejected):
        conn.verify_webhook({**signed(body, secret=secret), "x-zendesk-webhook-signature": wrong}, body)


def test_documented_test_secret_is_refused_by_default() -> None:
    body = body_of("event_status_changed.json")
    with pytest.raises(WebhookRejected, match="signature mismatch"):
        connector().verify_webhook(signed(body, secret=TEST_SIGNING_SECRET), body)


def test_documented_test_secret_when_allowed_is_acknowledged_but_never_stored() -> None:
    conn = connector(accept_test_secret=True)
    body = body_of("event_status_changed.json")
    result = receive(conn, signed(body, secret=TEST_SIGNING_SECRET), body)
    assert result.changes == [] and result.ignored_reason == "test_secret"
    # the real secret still produces changes with the option on
    assert len(receive(conn, signed(body), body).changes) == 1


def test_test_secret_allowed_without_real_secret_for_a_webhook_not_yet_saved() -> None:
    conn = connector(webhook_secrets=[], accept_test_secret=True)
    body = b'{"ticket_id": "1", "status": "Open"}'
    assert receive(conn, signed(body, secret=TEST_SIGNING_SECRET), body).ignored_reason == "test_secret"
    with pytest.raises(WebhookRejected):
        conn.verify_webhook(signed(body, secret="guess"), body)


# -- event subscriptions -----------------------------------------------------------------------------
def test_comment_from_a_human_is_a_change() -> None:
    data = fixture("event_comment_added_own_note.json")
    data["event"]["comment"].update(body="Any update? We are losing orders.", author={"id": "20978392"})
    body = json.dumps(data).encode()
    [change] = receive(connector(), signed(body), body).changes
    assert change.actor == "20978392" and change.event_type == "ticket.comment_added"


def test_soft_deleted_event_marks_ticket_deleted() -> None:
    data = fixture("event_status_changed.json")
    data.update(type="zen:event-type:ticket.soft_deleted", event={})
    data["detail"]["status"] = "OPEN"
    body = json.dumps(data).encode()
    [change] = receive(connector(), signed(body), body).changes
    assert change.ticket.status_category is StatusCategory.DELETED


def test_non_ticket_event_is_ignored() -> None:
    body = json.dumps({"type": "zen:event-type:user.created", "id": "x", "detail": {}}).encode()
    result = receive(connector(), signed(body), body)
    assert result.changes == [] and result.ignored_reason == "not_a_ticket_event"


def test_group_filter_applies_to_webhooks() -> None:
    body = body_of("event_status_changed.json")
    result = receive(connector(group_ids=[1]), signed(body), body)
    assert result.changes == [] and result.ignored_reason == "filtered"


@responses.activate
def test_event_organization_tags_are_fetched_once_and_cached() -> None:
    org = responses.get(
        f"{BASE}/organizations/509974.json",
        json={"organization": {"id": 509974, "name": "Gold Customer Ltd", "tags": ["gold"]}},
    )
    conn = connector(email="api@acme.example", api_token="tok")
    body = body_of("event_status_changed.json")
    for _ in range(2):
        [change] = receive(conn, signed(body), body).changes
        assert change.ticket.organization == "Gold Customer Ltd"
        assert change.ticket.attributes["organization_tags"] == ["gold"]
    assert org.call_count == 1


# -- trigger-connected webhooks ------------------------------------------------------------------------
def test_trigger_template_without_credentials_uses_the_body() -> None:
    body = body_of("trigger_body.json")
    [change] = receive(connector(), signed(body), body).changes
    ticket = change.ticket
    assert change.event_type == "trigger"
    assert (ticket.id, ticket.status, ticket.status_category, ticket.priority) == (
        "35436", "open", StatusCategory.IN_PROGRESS, "urgent",
    )
    assert ticket.labels == ("checkout", "outage")
    assert ticket.organization == "Gold Customer Ltd"
    assert ticket.attributes["requester_email"] == "dana@gold-customer.example"
    assert ticket.attributes["ticket_type"] == "incident"
    assert change.delivery_id.startswith("zendesk:trigger:35436:")
    # a redelivery of the same body dedupes to the same id
    assert receive(connector(), signed(body), body).changes[0].delivery_id == change.delivery_id


def test_trigger_delivery_id_is_what_is_signed_not_the_invocation_id_header() -> None:
    """The invocation id is not signed: a replay could carry any value. Timestamp + body are signed."""
    body = body_of("trigger_body.json")
    ids = {
        receive(connector(), {**signed(body), "x-zendesk-webhook-invocation-id": inv}, body).changes[0].delivery_id
        for inv in ("inv-8812", "inv-8813", "")
    }
    assert len(ids) == 1
    later = receive(connector(), signed(body, when=NOW - timedelta(seconds=1)), body).changes[0].delivery_id
    assert later not in ids  # another signed send of the same body is another delivery


@responses.activate
def test_trigger_with_credentials_fetches_the_canonical_ticket() -> None:
    canonical = fixture("ticket_urgent_gold.json") | {"status": "solved", "updated_at": "2026-11-27T08:55:47Z"}
    fetch = responses.get(
        f"{BASE}/tickets/35436.json",
        json={"ticket": canonical, **fixture("sideloads.json")},
        match=[responses.matchers.query_param_matcher({"include": "users,groups,organizations"})],
    )
    body = body_of("trigger_body.json")  # says "Open" at minute resolution; the API says solved
    [change] = receive(connector(email="api@acme.example", api_token="tok"), signed(body), body).changes
    assert fetch.call_count == 1
    ticket = change.ticket
    assert ticket.status_category is StatusCategory.DONE
    assert ticket.updated == datetime(2026, 11, 27, 8, 55, 47, tzinfo=UTC)
    assert ticket.attributes["organization_tags"] == ["gold", "emea"]
    assert ticket.raw["id"] == 35436


@responses.activate
def test_trigger_canonical_fetch_failure_falls_back_to_the_body_without_retrying() -> None:
    fetch = responses.get(f"{BASE}/tickets/35436.json", status=503, json={"error": "Unavailable"})
    responses.get(f"{BASE}/organizations/509974.json", status=503, json={"error": "Unavailable"})
    conn = connector(email="api@acme.example", api_token="tok")
    body = body_of("trigger_body.json")
    [change] = receive(conn, signed(body), body).changes
    assert change.ticket.status == "open"
    assert fetch.call_count == 1
    assert conn.clock.sleeps == []  # type: ignore[attr-defined]


def test_trigger_from_the_api_user_is_an_echo() -> None:
    data = fixture("trigger_body.json") | {"current_user_email": "API@acme.example"}
    body = json.dumps(data).encode()
    result = receive(connector(email="api@acme.example"), signed(body), body)
    assert result.changes == [] and result.ignored_reason == "own_note"


# -- malformed input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"not json", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"hello": 1}', "unrecognised body"),
        (b'{"type": "zen:event-type:ticket.created", "id": "e1"}', "detail (the ticket snapshot) is missing"),
        (b'{"type": "zen:event-type:ticket.created", "detail": {"id": "1"}}', "event id is missing"),
        (b'{"ticket_id": "abc", "status": "Open"}', "ticket_id is missing or not a number"),
        (b'{"ticket_id": "7", "status": "Offen", "updated_at": "2026-11-27T08:55:00Z"}', "unknown ticket status"),
        (b'{"ticket_id": "7", "status": "Open"}', "the trigger body has no updated_at"),
        (b'{"ticket_id": "7", "status": "Open", "updated_at": "yesterday"}', "not an ISO 8601 timestamp"),
    ],
)
def test_malformed_bodies_are_400_with_a_clear_reason(body: bytes, reason: str) -> None:
    conn = connector()
    conn.verify_webhook(signed(body), body)
    with pytest.raises(WebhookRejected) as err:
        conn.parse_webhook(signed(body), body)
    assert err.value.status == 400 and reason in err.value.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["type", "id", "detail", "event", "ticket_id", "status", "updated_at", "tags", "time"])


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(keys, json_values, max_size=6),
    st.sampled_from(["zen:event-type:ticket.created", "zen:event-type:ticket.comment_added", None]),
)
def test_arbitrary_json_is_a_result_or_a_400_never_a_crash(data: dict[str, object], kind: str | None) -> None:
    if kind is not None:
        data["type"] = kind
    body = json.dumps(data).encode()
    conn = connector()
    try:
        conn.parse_webhook(signed(body), body)
    except WebhookRejected as exc:
        assert exc.status == 400


# -- secrets -------------------------------------------------------------------------------------------
@responses.activate
def test_secrets_never_appear_in_logs_errors_or_repr(caplog: pytest.LogCaptureFixture) -> None:
    token = "zd-SECRET-api-token-123"
    responses.get(f"{BASE}/users/me.json", status=401, json={"error": "Couldn't authenticate you"})
    responses.get(f"{BASE}/tickets/35436.json", status=500, json={"error": "boom"})
    responses.get(f"{BASE}/organizations/509974.json", status=500, json={"error": "boom"})
    conn = connector(email="api@acme.example", api_token=token)
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    body = body_of("trigger_body.json")
    for headers in (signed(body, secret="wrong"), signed(body)):
        try:
            receive(conn, headers, body)
        except WebhookRejected as exc:
            errors.append(str(exc) + repr(exc))
    try:
        conn.check()
    except Exception as exc:  # noqa: BLE001 - we only inspect the text
        errors.append(str(exc) + repr(exc))
    assert len(errors) == 2
    text = caplog.text + "".join(errors) + repr(conn) + repr(conn.settings)
    assert "Couldn't authenticate" in text  # the logs/errors we inspect are the real ones
    for secret in (token, SECRET):
        assert secret not in text
