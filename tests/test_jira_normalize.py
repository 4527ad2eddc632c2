"""Jira issue normalization and JQL date literals (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from connectors.jira_normalize import issue_to_ticket, jql_literal, parse_jira_time, user_zone
from kernel.fields import SOURCE_ATTRIBUTES
from kernel.model import StatusCategory
from tests.fakes.jira_server import make_issue

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-09-27T10:03:11.123+0200", datetime(2026, 9, 27, 8, 3, 11, 123000, tzinfo=UTC)),
        ("2026-09-27T10:03:11.123+0530", datetime(2026, 9, 27, 4, 33, 11, 123000, tzinfo=UTC)),
        ("2026-09-27T10:03:11.000-0700", datetime(2026, 9, 27, 17, 3, 11, tzinfo=UTC)),
        ("2026-09-27T10:03:11Z", datetime(2026, 9, 27, 10, 3, 11, tzinfo=UTC)),
    ],
)
def test_timestamps_keep_their_offsets(text: str, utc: datetime) -> None:
    parsed = parse_jira_time(text)
    assert parsed is not None and parsed.tzinfo is not None and parsed == utc


@pytest.mark.parametrize("bad", [None, "", "yesterday", 1790503391123])
def test_unparsable_timestamps_are_none(bad: object) -> None:
    assert parse_jira_time(bad) is None


@pytest.mark.parametrize(
    ("zone", "literal"),
    [
        ("Asia/Kolkata", '"2026/11/27 14:30"'),  # +05:30
        ("Asia/Kathmandu", '"2026/11/27 14:45"'),  # +05:45
        ("America/Los_Angeles", '"2026/11/27 01:00"'),  # −08:00 in November
        ("UTC", '"2026/11/27 09:00"'),
    ],
)
def test_jql_literal_is_in_the_users_zone_floored_to_the_minute(zone: str, literal: str) -> None:
    assert jql_literal(T0 + timedelta(seconds=59, microseconds=999), ZoneInfo(zone)) == literal


def test_jql_literal_across_a_dst_change_uses_the_offset_of_that_instant() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert jql_literal(datetime(2026, 3, 29, 0, 59, tzinfo=UTC), berlin) == '"2026/03/29 01:59"'  # CET
    assert jql_literal(datetime(2026, 3, 29, 1, 0, tzinfo=UTC), berlin) == '"2026/03/29 03:00"'  # CEST


def test_unknown_zone_names_are_none() -> None:
    assert user_zone("Mars/Olympus_Mons") is None and user_zone(None) is None and user_zone("../etc") is None
    assert user_zone("Asia/Kolkata") == ZoneInfo("Asia/Kolkata")


@pytest.mark.parametrize(
    ("key", "category"),
    [
        ("new", StatusCategory.NEW),
        ("indeterminate", StatusCategory.IN_PROGRESS),
        ("done", StatusCategory.DONE),
        ("undefined", StatusCategory.NEW),
    ],
)
def test_status_category_by_key(key: str, category: StatusCategory) -> None:
    issue = make_issue("1", "OPS-1", updated=T0)
    issue["fields"]["status"]["statusCategory"]["key"] = key
    issue["fields"]["status"]["name"] = "Done"  # the name never decides
    ticket = issue_to_ticket(issue, base_url="", field_names={})
    assert ticket.status_category is category


def test_polled_issue_fills_exactly_the_jira_attributes() -> None:
    issue = make_issue("10042", "OPS-12", updated=T0, priority="Highest", priority_id="1", category="done")
    issue["fields"]["components"] = [{"id": "1", "name": "checkout"}]
    issue["fields"]["assignee"] = {"accountId": "a1", "displayName": "Dana Oncall"}
    ticket = issue_to_ticket(issue, base_url="https://jira.example.com/", field_names={})

    assert set(ticket.attributes) == SOURCE_ATTRIBUTES["jira"]
    assert ticket.attributes == {
        "project": "OPS",
        "project_name": "OPS project",
        "issue_type": "Incident",
        "components": ["checkout"],
        "resolution": "Done",
        "status_id": "10003",
        "priority_id": "1",
        "reporter": "Sam Support",
    }
    assert ticket.url == "https://jira.example.com/browse/OPS-12"
    assert (ticket.assignee, ticket.requester, ticket.created) == ("Dana Oncall", "Sam Support", T0)
    assert ticket.raw["key"] == "OPS-12"


def test_unknown_attributes_are_none() -> None:
    issue = {"id": "1", "key": "X-1", "fields": {"updated": "2026-09-27T10:03:11.123+0200"}}
    ticket = issue_to_ticket(issue, base_url="", field_names={})
    assert set(ticket.attributes) == SOURCE_ATTRIBUTES["jira"]
    assert ticket.attributes["project"] is None and ticket.attributes["components"] == []
    assert ticket.url is None and ticket.status_category is StatusCategory.NEW
