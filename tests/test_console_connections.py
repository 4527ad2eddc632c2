"""The console tells two connections of one system apart (SQLite and PostgreSQL): the default ``jira`` connection
and a named ``eng-jira`` both store a ticket with id 7; the list shows both with their connection, each row's
link opens that ticket's own timeline (its decisions, incidents and events only), the list filters by
connection, and the playground picks a stored ticket by connection and id."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from kernel.fields import declare_connections
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from tests.test_console import CONSOLE, csrf, login
from ticketpager.app import build_app
from ticketpager.service import Service

CONNECTIONS = """\
connections:
  - name: eng-jira
    system: jira
    url: https://eng.atlassian.net
"""


@pytest.fixture(autouse=True)
def _forget_connections() -> Iterator[None]:
    yield
    declare_connections({})  # rule validation of later tests knows only the default connections


@pytest.fixture
def service(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, tmp_path: Path) -> Iterator[Service]:
    (tmp_path / "connections.yaml").write_text(CONNECTIONS)
    svc = make_service(
        db_url, rules_path, pd.url, clock, console=CONSOLE, connections_file=str(tmp_path / "connections.yaml")
    )
    # id 7 on both instances: the main one's pages (Highest), the engineering one's does not (Low)
    receive(svc, [change(ticket("7", key="OPS-7", title="Checkout is down"))])
    receive(
        svc,
        [change(ticket("7", key="ENG-7", title="Build cache cold", priority="Low", connection="eng-jira"))],
    )
    svc.process_all()
    yield svc
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as c:
        login(c)
        yield c


def rows(page: str) -> dict[str, str]:
    """Each listed ticket's link → its table row."""
    return {
        m.group(1): m.group(0)
        for m in re.finditer(r'<tr><th scope="row"><a href="/console/tickets/([^"]+)".*?</tr>', page)
    }


def test_the_list_shows_both_tickets_each_with_its_connection(client: TestClient) -> None:
    listed = rows(client.get("/console/tickets").text)
    assert set(listed) == {"jira/7", "eng-jira/7"}
    assert "OPS-7" in listed["jira/7"] and "<td>jira</td><td>jira</td>" in listed["jira/7"]
    assert "ENG-7" in listed["eng-jira/7"] and "<td>jira</td><td>eng-jira</td>" in listed["eng-jira/7"]


def test_each_link_opens_its_own_timeline(client: TestClient) -> None:
    main = html.unescape(client.get("/console/tickets/jira/7").text)
    assert "Checkout is down" in main and "Build cache cold" not in main
    assert "paged" in main and '"event_action": "trigger"' in main and "Vendor's answer: accepted" in main
    assert "ticketpager/jira/7/" in main, "the main ticket's incident"

    eng = html.unescape(client.get("/console/tickets/eng-jira/7").text)
    assert "Build cache cold" in eng and "Checkout is down" not in eng
    assert "connection <strong>eng-jira</strong>" in eng
    assert "no action" in eng and "This ticket never paged." in eng
    assert "event_action" not in eng and "Nothing was sent for this ticket." in eng, "none of the other's events"
    assert eng.count('class="entry ') == 1 and main.count('class="entry ') == 1, "one decision each"


def test_a_connection_that_stored_nothing_under_that_id_is_not_found(client: TestClient) -> None:
    assert client.get("/console/tickets/eng-jira/8").status_code == 404
    assert client.get("/console/tickets/no-such-connection/7").status_code == 404


def test_the_list_filters_by_connection(client: TestClient) -> None:
    page = client.get("/console/tickets", params={"connection": "eng-jira"}).text
    assert set(rows(page)) == {"eng-jira/7"}
    assert '<option value="eng-jira" selected>' in page, "the form keeps the chosen connection"
    assert set(rows(client.get("/console/tickets", params={"connection": "jira"}).text)) == {"jira/7"}
    assert set(rows(client.get("/console/tickets", params={"source": "jira"}).text)) == {"jira/7", "eng-jira/7"}


def test_the_playground_picks_a_stored_ticket_by_connection(client: TestClient) -> None:
    text = client.get("/console/rules").text
    assert '<option value="eng-jira">' in text
    rules = html.unescape(re.search(r'<textarea id="rules-text" name="rules"[^>]*>(.*?)</textarea>', text, re.S)[1])
    picked = client.post(
        "/console/rules/playground",
        data={"csrf": csrf(text), "rules": rules, "pick_connection": "eng-jira", "pick_id": "7"},
    )
    assert "Build cache cold" in picked.text and "Checkout is down" not in picked.text


def test_the_backtest_replays_one_connection(client: TestClient) -> None:
    text = client.get("/console/rules").text
    rules = html.unescape(re.search(r'<textarea id="rules-text" name="rules"[^>]*>(.*?)</textarea>', text, re.S)[1])
    rules = rules.replace("[Highest, P1]", "[Highest, Low]")  # both tickets would page
    shown = {}
    for connection in ("jira", "eng-jira"):
        answer = client.post(
            "/console/rules/backtest", data={"csrf": csrf(text), "rules": rules, "connection": connection, "days": "7"}
        ).text
        shown[connection] = answer[answer.index('role="status"') :]
        assert "Would have paged <strong>1</strong> tickets" in shown[connection], connection
        assert f"versions of 1 {connection} tickets" in shown[connection]
    assert "Not paged today: ENG-7" in shown["eng-jira"], "only the engineering ticket is new"
    assert "<strong>0</strong> of them not paged today" in shown["jira"] and "ENG-7" not in shown["jira"]
