"""Only http(s) URLs become a ticket's link: a signed Jira webhook whose ``issue.self`` says ``javascript:…`` (with
``TICKETPAGER_JIRA__URL`` unset, the ticket's URL is built from it) pages without ``client_url`` or links, and the
console shows no link, not even from a snapshot stored before this check (real app, store, rules, delivery to a
mock PagerDuty that checks every event against the Events API v2 spec)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from kernel import jsonutil
from kernel.clock import FakeClock
from kernel.model import web_url
from sync.schema import tickets
from tests.fakes.pagerduty_server import MockPagerDuty, validate_event
from tests.harness import make_service
from tests.test_console import CONSOLE, login
from tests.test_jira_pipeline import PLATFORM_KEY, SECRET, p1_created, post
from ticketpager.app import build_app
from ticketpager.service import Service

#: the rule links the ticket's URL, as rules/examples do: a bad URL must not reach PagerDuty that way either
RULES = """
version: 1
rules:
  - name: ops-p1
    source: jira
    when: {project: OPS, priority: [Highest, P1]}
    trigger:
      routing_key: ${PD_PLATFORM_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
      links: [{href: "{{ ticket.url }}", text: Open in Jira}]
"""
#: ``issue.self`` values a Jira user cannot set but a forged or compromised Jira could sign: none is a web URL
NOT_WEB = [
    "javascript:alert(1)//x/rest/api/2/issue/10042",
    "JavaScript:alert(document.cookie)//x/rest/api/2/issue/10042",
    "data:text/html,<script>alert(1)</script>//x/rest/api/2/issue/10042",
    "https:alert(1)/rest/api/2/issue/10042",
]


@pytest.fixture
def service(tmp_path: Path, pd: MockPagerDuty, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("PD_PLATFORM_KEY", PLATFORM_KEY)
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    svc = make_service(
        f"sqlite:///{tmp_path / 'tp.db'}",
        rules,
        pd.url,
        FakeClock(),
        jira={"enabled": True, "webhook_secrets": [SECRET]},  # no url: the ticket's comes from issue.self
        console=CONSOLE,
    )
    svc.writer.start()
    try:
        yield svc
    finally:
        svc.writer.stop()
        svc.store.dispose()


def webhook(self_url: str) -> bytes:
    data: dict[str, Any] = json.loads(p1_created())
    data["issue"]["self"] = self_url
    return json.dumps(data).encode()


def deliver(service: Service, pd: MockPagerDuty, self_url: str) -> tuple[dict[str, Any], str]:
    """Deliver OPS-12 with ``self_url`` as its ``issue.self``: the PagerDuty event it made and its console page."""
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as client:
        assert post(client, webhook(self_url), "d-1").status_code == 202
        service.process_all()
        login(client)
        timeline = client.get("/console/tickets/jira/10042")
    assert timeline.status_code == 200
    [event] = pd.events
    assert validate_event(event) == [], "PagerDuty's own schema"
    return event, timeline.text


@pytest.mark.parametrize("self_url", NOT_WEB)
def test_a_ticket_url_that_is_not_http_is_no_link_anywhere(service: Service, pd: MockPagerDuty, self_url: str) -> None:
    event, timeline = deliver(service, pd, self_url)
    assert event["event_action"] == "trigger" and event["payload"]["summary"].startswith("[OPS-12]")
    assert "client_url" not in event and "links" not in event
    assert event["payload"]["custom_details"]["url"] is None
    assert "open in jira" not in timeline
    assert self_url.split("//")[0] not in timeline.split("</header>")[-1], "not even as text of the timeline"


def test_an_https_ticket_url_is_linked(service: Service, pd: MockPagerDuty) -> None:
    event, timeline = deliver(service, pd, "https://acme.atlassian.net/rest/api/2/issue/10042")
    assert event["client_url"] == "https://acme.atlassian.net/browse/OPS-12"
    assert event["links"] == [{"href": "https://acme.atlassian.net/browse/OPS-12", "text": "Open in Jira"}]
    assert '<a href="https://acme.atlassian.net/browse/OPS-12" rel="noreferrer">open in jira</a>' in timeline


def test_a_snapshot_stored_before_the_check_shows_no_link(service: Service, pd: MockPagerDuty) -> None:
    """A ticket stored by an older ticketpager kept its ``javascript:`` URL in its snapshot: the page still shows
    no link."""
    deliver(service, pd, "https://acme.atlassian.net/rest/api/2/issue/10042")
    with service.store.begin() as conn:
        row = conn.execute(tickets.select()).mappings().one()
        snapshot = jsonutil.loads(row["snapshot"]) | {"url": NOT_WEB[0]}
        conn.execute(update(tickets).values(snapshot=jsonutil.dumps(snapshot)))
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as client:
        login(client)
        timeline = client.get("/console/tickets/jira/10042").text
    assert "open in jira" not in timeline and "javascript:" not in timeline


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("https://acme.atlassian.net/browse/OPS-1", True),
        ("HTTP://intranet.example/ticket/1", True),
        ("javascript:alert(1)//x", False),
        (" javascript:alert(1)", False),
        ("data:text/html,hi", False),
        ("https:evil.example", False),
        ("https:///path-only", False),
        ("https://[::1/", False),
        ("/browse/OPS-1", False),
        (None, False),
    ],
)
def test_web_url_keeps_absolute_http_urls_only(value: str | None, kept: bool) -> None:
    assert web_url(value) == (value if kept else None)
