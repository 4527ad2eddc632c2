"""The ticket timeline shows each incident's PagerDuty link and its PagerDuty-side state once PagerDuty told us
(the ``incidents`` rows its webhooks and REST lookups fill, written here by their repository), "not known yet"
before; a link that is not http(s) is never made clickable. SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.repos import incidents
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from tests.test_console import CONSOLE, login
from ticketpager.app import build_app
from ticketpager.service import Service

KEY = "ticketpager/jira/1/ops-highest/1"


@pytest.fixture
def service(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(db_url, rules_path, pd.url, clock, console=CONSOLE)
    receive(svc, [change(ticket("1", title="Checkout is down"))])
    svc.process_all()
    assert [e["dedup_key"] for e in pd.events] == [KEY]
    yield svc
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as c:
        login(c)
        yield c


def incident_cell(client: TestClient) -> str:
    page = client.get("/console/tickets/jira/1")
    assert page.status_code == 200
    cell = re.search(r'<td class="pagerduty">(.*?)</td>', page.text, re.S)
    assert cell, "the incidents table has an 'In PagerDuty' cell per incident"
    return html.unescape(cell.group(1))


def test_the_incident_link_and_its_pagerduty_state_once_known(
    client: TestClient, service: Service, clock: FakeClock
) -> None:
    assert "not known yet" in incident_cell(client)
    with service.store.begin() as conn:  # what the reverse worker stores from PagerDuty's incident.triggered
        incidents.save_incident(
            conn, "Q1ABCDEF", KEY, "incident_key", clock.now(),
            number=42, html_url="https://acme.pagerduty.com/incidents/Q1ABCDEF", status="triggered",
        )  # fmt: skip
    cell = incident_cell(client)
    assert '<a href="https://acme.pagerduty.com/incidents/Q1ABCDEF" rel="noreferrer">incident #42</a>' in cell
    assert "<strong>triggered</strong>" in cell
    clock.advance(60)
    with service.store.begin() as conn:  # incident.acknowledged: the status moves, the link stays
        incidents.save_incident(conn, "Q1ABCDEF", KEY, "incident_key", clock.now(), status="acknowledged")
    cell = incident_cell(client)
    assert "<strong>acknowledged</strong>" in cell and "incident #42</a>" in cell
    assert "(as of " in cell


def test_a_link_that_is_not_http_is_shown_as_text_only(client: TestClient, service: Service, clock: FakeClock) -> None:
    with service.store.begin() as conn:
        incidents.save_incident(
            conn, "Q2", KEY, "title", clock.now(), html_url="javascript:alert(1)", status="resolved"
        )
    cell = incident_cell(client)
    assert "javascript:" not in cell and "<a " not in cell
    assert "incident Q2" in cell and "<strong>resolved</strong>" in cell
