"""Jira polling against the real ``jira`` client with HTTP mocked by ``responses``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses
from pydantic import SecretStr

from connectors.jira import JiraConnector, JiraCursor
from kernel.clock import FakeClock
from kernel.errors import ConfigError, PermanentError
from kernel.model import Origin
from kernel.retry import RetryPolicy
from tests.fakes.jira_server import make_issue, search
from ticketpager.settings import JiraSettings

FIXTURES = Path(__file__).parent / "fixtures" / "jira"
BASE = "https://acme.atlassian.net"
API = f"{BASE}/rest/api/2"
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
TOKEN = "tok-SUPER-SECRET-42"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def make_settings(**overrides: Any) -> JiraSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "url": BASE,
        "email": "ticketpager-bot@acme.example",
        "api_token": SecretStr(TOKEN),
        "jql": "project = OPS",
        "page_size": 2,
        "overlap_seconds": 300.0,
    }
    values.update(overrides)
    return JiraSettings(**values)


def make_connector(clock: FakeClock | None = None, **overrides: Any) -> JiraConnector:
    return JiraConnector(
        make_settings(**overrides),
        clock=clock or FakeClock(T0),
        session=requests.Session(),
        retry=RetryPolicy(max_attempts=3),
    )


def query(request: Any) -> dict[str, list[str]]:
    return parse_qs(urlparse(request.url).query)


def mock_lookups(rsps: responses.RequestsMock, *, cloud: bool = True, time_zone: str = "Asia/Kolkata") -> None:
    info = fixture("server_info_cloud.json" if cloud else "server_info_dc.json")
    rsps.get(f"{API}/serverInfo", json=info)
    me = fixture("myself_kolkata.json")
    me["timeZone"] = time_zone
    rsps.get(f"{API}/myself", json=me)
    rsps.get(f"{API}/field", json=fixture("fields.json"))


def cloud_search(issues: Callable[[], list[dict[str, Any]]], time_zone: str = "Asia/Kolkata") -> Callable[..., Any]:
    """A /search/jql callback: filters like Jira, pages by an opaque nextPageToken, no total."""

    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        q = query(request)
        found = search(issues(), q["jql"][0], time_zone)
        start = int(q["nextPageToken"][0][len("tok-") :]) if "nextPageToken" in q else 0
        size = int(q["maxResults"][0])
        body: dict[str, Any] = {"issues": found[start : start + size], "isLast": start + size >= len(found)}
        if start + size < len(found):
            body["nextPageToken"] = f"tok-{start + size}"
        return 200, {}, json.dumps(body)

    return callback


def dc_search(issues: Callable[[], list[dict[str, Any]]], time_zone: str = "Asia/Kolkata") -> Callable[..., Any]:
    """A Data Center /search callback: startAt / maxResults / total."""

    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        q = query(request)
        found = search(issues(), q["jql"][0], time_zone)
        start, size = int(q["startAt"][0]), int(q["maxResults"][0])
        body = {"startAt": start, "maxResults": size, "total": len(found), "issues": found[start : start + size]}
        return 200, {}, json.dumps(body)

    return callback


def five_issues(start: datetime = T0) -> list[dict[str, Any]]:
    return [make_issue(str(10001 + n), f"OPS-{n + 1}", updated=start + timedelta(minutes=n)) for n in range(5)]


def cursor_at(when: datetime) -> dict[str, Any]:
    return JiraCursor(when).to_json()


# -- Cloud ------------------------------------------------------------------------------------------------
def test_cloud_pages_through_search_jql_with_next_page_token_and_never_calls_old_search(
    rsps: responses.RequestsMock,
) -> None:
    mock_lookups(rsps, cloud=True)
    issues = five_issues()
    jql = rsps.add_callback("GET", f"{API}/search/jql", callback=cloud_search(lambda: issues))
    old_v2 = rsps.get(f"{API}/search", status=410, json={"errorMessages": ["CHANGE-2046"]})
    old_v3 = rsps.get(f"{BASE}/rest/api/3/search", status=410, json={"errorMessages": ["CHANGE-2046"]})

    pages = list(make_connector().poll(cursor_at(T0)))

    assert [len(p.changes) for p in pages] == [2, 2, 1]
    assert [c.ticket.key for p in pages for c in p.changes] == ["OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"]
    assert old_v2.call_count == 0 and old_v3.call_count == 0
    searches = [query(c.request) for c in rsps.calls if urlparse(str(c.request.url)).path.endswith("/search/jql")]
    assert jql.call_count == 3
    assert "nextPageToken" not in searches[0]
    assert [s["nextPageToken"][0] for s in searches[1:]] == ["tok-2", "tok-4"]
    for s in searches:  # explicit fields: /search/jql returns only ids otherwise
        assert {"summary", "status", "priority", "updated", "labels"} <= set(s["fields"])
    # each page's cursor resumes after exactly what that page carried
    assert JiraCursor.from_json(pages[0].cursor).watermark == T0 + timedelta(minutes=1)
    assert JiraCursor.from_json(pages[-1].cursor).watermark == T0 + timedelta(minutes=4)
    change = pages[0].changes[0]
    assert change.origin is Origin.POLL and change.changes is None
    assert change.delivery_id == f"poll:10001:{T0.isoformat()}"


def test_api_user_in_plus_0530_gets_the_jql_literal_in_their_zone(rsps: responses.RequestsMock) -> None:
    mock_lookups(rsps, cloud=True, time_zone="Asia/Kolkata")
    call = rsps.get(f"{API}/search/jql", json={"issues": [], "isLast": True})

    # watermark 09:00:30 UTC − 5 min overlap = 08:55:30 UTC = 14:25:30 IST → floored to the minute
    list(make_connector().poll(cursor_at(T0 + timedelta(seconds=30))))

    sent = query(call.calls[0].request)["jql"][0]
    assert sent == '(project = OPS) AND updated >= "2026/11/27 14:25" ORDER BY updated ASC, key ASC'


def test_an_issue_just_inside_the_window_in_ist_is_found_and_one_outside_is_not(
    rsps: responses.RequestsMock,
) -> None:
    """The literal means what Jira thinks it means: an issue updated 4 minutes before the watermark is
    found; had we sent the UTC wall clock to an IST user, the window would have started 5h30 later."""
    mock_lookups(rsps, cloud=True, time_zone="Asia/Kolkata")
    issues = [
        make_issue("1", "OPS-1", updated=T0 - timedelta(minutes=4)),
        make_issue("2", "OPS-2", updated=T0 - timedelta(minutes=30)),
    ]
    rsps.add_callback("GET", f"{API}/search/jql", callback=cloud_search(lambda: issues, "Asia/Kolkata"))

    pages = list(make_connector().poll(cursor_at(T0)))

    assert [c.ticket.key for p in pages for c in p.changes] == ["OPS-1"]


def test_unknown_profile_zone_widens_the_window_instead_of_skipping(rsps: responses.RequestsMock) -> None:
    mock_lookups(rsps, cloud=True, time_zone="Mars/Olympus_Mons")
    call = rsps.get(f"{API}/search/jql", json={"issues": [], "isLast": True})

    list(make_connector().poll(cursor_at(T0)))

    # 08:55 UTC − 14 h: correct whatever zone Jira reads the literal in
    assert 'updated >= "2026/11/26 18:55"' in query(call.calls[0].request)["jql"][0]


def test_401_is_permanent_with_a_clear_message_and_no_retry(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/serverInfo", status=401, json={"errorMessages": ["Client must be authenticated"]})
    clock = FakeClock(T0)

    with pytest.raises(PermanentError) as info:
        list(make_connector(clock).poll(cursor_at(T0)))

    assert "401" in str(info.value) and "TICKETPAGER_JIRA__API_TOKEN" in str(info.value)
    assert clock.sleeps == []
    assert len(rsps.calls) == 1


def test_check_reports_bad_credentials_clearly(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/serverInfo", json=fixture("server_info_cloud.json"))
    rsps.get(f"{API}/myself", status=403, json={"errorMessages": ["Forbidden"]})

    with pytest.raises(PermanentError, match="403.*permission"):
        make_connector().check()


def test_jql_with_order_by_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ORDER BY"):
        make_connector(jql="project = OPS order by created").check()


# -- Data Center ----------------------------------------------------------------------------------------
def test_datacenter_uses_search_with_start_at_inside_one_busy_minute(rsps: responses.RequestsMock) -> None:
    mock_lookups(rsps, cloud=False, time_zone="Europe/Berlin")
    same_minute = [make_issue(str(n), f"OPS-{n}", updated=T0 + timedelta(seconds=n)) for n in range(1, 6)]
    dc = rsps.add_callback("GET", f"{API}/search", callback=dc_search(lambda: same_minute, "Europe/Berlin"))
    cloud_only = rsps.get(f"{API}/search/jql", status=404)

    pages = list(make_connector().poll(cursor_at(T0 + timedelta(minutes=5))))

    assert [c.ticket.key for p in pages for c in p.changes] == ["OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"]
    assert [query(c.request)["startAt"][0] for c in dc.calls] == ["0", "2", "4"]
    assert 'updated >= "2026/11/27 10:00"' in query(dc.calls[0].request)["jql"][0]  # Berlin = UTC+1
    assert cloud_only.call_count == 0


def test_datacenter_issue_updated_during_a_poll_is_not_skipped(rsps: responses.RequestsMock) -> None:
    """Offset paging would lose OPS-3 here: OPS-1 moves to the end after page 1, everything shifts left."""
    mock_lookups(rsps, cloud=False, time_zone="UTC")
    issues = {i["key"]: i for i in five_issues()[:4]}
    served = 0

    def current() -> list[dict[str, Any]]:
        nonlocal served
        served += 1
        if served == 2:  # someone edits OPS-1 right after we read page 1
            issues["OPS-1"] = make_issue("10001", "OPS-1", updated=T0 + timedelta(minutes=10), priority="Highest")
        return list(issues.values())

    rsps.add_callback("GET", f"{API}/search", callback=dc_search(current, "UTC"))

    pages = list(make_connector().poll(cursor_at(T0)))

    seen = [(c.ticket.key, c.ticket.priority) for p in pages for c in p.changes]
    assert ("OPS-3", "Medium") in seen and ("OPS-4", "Medium") in seen
    assert ("OPS-1", "Highest") in seen
    assert len(seen) == len(set(seen))


def test_cloud_issue_updated_during_a_poll_arrives_in_the_next_cycle(rsps: responses.RequestsMock) -> None:
    mock_lookups(rsps, cloud=True, time_zone="UTC")
    issues = {i["key"]: i for i in five_issues()[:4]}
    rsps.add_callback("GET", f"{API}/search/jql", callback=cloud_search(lambda: list(issues.values()), "UTC"))
    connector = make_connector()

    first = list(connector.poll(cursor_at(T0)))
    # updated while the first cycle ran (a few seconds after the newest issue it saw)
    issues["OPS-1"] = make_issue("10001", "OPS-1", updated=T0 + timedelta(minutes=3, seconds=20), priority="Highest")
    second = list(connector.poll(json.loads(json.dumps(first[-1].cursor))))

    assert [c.ticket.key for p in first for c in p.changes] == ["OPS-1", "OPS-2", "OPS-3", "OPS-4"]
    again = [(c.ticket.key, c.ticket.priority) for p in second for c in p.changes]
    assert again == [("OPS-1", "Highest")]  # the overlap re-read of OPS-2..4 is deduped
    assert sum(p.skipped for p in second) >= 1


def test_first_poll_without_cursor_looks_back_the_configured_time(rsps: responses.RequestsMock) -> None:
    mock_lookups(rsps, cloud=True, time_zone="UTC")
    call = rsps.get(f"{API}/search/jql", json={"issues": [], "isLast": True})

    pages = list(make_connector(lookback_seconds=3600).poll(None))

    # 09:00 − 1 h look-back − 5 min overlap
    assert 'updated >= "2026/11/27 07:55"' in query(call.calls[0].request)["jql"][0]
    assert len(pages) == 1 and pages[0].changes == []


def test_start_cursor_polls_everything_since() -> None:
    cursor = make_connector().start_cursor(T0 - timedelta(days=7))
    assert JiraCursor.from_json(cursor).watermark == T0 - timedelta(days=7)


def test_explicit_deployment_skips_server_info(rsps: responses.RequestsMock) -> None:
    info = rsps.get(f"{API}/serverInfo", json=fixture("server_info_cloud.json"))
    rsps.get(f"{API}/myself", json=fixture("myself_kolkata.json"))
    rsps.get(f"{API}/field", json=fixture("fields.json"))
    dc = rsps.add_callback("GET", f"{API}/search", callback=dc_search(lambda: five_issues()[:1]))

    pages = list(make_connector(deployment="datacenter").poll(cursor_at(T0)))

    assert info.call_count == 0 and dc.call_count == 1
    assert [c.ticket.key for p in pages for c in p.changes] == ["OPS-1"]


# -- cost -----------------------------------------------------------------------------------------------
def test_polling_cost_for_1000_changed_issues_is_pages_plus_cached_lookups(rsps: responses.RequestsMock) -> None:
    mock_lookups(rsps, cloud=True, time_zone="UTC")
    batch = [make_issue(str(20000 + n), f"OPS-{n + 1}", updated=T0 + timedelta(seconds=3 * n)) for n in range(1000)]
    issues = list(batch)
    rsps.add_callback("GET", f"{API}/search/jql", callback=cloud_search(lambda: issues, "UTC"))
    connector = make_connector(page_size=100)

    first = list(connector.poll(cursor_at(T0)))
    first_calls = len(rsps.calls)
    # a second cycle: 1,000 more changes, well after the first batch and its overlap
    later = T0 + timedelta(hours=2)
    issues.extend(
        make_issue(str(30000 + n), f"OPS-{2000 + n}", updated=later + timedelta(seconds=3 * n)) for n in range(1000)
    )
    second = list(connector.poll(first[-1].cursor))

    assert sum(len(p.changes) for p in first) == 1000 and sum(len(p.changes) for p in second) == 1000
    assert first_calls == 10 + 3  # 10 pages of 100 + serverInfo, myself, field (cached afterwards)
    # steady state: pages only, no lookups. The 5-minute overlap (floored to the minute) re-reads the
    # first batch's last 6 minutes (120 issues at one per 3 s), deduped: ceil((1000 + 120) / 100) pages.
    reread = sum(p.skipped for p in second)
    assert reread == 120
    assert len(rsps.calls) - first_calls == math.ceil((1000 + reread) / 100) == 12


def test_custom_fields_are_requested_and_named(rsps: responses.RequestsMock) -> None:
    mock_lookups(rsps, cloud=True, time_zone="UTC")
    issue = make_issue("1", "OPS-1", updated=T0, custom={"customfield_10010": {"value": "Gold", "id": "10200"}})
    call = rsps.get(f"{API}/search/jql", json={"issues": [issue], "isLast": True})

    pages = list(make_connector(extra_fields=["customfield_10010"]).poll(cursor_at(T0)))

    ticket = pages[0].changes[0].ticket
    assert ticket.custom_fields["Customer Tier"] == "Gold"
    assert ticket.custom_fields["customfield_10010"] == "Gold"
    assert "customfield_10010" in query(call.calls[0].request)["fields"]
