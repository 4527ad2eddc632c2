"""Zendesk polling through the real zenpy client against ``responses``: cursor export, restarts, 429s,
deleted tickets, normalization, filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from connectors.zendesk import ZendeskConnector, ZendeskCursor
from kernel.clock import FakeClock
from kernel.errors import PermanentError, RetryableError
from kernel.fields import SOURCE_ATTRIBUTES
from kernel.model import Origin, StatusCategory
from tests.fakes.zendesk_server import fixture
from ticketpager.settings import ZendeskSettings

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
EXPORT = "https://acme.zendesk.com/api/v2/incremental/tickets/cursor.json"


def connector(clock: FakeClock | None = None, **overrides: Any) -> ZendeskConnector:
    values: dict[str, Any] = {
        "enabled": True,
        "subdomain": "acme",
        "email": "api@acme.example",
        "api_token": "zd-token",
        "custom_field_names": {"27642": "contract_tier"},
    }
    values.update(overrides)
    return ZendeskConnector(ZendeskSettings(**values), clock=clock or FakeClock(NOW), session=requests.Session())


def ticket(tid: int, **fields: Any) -> dict[str, Any]:
    base = fixture("ticket_urgent_gold.json")
    base.update(id=tid, **fields)
    return base


def page(tickets: list[dict[str, Any]], after: str, end: bool, **sideloads: Any) -> dict[str, Any]:
    """An export page; Zendesk sideloads the requested users/groups/organizations."""
    sideloads = sideloads or fixture("sideloads.json")
    return {
        "tickets": tickets,
        "after_cursor": after,
        "after_url": f"{EXPORT}?cursor={after}",
        "before_cursor": None,
        "before_url": None,
        "end_of_stream": end,
        **sideloads,
    }


def cursor_param(value: str) -> list[Any]:
    return [matchers.query_param_matcher({"cursor": value}, strict_match=False)]


@responses.activate
def test_export_pages_to_end_of_stream_with_a_cursor_per_page() -> None:
    first = responses.get(
        EXPORT,
        json=page([ticket(1), ticket(2, priority="low")], "C1", False),
        match=[matchers.query_param_matcher({"start_time": str(int((NOW - timedelta(hours=1)).timestamp()))},
                                            strict_match=False)],
    )
    responses.get(EXPORT, json=page([ticket(3, status="pending")], "C2", False), match=cursor_param("C1"))
    responses.get(EXPORT, json=page([], "C3", True), match=cursor_param("C2"))
    clock = FakeClock(NOW)
    pages = list(connector(clock).poll(None))

    assert [p.cursor for p in pages] == [
        {"after_cursor": "C1", "start_time": None},
        {"after_cursor": "C2", "start_time": None},
        {"after_cursor": "C3", "start_time": None},
    ]
    assert [[c.ticket.id for c in p.changes] for p in pages] == [["1", "2"], ["3"], []]
    assert first.call_count == 1 and len(responses.calls) == 3
    urls = [str(c.request.url) for c in responses.calls]
    assert all("include=users,groups,organizations" in url for url in urls)
    assert "per_page=1000" in urls[0]
    # 10 requests/minute: consecutive export requests are paced 6 s apart on the injected clock
    assert clock.sleeps == [6.0, 6.0]
    change = pages[0].changes[0]
    assert change.origin is Origin.POLL
    assert change.delivery_id == "poll:1:2026-11-27T08:55:12+00:00"
    assert change.changes is None


@responses.activate
def test_resumes_from_the_stored_cursor_after_a_restart() -> None:
    responses.get(EXPORT, json=page([ticket(1)], "C1", True), match=[matchers.query_param_matcher(
        {"start_time": "1796800000"}, strict_match=False)])
    responses.get(EXPORT, json=page([ticket(2, status="solved")], "C2", True), match=cursor_param("C1"))

    first_run = list(connector().poll(ZendeskCursor(start_time=1796800000).to_json()))
    stored = dict(first_run[-1].cursor)  # what the poller committed with the page
    restarted = connector()  # a new process: nothing in memory
    second_run = list(restarted.poll(stored))

    assert [c.ticket.id for c in second_run[0].changes] == ["2"]
    assert second_run[0].changes[0].ticket.status_category is StatusCategory.DONE
    assert "start_time" not in str(responses.calls[1].request.url)
    assert second_run[-1].cursor == {"after_cursor": "C2", "start_time": None}


@responses.activate
def test_429_longer_than_the_budget_ends_the_poll_without_advancing() -> None:
    responses.get(EXPORT, status=429, headers={"Retry-After": "600"}, json={"error": "TooManyRequests"})
    clock = FakeClock(NOW)
    poll = connector(clock, ratelimit_budget_seconds=60).poll({"after_cursor": "C0"})
    with pytest.raises(RetryableError) as err:
        next(poll)
    assert err.value.retry_after == 600 and clock.sleeps == []
    assert len(responses.calls) == 1


@responses.activate
def test_server_errors_are_retried_with_backoff_then_succeed() -> None:
    responses.get(EXPORT, status=503, json={"error": "Unavailable"})
    responses.get(EXPORT, status=500, json={"error": "Internal"})
    responses.get(EXPORT, json=page([ticket(1)], "C1", True))
    clock = FakeClock(NOW)
    pages = list(connector(clock).poll({"after_cursor": "C0"}))
    assert len(pages[0].changes) == 1 and len(responses.calls) == 3
    # backoff sleeps happened on the fake clock, and retries still keep the 6 s export pacing
    assert len(clock.sleeps) >= 2 and sum(clock.sleeps) == pytest.approx(12.0)


@responses.activate
def test_bad_credentials_fail_permanently_without_retrying() -> None:
    responses.get(EXPORT, status=401, json={"error": "Couldn't authenticate you"})
    with pytest.raises(PermanentError, match="401"):
        next(connector().poll({"after_cursor": "C0"}))
    assert len(responses.calls) == 1


@responses.activate
def test_deleted_tickets_arrive_as_deleted_even_outside_the_filter() -> None:
    responses.get(EXPORT, json=page(
        [ticket(7, status="deleted", group_id=1), ticket(8, group_id=1), ticket(9)], "C1", True))
    [only] = list(connector(group_ids=[98738]).poll({"after_cursor": "C0"}))
    assert [(c.ticket.id, c.ticket.status_category) for c in only.changes] == [
        ("7", StatusCategory.DELETED),
        ("9", StatusCategory.IN_PROGRESS),
    ]
    assert only.skipped == 1


@responses.activate
def test_brand_filter_and_malformed_tickets_are_skipped_and_counted() -> None:
    responses.get(EXPORT, json=page(
        [ticket(1, brand_id=5), ticket(2), {"id": 3, "status": "weird", "updated_at": "2026-11-27T08:00:00Z"},
         ticket(4, updated_at="not a date")], "C1", True))
    [only] = list(connector(brand_ids=[360002]).poll({"after_cursor": "C0"}))
    assert [c.ticket.id for c in only.changes] == ["2"]
    assert only.skipped == 3


@responses.activate
def test_normalization_of_an_api_ticket() -> None:
    responses.get(EXPORT, json=page([ticket(35436)], "C1", True))
    [only] = list(connector().poll({"after_cursor": "C0"}))
    t = only.changes[0].ticket
    assert set(t.attributes) == SOURCE_ATTRIBUTES["zendesk"]
    assert (t.source, t.id, t.key) == ("zendesk", "35436", "#35436")
    assert t.title == "Checkout is down for all EU customers"
    assert (t.status, t.status_category, t.priority) == ("open", StatusCategory.IN_PROGRESS, "urgent")
    assert t.requester == "Dana Requester" and t.assignee == "Sam Agent"
    assert t.assignment_group == "Tier 2 Support"
    assert t.organization == "Gold Customer Ltd"
    assert t.labels == ("checkout", "outage")
    assert t.custom_fields == {"27642": "745", "contract_tier": "745", "27648": "yes"}
    assert t.url == "https://acme.zendesk.com/agent/tickets/35436"
    assert t.created == datetime(2026, 11, 27, 8, 40, tzinfo=UTC)
    assert t.attributes == {
        "brand": "360002",
        "brand_id": 360002,
        "group_id": 98738,
        "organization_id": 509974,
        "organization_tags": ["gold", "emea"],
        "requester_id": 20978392,
        "requester_email": "dana@gold-customer.example",
        "via_channel": "email",
        "ticket_type": "incident",
        "custom_status_id": 123,
    }
    assert t.raw == ticket(35436)


@pytest.mark.parametrize(
    ("status", "category"),
    [
        ("new", StatusCategory.NEW),
        ("open", StatusCategory.IN_PROGRESS),
        ("pending", StatusCategory.IN_PROGRESS),
        ("hold", StatusCategory.IN_PROGRESS),
        ("solved", StatusCategory.DONE),
        ("closed", StatusCategory.DONE),
        ("deleted", StatusCategory.DELETED),
    ],
)
@responses.activate
def test_status_categories_come_from_the_status_category(status: str, category: StatusCategory) -> None:
    # a custom status ("Waiting for vendor", id 42) still reports its category in `status`
    responses.get(EXPORT, json=page([ticket(1, status=status, custom_status_id=42)], "C1", True))
    [only] = list(connector().poll({"after_cursor": "C0"}))
    assert only.changes[0].ticket.status_category is category
    assert only.changes[0].ticket.attributes["custom_status_id"] == 42


@responses.activate
def test_missing_priority_and_organization_are_none() -> None:
    responses.get(EXPORT, json=page([ticket(1, priority=None, organization_id=None, brand_id=None)], "C1", True))
    t = next(connector().poll({"after_cursor": "C0"})).changes[0].ticket
    assert t.priority is None and t.organization is None
    assert t.attributes["organization_tags"] is None and t.attributes["brand"] is None


def test_first_cursor_is_at_least_a_minute_in_the_past() -> None:
    conn = connector()
    assert conn.start_cursor(NOW) == {"after_cursor": None, "start_time": int(NOW.timestamp()) - 60}
    week = NOW - timedelta(days=7)
    assert conn.start_cursor(week)["start_time"] == int(week.timestamp())


def test_invalid_stored_cursor_is_a_clear_permanent_error() -> None:
    with pytest.raises(PermanentError, match="cursor is invalid"):
        next(connector().poll({"after_cursor": "", "start_time": None}))


def test_can_poll_needs_credentials_and_the_client_is_built_lazily() -> None:
    assert not ZendeskConnector(ZendeskSettings(subdomain="acme")).can_poll
    conn = connector()
    assert conn.can_poll and conn._client is None  # nothing built (or fetched) at construction
