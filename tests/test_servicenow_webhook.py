"""ServiceNow webhooks (business-rule requests): HMAC / bearer checks, parsing, normalization, state maps."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.servicenow import ServiceNowConnector
from connectors.servicenow_normalize import Normalizer
from kernel.clock import FakeClock
from kernel.errors import ConfigError, WebhookRejected
from kernel.fields import SOURCE_ATTRIBUTES
from kernel.model import Origin, StatusCategory
from ticketpager.settings import ServiceNowSettings

FIXTURE = Path(__file__).parent / "fixtures" / "servicenow" / "webhook_incident_update.json"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)  # the fixture's sent_at
SECRET = "whsec-servicenow-1"
TOKEN = "bearer-token-abc"


def connector(insecure: bool = False, **overrides: Any) -> ServiceNowConnector:
    values: dict[str, Any] = {
        "enabled": True,
        "instance_url": "https://acme.service-now.com",
        "username": "ticketpager",
        "webhook_secrets": [SECRET],
        "bearer_tokens": [TOKEN],
        **overrides,
    }
    return ServiceNowConnector(ServiceNowSettings(**values), clock=FakeClock(NOW), insecure=insecure)


def body(**changes: Any) -> bytes:
    payload = json.loads(FIXTURE.read_text())
    record = changes.pop("record", {})
    payload.update(changes)
    payload["record"].update(record)
    return json.dumps(payload).encode()


def signed(raw: bytes, secret: str = SECRET, stamp: str = "1795770000") -> dict[str, str]:
    sig = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    return {"x-signature": sig, "x-timestamp": stamp, "content-type": "application/json"}


# -- authentication ---------------------------------------------------------------------------------
def test_stale_timestamp_is_rejected_as_replay() -> None:
    raw = body(sent_at=1795769000)
    with pytest.raises(WebhookRejected, match="tolerance"):
        connector().verify_webhook(signed(raw, stamp="1795769000"), raw)


def test_timestamp_header_must_match_the_signed_body() -> None:
    raw = FIXTURE.read_bytes()  # signed body says sent_at 1795770000
    with pytest.raises(WebhookRejected, match="sent_at"):
        connector().verify_webhook(signed(raw, stamp="1795770100"), raw)


def test_missing_timestamp_is_rejected() -> None:
    raw = FIXTURE.read_bytes()
    headers = signed(raw)
    del headers["x-timestamp"]
    with pytest.raises(WebhookRejected, match="missing X-Timestamp"):
        connector().verify_webhook(headers, raw)


def test_bearer_token_is_accepted_and_a_wrong_one_rejected() -> None:
    raw = FIXTURE.read_bytes()
    connector().verify_webhook({"authorization": f"Bearer {TOKEN}"}, raw)
    with pytest.raises(WebhookRejected, match="invalid bearer token") as info:
        connector().verify_webhook({"authorization": "Bearer nope"}, raw)
    assert info.value.status == 401


def test_secure_by_default_without_configured_secrets() -> None:
    conn = connector(webhook_secrets=[], bearer_tokens=[])
    with pytest.raises(WebhookRejected, match="webhook secret not configured") as info:
        conn.verify_webhook({"authorization": "Bearer anything"}, FIXTURE.read_bytes())
    assert info.value.status == 401
    connector(insecure=True, webhook_secrets=[], bearer_tokens=[]).verify_webhook({}, FIXTURE.read_bytes())


# -- parsing ----------------------------------------------------------------------------------------
def test_business_rule_payload_becomes_a_normalized_change() -> None:
    raw = FIXTURE.read_bytes()
    result = connector().parse_webhook(signed(raw), raw)

    assert result.ignored_reason is None
    [change] = result.changes
    ticket = change.ticket
    assert change.origin is Origin.WEBHOOK
    assert change.delivery_id == "webhook:9d385017c611228701d22104cc95c371:4"
    assert change.actor == "alice.admin"
    assert ticket.id == "9d385017c611228701d22104cc95c371"
    assert ticket.key == "INC0010042"
    assert ticket.title == "Core router down in FRA1"
    assert ticket.priority == "1 - Critical"
    assert ticket.status == "In Progress"
    assert ticket.status_category is StatusCategory.IN_PROGRESS
    assert ticket.assignment_group == "Network"
    assert ticket.assignee == "Alice Admin"
    assert ticket.requester == "Bob Caller"
    assert ticket.organization == "ACME Corp"
    assert ticket.updated == datetime(2026, 11, 27, 8, 59, 30, tzinfo=UTC)
    assert ticket.url == (
        "https://acme.service-now.com/nav_to.do?uri=incident.do?sys_id=9d385017c611228701d22104cc95c371"
    )
    assert set(ticket.attributes) == SOURCE_ATTRIBUTES["servicenow"]
    assert ticket.attributes["priority_number"] == 1
    assert ticket.attributes["impact"] == 1
    assert ticket.attributes["configuration_item"] == "core-router-01"
    assert ticket.attributes["table"] == "incident"
    assert ticket.raw["cmdb_ci"] == "b0c25d1bc0a800090168be1bfcdcd759"


def test_other_table_is_ignored() -> None:
    result = connector().parse_webhook({}, body(table="problem"))
    assert result.ignored_reason == "other_table"


def test_delete_event_marks_the_ticket_deleted() -> None:
    [change] = connector().parse_webhook({}, body(event="delete")).changes
    assert change.ticket.status_category is StatusCategory.DELETED


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "no 'record' object"),
        (b'{"record": "x"}', "no 'record' object"),
        (b'{"record": {"number": "INC1"}}', "no sys_id"),
        (b'{"record": {"sys_id": "a", "sys_updated_on": "yesterday"}}', "invalid record"),
        (b'{"record": {"sys_id": "a", "sys_updated_on": 5}}', "invalid record"),
    ],
)
def test_malformed_bodies_are_400_not_crashes(raw: bytes, reason: str) -> None:
    with pytest.raises(WebhookRejected, match=reason) as info:
        connector().parse_webhook({}, raw)
    assert info.value.status == 400


# -- state mapping ----------------------------------------------------------------------------------
def normalizer(**state_map: str) -> Normalizer:
    return Normalizer(instance_url="https://x", table="incident", state_map=state_map, priority_labels={})


@pytest.mark.parametrize(
    ("state", "category"),
    [
        ("1", StatusCategory.NEW),
        ("2", StatusCategory.IN_PROGRESS),
        ("3", StatusCategory.IN_PROGRESS),
        ("6", StatusCategory.DONE),
        ("7", StatusCategory.DONE),
        ("8", StatusCategory.DONE),
    ],
)
def test_default_state_map(state: str, category: StatusCategory) -> None:
    assert normalizer().category({"state": state}) is category


def test_state_map_overrides_defaults_and_adds_custom_states() -> None:
    custom = normalizer(**{"3": "new", "6": "in_progress", "10": "done"})
    assert custom.category({"state": "3"}) is StatusCategory.NEW
    assert custom.category({"state": "6"}) is StatusCategory.IN_PROGRESS  # e.g. "Resolved" awaits a check
    assert custom.category({"state": "10"}) is StatusCategory.DONE
    assert custom.category({"state": "7"}) is StatusCategory.DONE  # untouched defaults stay


def test_state_map_override_through_the_connector_settings() -> None:
    conn = connector(state_map={"2": "new"})
    [change] = conn.parse_webhook({}, body()).changes
    assert change.ticket.status_category is StatusCategory.NEW
    assert change.ticket.status == "In Progress"  # the name is display only; the category decides


def test_unknown_state_falls_back_to_the_active_flag() -> None:
    assert normalizer().category({"state": "42", "active": "false"}) is StatusCategory.DONE
    assert normalizer().category({"state": "42", "active": "true"}) is StatusCategory.IN_PROGRESS


def test_invalid_state_map_category_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="state_map"):
        normalizer(**{"6": "finished"})


def test_priority_label_override() -> None:
    conn = connector(priority_labels={"1": "P1"})
    [change] = conn.parse_webhook({}, body()).changes
    assert change.ticket.priority == "P1"


def test_business_rule_sends_every_field_the_poll_reads() -> None:
    """The shipped business rule and the poller must agree on fields, or webhook tickets lose attributes."""
    import re

    from connectors.servicenow_normalize import ALL_FIELDS, REFERENCE_NAMES

    script = (Path(__file__).parent.parent / "deploy" / "servicenow" / "ticketpager_business_rule.js").read_text()

    def js_list(name: str) -> set[str]:
        match = re.search(rf"var {name} = \[(.*?)\];", script, re.S)
        assert match, name
        return set(re.findall(r"'([a-z_.]+)'", match.group(1)))

    fields, references = js_list("FIELDS"), js_list("REFERENCES")
    sent = fields | references | {f"{r}.name" for r in references}
    assert references == set(REFERENCE_NAMES)
    assert sent == set(ALL_FIELDS)
    assert "generateMac" in script and "X-Signature" in script and "X-Timestamp" in script
