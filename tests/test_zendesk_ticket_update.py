"""Zendesk ticket updates from PagerDuty's side (issue 16, item 3) with the real zenpy client against HTTP mocked at
the wire: one ``safe_update`` PUT (comment, status, group id) written once per marker, a 409 from a concurrent
edit retried after a re-read, group names resolved through the API and cached, no secret in errors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses

from connectors.base import NoteDestination
from connectors.zendesk import ZendeskConnector
from kernel import redact
from kernel.clock import FakeClock
from kernel.errors import PermanentError, RetryableError
from kernel.model import Outbound, StatusCategory, TicketRef, TicketUpdate, Transition
from kernel.retry import RetryPolicy
from tests.fakes.zendesk_server import fixture
from ticketpager.settings import ZendeskSettings

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
BASE = "https://acme.zendesk.com/api/v2"
TICKET = f"{BASE}/tickets/35436.json"
COMMENTS = f"{BASE}/tickets/35436/comments.json"
GROUPS = f"{BASE}/groups.json"
TOKEN = "zd-token-VERY-SECRET-0123456789"
INCIDENT_URL = "https://acme.pagerduty.com/incidents/Q1ABCDEF"
MARKER = "tp:Q1ABCDEF:PEV0001:zendesk-gold-urgent"


def connector(clock: FakeClock | None = None, attempts: int = 1) -> ZendeskConnector:
    settings = ZendeskSettings(subdomain="acme", email="api@acme.example", api_token=TOKEN)
    return ZendeskConnector(
        settings, clock=clock or FakeClock(NOW), session=requests.Session(), retry=RetryPolicy(max_attempts=attempts)
    )


def update(**extra: Any) -> TicketUpdate:
    values: dict[str, Any] = {
        "ticket": TicketRef("zendesk", "35436", "#35436"),
        "marker": MARKER,
        "comment": "Acknowledged in PagerDuty by Jane Doe",
        "incident_url": INCIDENT_URL,
        "incident_number": 812,
    }
    values.update(extra)
    return TicketUpdate(**values)


def comments(*bodies: str) -> dict[str, Any]:
    return {
        "comments": [{"id": i + 1, "body": b, "public": False, "author_id": 5} for i, b in enumerate(bodies)],
        "meta": {"has_more": False, "after_cursor": None, "before_cursor": None},
        "links": {"next": None, "prev": None},
    }


def ticket(updated: str = "2026-11-27T08:59:00Z", status: str = "open", group_id: int | None = 11) -> dict[str, Any]:
    return {
        "ticket": fixture("ticket_urgent_gold.json") | {"updated_at": updated, "status": status, "group_id": group_id}
    }


def audit(updated: str = "2026-11-27T09:00:03Z") -> dict[str, Any]:
    return {
        "ticket": fixture("ticket_urgent_gold.json") | {"updated_at": updated},
        "audit": {"id": 9001, "ticket_id": 35436, "author_id": 777, "created_at": updated, "events": []},
    }


def groups(*named: tuple[int, str]) -> dict[str, Any]:
    return {"groups": [{"id": i, "name": n} for i, n in named], "next_page": None, "count": len(named)}


def send(c: ZendeskConnector, action: TicketUpdate) -> None:
    dest = NoteDestination("zendesk", lambda: c)
    body = dest.render(action).body
    dest.send(Outbound(1, "zendesk", TicketUpdate.KIND, "acknowledged", body, "", "#35436", 0), timeout=None)


def sent(put: Any) -> list[dict[str, Any]]:
    return [json.loads(call.request.body)["ticket"] for call in put.calls]


def test_one_safe_update_put_with_note_status_and_group(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments("Customer: checkout is broken"))
    rsps.get(TICKET, json=ticket())
    listed = rsps.get(GROUPS, json=groups((11, "Support"), (22, "Database")))
    put = rsps.put(TICKET, json=audit())

    move = Transition(category=StatusCategory.DONE)
    send(connector(), update(transition=move, group="database"))

    (body,) = sent(put)
    assert body["status"] == "solved" and body["group_id"] == 22
    assert body["safe_update"] is True and body["updated_stamp"] == "2026-11-27T08:59:00Z"
    assert body["comment"]["public"] is False
    text = body["comment"]["body"]
    assert text.startswith("[ticketpager] Acknowledged in PagerDuty by Jane Doe")
    assert "PagerDuty incident #812: " + INCIDENT_URL in text and text.endswith(f"[{MARKER}]")
    assert listed.call_count == 1


def test_public_comment_and_nothing_else_when_already_there(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.get(TICKET, json=ticket(status="solved", group_id=22))
    rsps.get(GROUPS, json=groups((22, "Database")))
    put = rsps.put(TICKET, json=audit())
    send(connector(), update(public=True, transition=Transition(status="Solved"), group="Database"))
    (body,) = sent(put)
    assert body["comment"]["public"] is True
    assert "status" not in body and "group_id" not in body


def test_a_retried_update_finds_its_marker_and_writes_nothing(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments("hello", f"[ticketpager] earlier\n\nticketpager-marker: {MARKER}"))
    put = rsps.put(TICKET, json=audit())
    send(connector(), update())
    assert put.call_count == 0


def test_a_concurrent_edit_409_is_retried_after_reading_the_ticket_again(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    read = rsps.get(TICKET, json=ticket(updated="2026-11-27T08:59:00Z"))
    put = rsps.put(TICKET, status=409, json={"error": "UpdateConflict", "description": "ticket changed"})

    with pytest.raises(RetryableError, match="409"):  # one attempt, as the delivery worker runs it
        send(connector(), update())

    rsps.replace("GET", TICKET, json=ticket(updated="2026-11-27T09:00:01Z", status="pending"))
    rsps.replace("PUT", TICKET, json=audit())
    send(connector(), update(transition=Transition(status="open")))  # the outbox's retry

    bodies = [json.loads(c.request.body)["ticket"] for c in rsps.calls if c.request.method == "PUT"]
    assert [b["updated_stamp"] for b in bodies] == ["2026-11-27T08:59:00Z", "2026-11-27T09:00:01Z"]
    assert bodies[1]["status"] == "open"
    assert read.call_count == 1 and put.call_count == 1


def test_group_names_are_cached_and_an_unknown_one_is_a_clear_error(rsps: responses.RequestsMock) -> None:
    clock = FakeClock(NOW)
    c = connector(clock)
    rsps.get(COMMENTS, json=comments())
    rsps.get(TICKET, json=ticket())
    listed = rsps.get(GROUPS, json=groups((11, "Support"), (22, "Database")))
    rsps.put(TICKET, json=audit())

    send(c, update(group="Database"))
    send(c, update(group="Support", marker="tp:2"))
    assert listed.call_count == 1  # cached

    with pytest.raises(PermanentError, match="no group named 'Networking' .*database, support"):
        send(c, update(group="Networking", marker="tp:3"))
    assert listed.call_count == 1  # a miss right after a read does not re-read
    clock.advance(61)
    with pytest.raises(PermanentError):
        send(c, update(group="Networking", marker="tp:3"))
    assert listed.call_count == 2  # a while later it does (a group created since)


def test_no_new_status_and_unknown_status_are_refused_before_any_call(rsps: responses.RequestsMock) -> None:
    with pytest.raises(PermanentError, match="cannot move a ticket to category 'new'"):
        send(connector(), update(transition=Transition(category=StatusCategory.NEW)))
    with pytest.raises(PermanentError, match="no status 'Done'"):
        send(connector(), update(transition=Transition(status="Done")))
    assert len(rsps.calls) == 0


def test_secrets_never_in_errors_logs_or_repr(rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = connector()
    redact.configure(c.settings)
    rsps.get(COMMENTS, status=401, json={"error": f"Couldn't authenticate you with {TOKEN}"})
    with pytest.raises(PermanentError) as info:
        send(c, update())
    for text in (str(info.value), repr(info.value), caplog.text, repr(c), repr(c.settings)):
        assert TOKEN not in text
