"""Zendesk write-back: internal notes, written once per marker under retries, no echo into pages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses

from connectors.base import WriteBack
from connectors.zendesk import ZendeskConnector
from kernel.clock import FakeClock
from kernel.errors import PermanentError, SkippableError
from kernel.model import EventAction, TicketRef
from tests.fakes.zendesk_server import fixture
from ticketpager.settings import ZendeskSettings

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
BASE = "https://acme.zendesk.com/api/v2"
TICKET = f"{BASE}/tickets/35436.json"
COMMENTS = f"{BASE}/tickets/35436/comments.json"
MARKER = "tp:zendesk:35436:zendesk-gold-urgent:1:trigger"
NOTE = WriteBack(
    ticket=TicketRef("zendesk", "35436", "#35436"),
    action=EventAction.TRIGGER,
    dedup_key="zendesk:35436:zendesk-gold-urgent:1",
    rule="zendesk-gold-urgent",
    marker=MARKER,
    text="PagerDuty incident triggered by rule zendesk-gold-urgent (dedup key zendesk:35436:zendesk-gold-urgent:1)",
)


def connector(**overrides: Any) -> ZendeskConnector:
    values: dict[str, Any] = {"subdomain": "acme", "email": "api@acme.example", "api_token": "zd-token"}
    values.update(overrides)
    return ZendeskConnector(ZendeskSettings(**values), clock=FakeClock(NOW), session=requests.Session())


def comments(*bodies: str) -> dict[str, Any]:
    return {
        "comments": [{"id": i + 1, "body": b, "public": False, "author_id": 5} for i, b in enumerate(bodies)],
        "meta": {"has_more": False, "after_cursor": None, "before_cursor": None},
        "links": {"next": None, "prev": None},
    }


def audit(updated: str = "2026-11-27T09:00:03Z") -> dict[str, Any]:
    return {
        "ticket": fixture("ticket_urgent_gold.json") | {"updated_at": updated},
        "audit": {"id": 9001, "ticket_id": 35436, "author_id": 777, "created_at": updated, "events": []},
    }


@responses.activate
def test_writes_an_internal_note_with_the_marker() -> None:
    responses.get(COMMENTS, json=comments("Customer: checkout is broken"))
    put = responses.put(TICKET, json=audit())
    connector().write_back(NOTE)
    assert put.call_count == 1
    sent = json.loads(put.calls[0].request.body)
    comment = sent["ticket"]["comment"]
    assert comment["public"] is False
    assert comment["body"].startswith("[ticketpager] PagerDuty incident triggered")
    assert MARKER in comment["body"]


@responses.activate
def test_existing_marker_means_no_second_note() -> None:
    responses.get(COMMENTS, json=comments("hello", f"[ticketpager] earlier\n\nticketpager-marker: {MARKER}"))
    put = responses.put(TICKET, json=audit())
    connector().write_back(NOTE)
    assert put.call_count == 0


@responses.activate
def test_note_is_written_once_when_the_first_put_succeeded_but_answered_503() -> None:
    # attempt 1: no note yet, PUT lands in Zendesk but the answer is a 503; attempt 2 sees the note
    responses.get(COMMENTS, json=comments())
    responses.get(COMMENTS, json=comments(f"[ticketpager] x\n\nticketpager-marker: {MARKER}"))
    put = responses.put(TICKET, status=503, json={"error": "Unavailable"})
    conn = connector()
    conn.write_back(NOTE)
    assert put.call_count == 1
    assert len(conn.clock.sleeps) == 1  # type: ignore[attr-defined]  # backoff on the fake clock


@responses.activate
def test_write_back_off_does_nothing() -> None:
    connector(write_back=False).write_back(NOTE)
    assert len(responses.calls) == 0


@responses.activate
def test_closed_ticket_is_skippable() -> None:
    responses.get(COMMENTS, json=comments())
    responses.put(TICKET, status=422, json={"error": "RecordInvalid", "description": "closed prevents ticket update"})
    with pytest.raises(SkippableError, match="422"):
        connector().write_back(NOTE)


def test_write_back_without_credentials_is_a_config_error() -> None:
    conn = ZendeskConnector(ZendeskSettings(subdomain="acme"), clock=FakeClock(NOW))
    with pytest.raises(PermanentError, match="credentials are not configured"):
        conn.write_back(NOTE)


@responses.activate
def test_the_ticket_version_our_note_created_does_not_come_back_from_the_poll() -> None:
    responses.get(COMMENTS, json=comments())
    responses.put(TICKET, json=audit("2026-11-27T09:00:03Z"))
    export = f"{BASE}/incremental/tickets/cursor.json"
    echo = fixture("ticket_urgent_gold.json") | {"updated_at": "2026-11-27T09:00:03Z"}
    later = fixture("ticket_urgent_gold.json") | {"id": 2, "updated_at": "2026-11-27T09:00:03Z"}
    responses.get(export, json={"tickets": [echo, later], "after_cursor": "C1", "end_of_stream": True,
                                **fixture("sideloads.json")})
    conn = connector()
    conn.write_back(NOTE)
    [page] = list(conn.poll({"after_cursor": "C0"}))
    assert [c.ticket.id for c in page.changes] == ["2"]
    assert page.skipped == 1


@responses.activate
def test_check_reports_bad_credentials_clearly() -> None:
    responses.get(f"{BASE}/users/me.json", status=401, json={"error": "Couldn't authenticate you"})
    with pytest.raises(PermanentError, match="401"):
        connector().check()


@responses.activate
def test_check_passes_with_working_credentials() -> None:
    responses.get(f"{BASE}/users/me.json", json={"user": {"id": 777, "email": "api@acme.example"}})
    connector().check()
