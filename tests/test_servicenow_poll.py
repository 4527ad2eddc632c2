"""ServiceNow polling with the real pysnc client and ``responses``: keyset paging, dedupe, bad filters, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses

from connectors.servicenow import ServiceNowConnector, ServiceNowCursor, query_field_names
from kernel.clock import FakeClock
from kernel.errors import ConfigError, PermanentError, RetryableError
from kernel.retry import RetryPolicy
from tests.fakes.servicenow_server import INSTANCE, FakeInstance, make_record, register_responses, sn_time
from ticketpager.settings import ServiceNowSettings

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
LIST_URL = f"{INSTANCE}/api/now/table/incident"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def connector(clock: FakeClock | None = None, **overrides: Any) -> ServiceNowConnector:
    values: dict[str, Any] = {
        "enabled": True,
        "instance_url": INSTANCE,
        "username": "ticketpager",
        "password": "s3cret-pw",
        "page_size": 3,
        "overlap_seconds": 60,
        **overrides,
    }
    return ServiceNowConnector(
        ServiceNowSettings(**values), clock=clock or FakeClock(at(120)), session=requests.Session()
    )


def records(n: int) -> list[dict[str, str]]:
    return [make_record(f"id{i:02d}", f"INC{i:07d}", at(i)) for i in range(1, n + 1)]


def drain(conn: ServiceNowConnector, cursor: Any) -> list[Any]:
    return list(conn.poll(cursor))


def test_keyset_paging_reads_every_record_once_across_pages(rsps: Any) -> None:
    fake = FakeInstance(records(8))
    register_responses(rsps, fake)
    conn = connector()

    pages = drain(conn, conn.start_cursor(at(0)))

    numbers = [c.ticket.key for p in pages for c in p.changes]
    assert numbers == [f"INC{i:07d}" for i in range(1, 9)]
    window_queries = [q for q in fake.lists() if q["sysparm_limit"] == "3"]
    assert len(window_queries) >= 3  # several pages
    # keyset, not offset: every page re-queries from the last sys_updated_on it stored
    assert {q["sysparm_offset"] for q in window_queries} == {"0"}
    assert window_queries[1]["sysparm_query"].startswith(f"sys_updated_on>={sn_time(at(3))}^")
    first = window_queries[0]
    assert first["sysparm_query"] == (
        f"sys_updated_on>={sn_time(at(0) - timedelta(seconds=60))}^ORDERBYsys_updated_on^ORDERBYsys_id"
    )
    assert first["sysparm_display_value"] == "false"
    assert "assignment_group.name" in first["sysparm_fields"].split(",")
    final = ServiceNowCursor.from_json(pages[-1].cursor)
    assert final.watermark == at(8)


def test_each_page_cursor_only_covers_rows_of_that_page(rsps: Any) -> None:
    fake = FakeInstance(records(5))
    register_responses(rsps, fake)
    conn = connector()

    pages = drain(conn, conn.start_cursor(at(0)))

    first = ServiceNowCursor.from_json(pages[0].cursor)
    assert first.watermark == at(3)  # never past what page 1 stored
    assert ("id04", sn_time(at(4))) not in first.seen


def test_record_updated_during_the_poll_is_not_skipped(rsps: Any) -> None:
    fake = FakeInstance(records(6))
    register_responses(rsps, fake)
    conn = connector()
    conn.validate()
    it = conn.poll(conn.start_cursor(at(0)))
    page1 = next(it)
    assert [c.ticket.key for c in page1.changes] == ["INC0000001", "INC0000002", "INC0000003"]
    # between two pages someone raises INC2 to P1: with offset paging INC4 would slide out of view
    fake.update("id02", at(9), priority="1")

    rest = list(it)

    seen = [(c.ticket.key, c.ticket.updated) for p in rest for c in p.changes]
    assert ("INC0000004", at(4)) in seen
    assert ("INC0000002", at(9)) in seen
    inc2 = next(c.ticket for p in rest for c in p.changes if c.ticket.key == "INC0000002")
    assert inc2.priority == "1 - Critical"
    assert len(seen) == len(set(seen))


def test_a_crowded_second_is_finished_by_sys_id_without_looping(rsps: Any) -> None:
    same = [make_record(f"id{i:02d}", f"INC{i:07d}", at(5)) for i in range(1, 6)]
    fake = FakeInstance([*same, make_record("id99", "INC0000099", at(7))])
    register_responses(rsps, fake)
    conn = connector(page_size=2)

    pages = drain(conn, conn.start_cursor(at(0)))

    keys = [c.ticket.key for p in pages for c in p.changes]
    assert sorted(keys) == sorted([r["number"] for r in same] + ["INC0000099"])
    assert len(keys) == len(set(keys))
    assert any("^sys_id>" in q["sysparm_query"] for q in fake.lists())
    assert len(fake.lists()) < 12


def test_restart_from_the_stored_cursor_dedupes_the_overlap(rsps: Any) -> None:
    fake = FakeInstance(records(4))
    register_responses(rsps, fake)
    first = connector()
    cursor = drain(first, first.start_cursor(at(0)))[-1].cursor

    fake.put(make_record("id50", "INC0000050", at(4.5)))  # lands inside the overlap window
    second = connector()  # a fresh process: only the stored cursor survives
    pages = drain(second, cursor)

    assert [c.ticket.key for p in pages for c in p.changes] == ["INC0000050"]
    assert sum(p.skipped for p in pages) >= 1  # re-read overlap rows were recognised, not re-emitted
    assert pages[0].changes[0].delivery_id == f"poll:id50:{at(4.5).isoformat()}"


def test_poll_without_cursor_looks_back_lookback_seconds(rsps: Any) -> None:
    fake = FakeInstance([make_record("old", "INC0000001", at(0)), make_record("new", "INC0000002", at(100))])
    register_responses(rsps, fake)
    conn = connector(FakeClock(at(120)), lookback_seconds=3600)

    keys = [c.ticket.key for p in drain(conn, None) for c in p.changes]

    assert keys == ["INC0000002"]


def test_misspelled_filter_field_stops_the_poll_before_reading_the_table(rsps: Any) -> None:
    fake = FakeInstance(records(5))
    register_responses(rsps, fake)
    conn = connector(query="active=true^assignment_grup=grp-network")

    with pytest.raises(ConfigError, match="assignment_grup") as info:
        drain(conn, conn.start_cursor(at(0)))

    assert "whole table" in str(info.value)
    assert all(q["sysparm_limit"] == "1" for q in fake.lists())  # only the probe ran


def test_valid_filter_is_applied_with_the_watermark(rsps: Any) -> None:
    fake = FakeInstance(
        [
            make_record("a", "INC0000001", at(1), assignment_group="grp-network", priority="1"),
            make_record("b", "INC0000002", at(2), assignment_group="grp-desk", priority="1"),
        ]
    )
    register_responses(rsps, fake)
    conn = connector(query="assignment_group.name=Network^priority<=2")

    keys = [c.ticket.key for p in drain(conn, conn.start_cursor(at(0))) for c in p.changes]

    assert keys == ["INC0000001"]
    window = [q for q in fake.lists() if q["sysparm_limit"] == "3"][0]
    assert "^assignment_group.name=Network^priority<=2^ORDERBYsys_updated_on^ORDERBYsys_id" in (window["sysparm_query"])


def test_rows_outside_the_requested_window_stop_the_poll(rsps: Any) -> None:
    probe = {"result": [make_record("a", "INC0000001", at(1))]}
    # an instance that ignored our whole query answers the table from the beginning
    ignored = {"result": [make_record("a", "INC0000001", at(1)), make_record("b", "INC0000002", at(50))]}
    rsps.add(responses.GET, LIST_URL, json=probe, headers={"X-Total-Count": "2"})
    rsps.add(responses.GET, LIST_URL, json=ignored, headers={"X-Total-Count": "2"})
    conn = connector()

    with pytest.raises(ConfigError, match="outside the requested window"):
        drain(conn, conn.start_cursor(at(30)))


def test_empty_page_with_a_positive_total_blames_acls(rsps: Any) -> None:
    probe = {"result": [make_record("a", "INC0000001", at(1))]}
    rsps.add(responses.GET, LIST_URL, json=probe, headers={"X-Total-Count": "1"})
    rsps.add(responses.GET, LIST_URL, json={"result": []}, headers={"X-Total-Count": "5"})
    conn = connector()

    with pytest.raises(ConfigError, match="ACL"):
        drain(conn, conn.start_cursor(at(0)))


def test_v1_404_on_an_empty_result_is_not_an_error(rsps: Any) -> None:
    fake = FakeInstance(records(2), empty_404=True)
    register_responses(rsps, fake)
    conn = connector()

    pages = drain(conn, conn.start_cursor(at(30)))

    assert [p.changes for p in pages] == [[]]
    assert ServiceNowCursor.from_json(pages[-1].cursor).watermark == at(30)


def test_persistent_429_gives_up_as_retryable(rsps: Any) -> None:
    fake = FakeInstance(records(2))
    register_responses(rsps, fake)
    clock = FakeClock(at(120))
    conn = ServiceNowConnector(
        connector().settings, clock=clock, session=requests.Session(), retry=RetryPolicy(max_attempts=3)
    )
    conn.validate()
    fake.fail_next(10, 429, {"Retry-After": "2"})

    with pytest.raises(RetryableError):
        drain(conn, conn.start_cursor(at(0)))
    assert clock.sleeps == [2.0, 2.0]


def test_bad_credentials_are_permanent_and_clear(rsps: Any) -> None:
    fake = FakeInstance(records(2), password="the-right-one")
    register_responses(rsps, fake)
    clock = FakeClock(at(120))
    conn = connector(clock, password="wrong-password-123")

    with pytest.raises(PermanentError, match="authentication failed") as info:
        drain(conn, None)

    assert clock.sleeps == []
    assert len(fake.requests) == 1
    assert "wrong-password-123" not in str(info.value)


def test_forbidden_is_permanent_and_names_roles(rsps: Any) -> None:
    rsps.add(responses.GET, LIST_URL, status=403, json={"error": {"message": "Insufficient rights"}})
    with pytest.raises(PermanentError, match="role or ACL"):
        connector().check()


def test_check_passes_against_a_readable_table(rsps: Any) -> None:
    register_responses(rsps, FakeInstance(records(1)))
    connector().check()


def test_admin_query_that_escapes_the_window_is_rejected() -> None:
    with pytest.raises(ConfigError, match="NQ"):
        query_field_names("priority=1^NQactive=true")
    with pytest.raises(ConfigError, match="sort"):
        query_field_names("priority=1^ORDERBYnumber")
    assert query_field_names("active=true^priority<=2^ORurgency=1^short_descriptionLIKEdown") == [
        "active",
        "priority",
        "urgency",
        "short_description",
    ]


def test_unreadable_stored_cursor_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cursor"):
        list(connector().poll({"watermark": "yesterday"}))


def test_can_poll_only_with_credentials_and_client_is_lazy() -> None:
    assert not connector(username="", password="").can_poll
    conn = connector()
    assert conn.can_poll
    assert conn._client is None  # nothing built (and no request made) at construction
