"""Jira webhooks: signature checks over the raw body, parsing, dedupe ids, ignored events, echoes."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from pydantic import SecretStr

from connectors.jira import JiraConnector
from kernel.clock import FakeClock
from kernel.errors import WebhookRejected
from kernel.fields import SOURCE_ATTRIBUTES
from kernel.model import FieldChange, Origin, StatusCategory
from ticketpager.settings import JiraSettings

FIXTURES = Path(__file__).parent / "fixtures" / "jira"
UPDATED_DONE = (FIXTURES / "webhook_issue_updated_done.json").read_bytes()
COMMENT_CREATED = (FIXTURES / "webhook_comment_created.json").read_bytes()
OLD_SECRET, NEW_SECRET = "old-rotating-secret", "new-rotating-secret"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def connector(secrets: list[str] | None = None, *, insecure: bool = False, **extra: Any) -> JiraConnector:
    settings = JiraSettings(
        enabled=True,
        webhook_secrets=[SecretStr(s) for s in (secrets if secrets is not None else [OLD_SECRET, NEW_SECRET])],
        **extra,
    )
    return JiraConnector(settings, clock=FakeClock(NOW), session=requests.Session(), insecure=insecure)


def sign(body: bytes, secret: str = NEW_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(
    body: bytes, secret: str = NEW_SECRET, delivery: str = "4f2d6b1e-9d1c-4c77-8e0f-7c1a0d2e3b4a"
) -> dict[str, str]:
    return {
        "x-hub-signature": sign(body, secret),
        "x-atlassian-webhook-identifier": delivery,
        "x-atlassian-webhook-flow": "Primary",
        "content-type": "application/json",
    }


def payload(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(UPDATED_DONE)
    data.update(changes)
    return data


# -- signatures ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing X-Hub-Signature"),
        ("", "missing X-Hub-Signature"),
        ("sha1=" + hmac.new(NEW_SECRET.encode(), UPDATED_DONE, hashlib.sha1).hexdigest(), "sha256=<hex"),
        (hmac.new(NEW_SECRET.encode(), UPDATED_DONE, hashlib.sha256).hexdigest(), "sha256=<hex"),  # no prefix
        ("sha256=", "sha256=<hex"),
        ("sha256=" + "0" * 64, "invalid X-Hub-Signature"),
        (sign(UPDATED_DONE, "some-other-secret"), "invalid X-Hub-Signature"),
    ],
    ids=["missing", "empty", "wrong-prefix-sha1", "no-prefix", "empty-digest", "zeros", "wrong-secret"],
)
def test_bad_missing_or_wrongly_prefixed_signatures_are_401(header: str | None, reason: str) -> None:
    sent = {} if header is None else {"x-hub-signature": header}
    with pytest.raises(WebhookRejected) as info:
        connector().verify_webhook(sent, UPDATED_DONE)
    assert info.value.status == 401
    assert reason in info.value.reason


def test_uppercase_hex_and_header_case_are_tolerated() -> None:
    sig = sign(UPDATED_DONE)
    connector().verify_webhook({"X-Hub-Signature": "SHA256=" + sig.split("=", 1)[1].upper()}, UPDATED_DONE)


# -- parsing --------------------------------------------------------------------------------------------
def test_issue_updated_becomes_a_normalized_change_with_its_changelog() -> None:
    result = connector().parse_webhook(headers(UPDATED_DONE), UPDATED_DONE)

    assert result.ignored_reason is None
    [change] = result.changes
    ticket = change.ticket
    assert change.origin is Origin.WEBHOOK
    assert change.event_type == "jira:issue_updated"
    assert change.actor == "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077"
    assert change.received_at == NOW
    assert (ticket.id, ticket.key, ticket.status, ticket.status_category) == (
        "10042",
        "OPS-12",
        "Done",
        StatusCategory.DONE,
    )
    assert ticket.url == "https://acme.atlassian.net/browse/OPS-12"  # from issue.self when no URL is set
    assert ticket.priority == "Highest" and ticket.labels == ("customer-impact", "eu")
    assert ticket.updated == datetime(2026, 9, 27, 8, 3, 11, 123000, tzinfo=UTC)
    assert set(ticket.attributes) == SOURCE_ATTRIBUTES["jira"]
    assert change.changes == (
        FieldChange("resolution", None, "Done"),
        FieldChange("status", "In Progress", "Done"),
        FieldChange("custom.customfield_10010", "Silver", "Gold"),  # custom fields by id and display name,
        FieldChange("custom.Customer Tier", "Silver", "Gold"),  # as the ticket's custom_fields has them
        FieldChange("custom.customfield_10019", "", "Ranked higher"),
        FieldChange("custom.Rank", "", "Ranked higher"),
    )


def test_duplicate_deliveries_of_one_event_share_one_delivery_id_and_distinct_events_do_not() -> None:
    """Jira's retry sends the same signed bytes: one delivery id. A replay of a captured body under a fresh
    (unsigned) X-Atlassian-Webhook-Identifier is the same delivery too, not a new one stored again; another event
    (other bytes) is another delivery."""
    c = connector()
    first = c.parse_webhook(headers(UPDATED_DONE), UPDATED_DONE).changes[0]
    retry_headers = headers(UPDATED_DONE) | {"x-atlassian-webhook-retry": "1"}
    retried = c.parse_webhook(retry_headers, UPDATED_DONE).changes[0]
    replayed = c.parse_webhook(headers(UPDATED_DONE, delivery="9a9a9a9a-0000"), UPDATED_DONE).changes[0]
    other_body = UPDATED_DONE.replace(b'"timestamp": ', b'"timestamp": 1')
    assert other_body != UPDATED_DONE
    other = c.parse_webhook(headers(other_body), other_body).changes[0]

    assert first.delivery_id == retried.delivery_id == replayed.delivery_id
    assert first.delivery_id == "jira:sha256:" + hashlib.sha256(UPDATED_DONE).hexdigest()
    assert other.delivery_id != first.delivery_id


def test_without_the_identifier_header_the_body_digest_dedupes() -> None:
    c = connector()
    sent = {"x-hub-signature": sign(UPDATED_DONE)}
    assert c.parse_webhook(sent, UPDATED_DONE).changes[0].delivery_id == (
        c.parse_webhook(sent, UPDATED_DONE).changes[0].delivery_id
    )


def test_issue_created_has_no_change_list_so_the_engine_diffs() -> None:
    body = json.dumps(payload(webhookEvent="jira:issue_created", changelog=None)).encode()
    [change] = connector().parse_webhook(headers(body), body).changes
    assert change.changes is None and change.event_type == "jira:issue_created"


def test_issue_deleted_resolves_and_is_dated_at_the_deletion() -> None:
    data = payload(webhookEvent="jira:issue_deleted")
    data.pop("changelog")
    body = json.dumps(data).encode()
    [change] = connector().parse_webhook(headers(body), body).changes
    assert change.ticket.status_category is StatusCategory.DELETED
    assert change.ticket.updated == datetime.fromtimestamp(1790503391.123, UTC)


def test_status_category_comes_from_the_category_key_never_the_name() -> None:
    data = payload()
    data["issue"]["fields"]["status"] = {
        "id": "10005",
        "name": "Done (awaiting verification)",
        "statusCategory": {"id": 4, "key": "indeterminate", "name": "In Progress"},
    }
    body = json.dumps(data).encode()
    ticket = connector().parse_webhook(headers(body), body).changes[0].ticket
    assert ticket.status == "Done (awaiting verification)"
    assert ticket.status_category is StatusCategory.IN_PROGRESS


@pytest.mark.parametrize("event", ["comment_created", "worklog_updated", "jira:version_released", "sprint_started"])
def test_other_events_are_ignored_with_a_bounded_reason(event: str) -> None:
    data = json.loads(COMMENT_CREATED)
    data["webhookEvent"] = event
    body = json.dumps(data).encode()
    result = connector().parse_webhook(headers(body), body)
    assert result.changes == [] and result.ignored_reason == "unhandled_event"


def test_a_human_comment_or_a_comment_with_real_changes_is_not_an_echo() -> None:
    human = payload(issue_event_type_name="issue_commented")
    human.pop("changelog")
    human["comment"] = {"id": "1", "body": "Still broken for me", "author": {"accountId": "someone"}}
    body = json.dumps(human).encode()
    assert len(connector().parse_webhook(headers(body), body).changes) == 1

    mixed = payload()
    mixed["comment"] = {"id": "2", "body": "[ticketpager] note", "author": {"accountId": "x"}}
    body = json.dumps(mixed).encode()
    assert len(connector().parse_webhook(headers(body), body).changes) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"issue": {}}', "missing webhookEvent"),
        (b'{"webhookEvent": 7}', "missing webhookEvent"),
        (b'{"webhookEvent": "jira:issue_updated"}', "invalid issue"),
        (b'{"webhookEvent": "jira:issue_updated", "issue": {"id": "1", "key": "A-1"}}', "invalid issue"),
        (
            b'{"webhookEvent": "jira:issue_updated", "issue": {"id": "1", "key": "A-1", "fields": {"updated": "x"}}}',
            "invalid issue",
        ),
        (
            b'{"webhookEvent": "jira:issue_deleted", "timestamp": 1e300, '
            b'"issue": {"id": "1", "key": "A-1", "fields": {"updated": "2026-09-27T10:03:11.123+0200"}}}',
            "invalid timestamp",
        ),
    ],
)
def test_malformed_bodies_are_400_with_a_clear_reason(body: bytes, reason: str) -> None:
    with pytest.raises(WebhookRejected) as info:
        connector().parse_webhook(headers(body), body)
    assert info.value.status == 400 and reason in info.value.reason


def test_odd_but_valid_field_shapes_do_not_crash() -> None:
    data = payload()
    fields = data["issue"]["fields"]
    fields.update(
        {
            "priority": None,
            "status": "weird",
            "labels": None,
            "components": [None, {"name": "api"}],
            "assignee": {"accountId": "a"},
            "description": {
                "type": "doc",
                "content": [{"type": "paragraph", "content": [{"type": "text", "text": "hi"}]}],
            },
            "customfield_10030": [{"value": "a"}, {"value": "b"}],
            "customfield_10040": {"value": "EU", "child": {"value": "Berlin"}},
        }
    )
    data["changelog"] = {"items": [None, {"field": "labels", "fromString": "a", "toString": "a b"}]}
    body = json.dumps(data).encode()
    [change] = connector().parse_webhook(headers(body), body).changes
    t = change.ticket
    assert t.priority is None and t.status_category is StatusCategory.NEW and t.labels == ()
    assert t.attributes["components"] == ["api"] and t.description == "hi"
    assert t.custom_fields["customfield_10030"] == ["a", "b"]
    assert t.custom_fields["customfield_10040"] == ["EU", "Berlin"]
    assert change.changes == (FieldChange("labels", ["a"], ["a", "b"]),)


def test_custom_field_display_names_are_used_when_api_credentials_exist() -> None:
    base = "https://acme.atlassian.net"
    fields = json.loads((FIXTURES / "fields.json").read_text())
    with responses.RequestsMock() as rsps:
        info = rsps.get(f"{base}/rest/api/2/serverInfo", json={"deploymentType": "Cloud", "versionNumbers": [1001]})
        listed = rsps.get(f"{base}/rest/api/2/field", json=fields)
        c = connector(url=base, email="bot@acme.example", api_token=SecretStr("t"))
        first = c.parse_webhook(headers(UPDATED_DONE), UPDATED_DONE).changes[0].ticket
        c.parse_webhook(headers(UPDATED_DONE), UPDATED_DONE)
    assert first.custom_fields["Customer Tier"] == "Gold"
    assert first.custom_fields["customfield_10010"] == "Gold"
    assert first.custom_fields["Impacted Services"] == ["checkout", "edge"]
    assert info.call_count == 1 and listed.call_count == 1  # cached


def test_webhook_still_parses_when_the_field_list_is_unreachable() -> None:
    base = "https://acme.atlassian.net"
    with responses.RequestsMock() as rsps:
        rsps.get(f"{base}/rest/api/2/serverInfo", status=503)
        c = connector(url=base, email="bot@acme.example", api_token=SecretStr("t"))
        [change] = c.parse_webhook(headers(UPDATED_DONE), UPDATED_DONE).changes
    assert change.ticket.custom_fields["customfield_10010"] == "Gold"
    assert "Customer Tier" not in change.ticket.custom_fields


def test_a_webhook_that_rules_would_misread_without_field_names_is_refused_until_jira_names_them() -> None:
    """Rules that read ``custom.Customer Tier`` would silently not match (or resolve an open incident) on a
    ticket without display names: while Jira cannot name its fields the webhook gets a 503 (Jira retries
    5xx; the poller reconciles), stores nothing, and goes through once the names are back."""
    base = "https://acme.atlassian.net"
    fields = json.loads((FIXTURES / "fields.json").read_text())
    clock = FakeClock(NOW)
    settings = JiraSettings(
        enabled=True, webhook_secrets=[SecretStr(NEW_SECRET)], url=base, email="bot@acme.example",
        api_token=SecretStr("t"),
    )
    wanted: set[str] = {"Customer Tier"}
    c = JiraConnector(settings, clock=clock, session=requests.Session(), rule_custom_fields=lambda: wanted)
    with responses.RequestsMock() as rsps:
        rsps.get(f"{base}/rest/api/2/serverInfo", status=503)
        with pytest.raises(WebhookRejected) as refused:
            c.parse_webhook(headers(UPDATED_DONE), UPDATED_DONE)
        assert refused.value.status == 503 and "custom.Customer Tier" in refused.value.reason
        wanted.clear()
        wanted.add("customfield_10010")  # the same field by id needs no name: accepted meanwhile
        [change] = c.parse_webhook(headers(UPDATED_DONE), UPDATED_DONE).changes
        assert change.ticket.custom_fields["customfield_10010"] == "Gold"
    wanted.add("Customer Tier")
    clock.advance(61)  # Jira is asked again after NAMES_RETRY_SECONDS
    with responses.RequestsMock() as rsps:
        rsps.get(f"{base}/rest/api/2/serverInfo", json={"deploymentType": "Cloud", "versionNumbers": [1001]})
        rsps.get(f"{base}/rest/api/2/field", json=fields)
        [change] = c.parse_webhook(headers(UPDATED_DONE), UPDATED_DONE).changes
    assert change.ticket.custom_fields["Customer Tier"] == "Gold"


def test_a_refused_token_or_a_deletion_is_never_held_back_for_field_names() -> None:
    """Only an outage is waited out. A revoked token (401) would refuse every webhook for good, and a
    deletion resolves whatever the fields say (polling cannot see deleted issues): both go through."""
    base = "https://acme.atlassian.net"
    settings = JiraSettings(
        enabled=True, webhook_secrets=[SecretStr(NEW_SECRET)], url=base, email="bot@acme.example",
        api_token=SecretStr("revoked"),
    )
    c = JiraConnector(settings, clock=FakeClock(NOW), session=requests.Session(),
                      rule_custom_fields=lambda: {"Customer Tier"})
    with responses.RequestsMock() as rsps:
        rsps.get(f"{base}/rest/api/2/serverInfo", status=401)
        [change] = c.parse_webhook(headers(UPDATED_DONE), UPDATED_DONE).changes
        again = c.parse_webhook(headers(UPDATED_DONE, delivery="second"), UPDATED_DONE).changes  # cached refusal
    assert change.ticket.custom_fields["customfield_10010"] == "Gold" and len(again) == 1
    deleted = json.dumps(payload(webhookEvent="jira:issue_deleted")).encode()
    outage = JiraConnector(settings, clock=FakeClock(NOW), session=requests.Session(),
                           rule_custom_fields=lambda: {"Customer Tier"})
    with responses.RequestsMock() as rsps:
        rsps.get(f"{base}/rest/api/2/serverInfo", status=503)
        [gone] = outage.parse_webhook(headers(deleted), deleted).changes
    assert gone.ticket.status_category is StatusCategory.DELETED


def test_payload_is_kept_as_raw() -> None:
    [change] = connector().parse_webhook(headers(UPDATED_DONE), UPDATED_DONE).changes
    assert change.ticket.raw == copy.deepcopy(json.loads(UPDATED_DONE)["issue"])
