"""ServiceNow ticket updates from PagerDuty's side (issue 16, item 3) against the fake instance at the wire: one
PATCH with the work note or comment, the state with its required close code and notes, the assignment group by
name (sys_id looked up, cached), written once per marker, no secret in errors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses

from connectors.base import NoteDestination
from connectors.servicenow import ServiceNowConnector
from kernel import redact
from kernel.clock import FakeClock
from kernel.errors import PermanentError, SkippableError
from kernel.model import Outbound, StatusCategory, TicketRef, TicketUpdate, Transition
from kernel.retry import RetryPolicy
from tests.fakes.servicenow_server import INSTANCE, FakeInstance, make_record, register_responses
from ticketpager.settings import ServiceNowSettings

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
PASSWORD = "s3cret-pw-VERY-SECRET-0123"
INCIDENT_URL = "https://acme.pagerduty.com/incidents/Q1ABCDEF"
RESOLVE = Transition(
    category=StatusCategory.DONE, fields=(("close_code", "Solution provided"), ("close_notes", "Fixed in PagerDuty"))
)


def connector(clock: FakeClock | None = None, **overrides: Any) -> ServiceNowConnector:
    values: dict[str, Any] = {
        "enabled": True,
        "instance_url": INSTANCE,
        "username": "ticketpager",
        "password": PASSWORD,
        **overrides,
    }
    return ServiceNowConnector(
        ServiceNowSettings(**values),
        clock=clock or FakeClock(T0 + timedelta(hours=1)),
        session=requests.Session(),
        retry=RetryPolicy(max_attempts=1),
    )


def update(**extra: Any) -> TicketUpdate:
    values: dict[str, Any] = {
        "ticket": TicketRef("servicenow", "id01", "INC0000001", f"{INSTANCE}/nav_to.do?uri=incident.do?sys_id=id01"),
        "marker": "tp:Q1ABCDEF:PEV0001:sn-p1",
        "comment": "Acknowledged in PagerDuty by Jane Doe",
        "incident_url": INCIDENT_URL,
        "incident_number": 812,
    }
    values.update(extra)
    return TicketUpdate(**values)


@pytest.fixture
def fake() -> Any:
    instance = FakeInstance([make_record("id01", "INC0000001", T0, state="2")], password=PASSWORD)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_responses(rsps, instance)
        yield instance


def send(c: ServiceNowConnector, action: TicketUpdate) -> None:
    dest = NoteDestination("servicenow", lambda: c)
    body = dest.render(action).body
    dest.send(Outbound(1, "servicenow", TicketUpdate.KIND, "acknowledged", body, "", "INC0000001", 0), timeout=None)


def patches(fake: FakeInstance) -> list[tuple[str, dict[str, str]]]:
    return [(m, q) for m, p, q in fake.requests if m == "PATCH"]


def test_work_note_once_with_link_and_marker(fake: FakeInstance) -> None:
    c = connector()
    send(c, update())
    send(c, update())  # the retried step

    (entry,) = fake.journal
    assert entry["element"] == "work_notes" and entry["element_id"] == "id01"
    assert entry["value"].startswith("[ticketpager] Acknowledged in PagerDuty by Jane Doe")
    assert f"PagerDuty incident #812: {INCIDENT_URL}" in entry["value"]
    assert entry["value"].endswith("[tp:Q1ABCDEF:PEV0001:sn-p1]")
    assert len(patches(fake)) == 1


def test_public_comment_goes_to_comments(fake: FakeInstance) -> None:
    send(connector(), update(public=True))
    assert [e["element"] for e in fake.journal] == ["comments"]


def test_resolve_sends_state_with_close_code_and_notes_in_one_patch(fake: FakeInstance) -> None:
    send(connector(), update(transition=RESOLVE))
    record = fake.records["id01"]
    assert record["state"] == "6" and record["close_code"] == "Solution provided"
    assert record["close_notes"] == "Fixed in PagerDuty"
    assert len(patches(fake)) == 1 and len(fake.journal) == 1


def test_resolve_without_close_code_is_refused_before_writing(fake: FakeInstance) -> None:
    with pytest.raises(PermanentError, match="requires close_code and close_notes"):
        send(connector(), update(transition=Transition(status="Resolved")))
    assert fake.requests == []


def test_state_by_label_value_and_state_map(fake: FakeInstance) -> None:
    send(connector(), update(transition=Transition(status="On Hold", fields=(("hold_reason", "1"),))))
    assert fake.records["id01"]["state"] == "3" and fake.records["id01"]["hold_reason"] == "1"
    in_progress = Transition(category=StatusCategory.IN_PROGRESS)
    send(connector(state_map={"9": "in_progress"}), update(marker="tp:2", transition=in_progress))
    assert fake.records["id01"]["state"] == "9"
    with pytest.raises(PermanentError, match="unknown state 'Fixed'"):
        send(connector(), update(marker="tp:3", transition=Transition(status="Fixed")))


def test_already_in_state_sends_no_state(fake: FakeInstance, patch_bodies: list[dict[str, Any]]) -> None:
    fake.update("id01", T0, state="6")
    send(connector(), update(transition=RESOLVE))
    (body,) = patch_bodies
    assert set(body) == {"work_notes"}


def test_assignment_group_by_name_is_looked_up_once(fake: FakeInstance) -> None:
    c = connector()
    send(c, update(group="Network"))
    send(c, update(group="Network", marker="tp:2"))
    assert fake.records["id01"]["assignment_group"] == "grp-network"
    lookups = [q for m, p, q in fake.requests if p.endswith("/sys_user_group")]
    assert len(lookups) == 1 and lookups[0]["sysparm_query"] == "name=Network"
    with pytest.raises(PermanentError, match="no assignment group named 'Nope'"):
        send(c, update(group="Nope", marker="tp:3"))


def test_deleted_record_is_skippable(fake: FakeInstance) -> None:
    del fake.records["id01"]
    with pytest.raises(SkippableError, match="INC0000001 no longer exists"):
        send(connector(), update())


def test_secrets_never_in_errors_logs_or_repr(fake: FakeInstance, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = connector(password="wrong-password-0123456789")
    redact.configure(c.settings)
    with pytest.raises(PermanentError) as info:
        send(c, update())
    for text in (str(info.value), repr(info.value), caplog.text, repr(c), repr(c.settings)):
        assert "wrong-password-0123456789" not in text


@pytest.fixture
def patch_bodies(fake: FakeInstance, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each PATCH body the fake receives (it records only method, path and query)."""
    bodies: list[dict[str, Any]] = []
    original = fake.handle

    def handle(method: str, url: str, headers: dict[str, str], body: bytes) -> Any:
        if method == "PATCH":
            bodies.append(json.loads(body))
        return original(method, url, headers, body)

    monkeypatch.setattr(fake, "handle", handle)
    return bodies
