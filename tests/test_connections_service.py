"""Named connections wired through the service (issue 17): a webhook per connection verified with that
connection's secret only, changes carrying their connection, polls with a cursor per connection, readiness
per connection, ``poll --once --connection``, and ``connection:`` in rules."""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from sqlalchemy import select
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from kernel.fields import declare_connections
from kernel.model import StatusCategory, Ticket, TicketChange
from rules import EvalContext, RuleFileErrors, load_rules
from sync.repos.cursors import load_cursor
from sync.schema import changes
from tests.harness import make_service
from tests.test_zendesk_poll import page
from tests.test_zendesk_poll import ticket as zendesk_ticket
from ticketpager import cli
from ticketpager.app import build_app
from ticketpager.service import Service

MAIN_SECRET = "jira-main-webhook-secret-01"
ENG_SECRET = "jira-eng-webhook-secret-002"
FIXTURES = Path(__file__).parent / "fixtures" / "jira"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CONNECTIONS = """\
connections:
  - name: eng-jira
    system: jira
    url: https://eng.atlassian.net
    webhook_secrets:
      - ${ENG_JIRA_WEBHOOK}
  - name: globex-zendesk
    system: zendesk
    subdomain: globex
    email: api@globex.example
    api_token: ${GLOBEX_ZD_TOKEN}
"""


@pytest.fixture(autouse=True)
def _forget_connections() -> Iterator[None]:
    yield
    declare_connections({})  # rule validation of later tests knows only the default connections


@pytest.fixture
def service(db_url: str, rules_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("ENG_JIRA_WEBHOOK", ENG_SECRET)
    monkeypatch.setenv("GLOBEX_ZD_TOKEN", "globex-token-4242")
    (tmp_path / "connections.yaml").write_text(CONNECTIONS)
    svc = make_service(
        db_url,
        rules_path,
        "http://127.0.0.1:9/v2/enqueue",
        FakeClock(NOW),
        connections_file=str(tmp_path / "connections.yaml"),
        jira={"webhook_secrets": [MAIN_SECRET]},
        zendesk={"enabled": True, "subdomain": "acme", "email": "api@acme.example", "api_token": "acme-token-1"},
    )
    svc.writer.start()
    yield svc
    svc.writer.stop()
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(build_app(service)) as c:
        yield c


def jira_body(issue_id: str) -> bytes:
    payload = json.loads((FIXTURES / "webhook_issue_updated_done.json").read_text())
    payload["issue"]["id"] = issue_id
    return json.dumps(payload).encode()


def post(client: TestClient, path: str, body: bytes, secret: str, delivery: str) -> Any:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature": signature, "X-Atlassian-Webhook-Identifier": delivery}
    return client.post(path, content=body, headers=headers)


def stored_changes(service: Service) -> list[TicketChange]:
    with service.store.engine.connect() as conn:
        rows = conn.execute(select(changes.c.payload).order_by(changes.c.id)).scalars().all()
    return [TicketChange.from_json(json.loads(row) if isinstance(row, str | bytes) else row) for row in rows]


def test_a_webhook_is_verified_with_its_own_connections_secret_only(client: TestClient, service: Service) -> None:
    body = jira_body("20001")
    other = post(client, "/webhooks/jira/eng-jira", body, MAIN_SECRET, "d-1")
    assert other.status_code == 401, "the default connection's secret must not verify eng-jira's webhook"
    back = post(client, "/webhooks/jira", jira_body("20002"), ENG_SECRET, "d-2")
    assert back.status_code == 401, "eng-jira's secret must not verify the default connection's webhook"
    assert stored_changes(service) == []

    assert post(client, "/webhooks/jira/eng-jira", body, ENG_SECRET, "d-3").status_code == 202
    assert post(client, "/webhooks/jira", jira_body("20004"), MAIN_SECRET, "d-4").status_code == 202
    assert [(c.ticket.id, c.connection) for c in stored_changes(service)] == [("20001", "eng-jira"), ("20004", "jira")]


def test_a_connection_belongs_to_one_system(client: TestClient) -> None:
    response = post(client, "/webhooks/zendesk/eng-jira", jira_body("1"), ENG_SECRET, "d-5")
    assert response.status_code == 404 and response.json() == {"error": "unknown zendesk connection 'eng-jira'"}


def test_a_connection_without_a_webhook_secret_says_where_to_set_it(client: TestClient) -> None:
    body = b'{"ticket": {}}'
    response = client.post("/webhooks/zendesk/globex-zendesk", content=body)
    assert response.status_code == 401
    assert "webhook_secrets of connection 'globex-zendesk' in the connections file" in response.json()["error"]


GLOBEX_EXPORT = "https://globex.zendesk.com/api/v2/incremental/tickets/cursor.json"
ACME_EXPORT = "https://acme.zendesk.com/api/v2/incremental/tickets/cursor.json"


@responses.activate
def test_each_connection_polls_with_its_own_cursor_and_fails_alone(service: Service) -> None:
    responses.get(GLOBEX_EXPORT, json={"error": "Couldn't authenticate you"}, status=401)
    responses.get(ACME_EXPORT, json=page([zendesk_ticket(31)], "A1", True))
    assert service.pollable_sources() == ["zendesk", "globex-zendesk"]

    acme = service.poll_source("zendesk")
    globex = service.poll_source("globex-zendesk")
    assert acme.error is None and acme.stored == 1
    assert globex.error is not None and globex.error_kind == "permanent"
    with service.store.begin() as conn:
        assert load_cursor(conn, "zendesk") == {"after_cursor": "A1", "start_time": None}  # today's key
        assert load_cursor(conn, "globex-zendesk") is None
    assert [(c.ticket.id, c.connection) for c in stored_changes(service)] == [("31", "zendesk")]

    ready = service.readiness(detail=False)
    assert ready["connections"] == {
        "zendesk": {"system": "zendesk", "state": "ok"},
        "globex-zendesk": {"system": "zendesk", "state": "degraded"},
    }
    assert list(ready["sources"]["permanent_errors"]) == ["globex-zendesk"]
    assert ready["degraded"] is True and ready["ready"] is True  # one client's token never takes the others down


@responses.activate
def test_tickets_polled_through_a_named_connection_carry_it(service: Service) -> None:
    responses.get(GLOBEX_EXPORT, json=page([zendesk_ticket(77)], "G1", True))
    report = service.poll_source("globex-zendesk")
    assert report.error is None and report.stored == 1
    assert [(c.ticket.id, c.connection, c.ticket.source) for c in stored_changes(service)] == [
        ("77", "globex-zendesk", "zendesk")
    ]
    with service.store.begin() as conn:
        assert load_cursor(conn, "globex-zendesk") == {"after_cursor": "G1", "start_time": None}


def test_notes_go_back_only_through_default_connections_until_the_outbox_names_connections(
    service: Service,
) -> None:
    assert "globex-zendesk" not in service.write_back_sources()
    assert service.write_back_sources()["zendesk"] is True


def test_poll_once_connection_refuses_an_unknown_name(
    service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli.build_parser().parse_args(["poll", "--once", "--connection", "globex-zendsk"])
    assert cli._poll(args, service) == cli.EXIT_USAGE
    assert "no connection named 'globex-zendsk'" in capsys.readouterr().err


@responses.activate
def test_poll_once_connection_polls_that_connection_only(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    responses.get(GLOBEX_EXPORT, json=page([zendesk_ticket(78)], "G1", True))
    args = cli.build_parser().parse_args(["poll", "--once", "--connection", "globex-zendesk"])
    assert cli._poll(args, service) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "globex-zendesk: 1 page(s), 1 change(s) seen, 1 new" in err and "\nzendesk:" not in err
    assert [str(c.request.url).split("?")[0] for c in responses.calls] == [GLOBEX_EXPORT]


# -- rules: connection: as a condition, {{ ticket.connection }} in templates, validated against the connections -----
RULES = textwrap.dedent(
    """\
    version: 1
    rules:
      - name: acme-p1
        when: {connection: acme-zendesk, priority: urgent}
        trigger:
          routing_key: ${PD_KEY}
          severity: critical
          summary: "[{{ ticket.connection }}] {{ ticket.title }}"
      - name: the-others
        source: zendesk
        when: {connection: [globex-zendesk, zendesk]}
        trigger: {routing_key: "${PD_KEY}", severity: warning, summary: "{{ ticket.connection }}"}
    """
)
KEY = "R0UT1NGKEY0000000000000000000001"


def zd(connection: str) -> Ticket:
    return Ticket(
        source="zendesk",
        id="5",
        key="#5",
        title="Checkout down",
        status="new",
        status_category=StatusCategory.NEW,
        updated=NOW - timedelta(minutes=1),
        priority="urgent",
        connection=connection,
    )


def test_rules_match_on_the_connection_and_name_it_in_templates(tmp_path: Path) -> None:
    declare_connections({"acme-zendesk": "zendesk", "globex-zendesk": "zendesk", "eng-jira": "jira"})
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    ruleset = load_rules(path, env={"PD_KEY": KEY})
    results = {r.rule: r for r in ruleset.evaluate(EvalContext(zd("acme-zendesk"), None, (), NOW))}
    assert results["acme-p1"].matched and results["acme-p1"].trigger is not None
    assert results["acme-p1"].trigger.summary == "[acme-zendesk] Checkout down"
    others = {r.rule: r for r in ruleset.evaluate(EvalContext(zd("globex-zendesk"), None, (), NOW))}
    assert not others["acme-p1"].matched and others["the-others"].matched


def test_a_connection_that_does_not_exist_or_is_of_another_system_is_a_rule_file_error(tmp_path: Path) -> None:
    declare_connections({"acme-zendesk": "zendesk", "eng-jira": "jira"})
    path = tmp_path / "rules.yaml"
    path.write_text(
        RULES.replace("connection: acme-zendesk", "connection: acme-zendesc").replace("globex-zendesk", "eng-jira")
    )
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env={"PD_KEY": KEY})
    messages = [e.message for e in caught.value.errors]
    assert messages == [
        "rule 'acme-p1' → when → connection: "
        "unknown connection 'acme-zendesc' (did you mean 'acme-zendesk'?) (use jira | zendesk | servicenow | "
        "acme-zendesk | eng-jira)",
        # a rule for zendesk: zendesk's connections only
        "rule 'the-others' → when → connection: unknown connection 'eng-jira' (use zendesk | acme-zendesk)",
    ]


def test_a_rule_for_one_connection_is_checked_with_its_systems_vocabulary(tmp_path: Path) -> None:
    declare_connections({"acme-zendesk": "zendesk", "globex-zendesk": "zendesk", "eng-jira": "jira"})
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.replace("priority: urgent", "priority: Urgent"))
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env={"PD_KEY": KEY})
    assert [e.message for e in caught.value.errors] == [
        "rule 'acme-p1' → when → priority: Zendesk priorities are lowercase: did you mean 'urgent'? "
        "(or add ignore_case: true)"
    ]
    # the rule still applies to any source: only its connection decides (a jira ticket never matches it)
    path.write_text(RULES)
    ruleset = load_rules(path, env={"PD_KEY": KEY})
    assert ruleset.spec.rules[0].source == "any"


def test_a_connections_file_with_errors_stops_poll_with_its_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "connections.yaml"
    bad.write_text("connections:\n  - name: acme-zendesk\n    system: zendesk\n    subdomian: acme\n")
    monkeypatch.setenv("TICKETPAGER_CONNECTIONS_FILE", str(bad))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--database-url", f"sqlite:///{tmp_path / 'tp.db'}", "poll", "--once", "--dry-run"])
    assert exit_info.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"the connections file {bad} does not load" in err
    assert f"{bad}:4:5: connection 'acme-zendesk': unknown zendesk setting 'subdomian'" in err
    assert not (tmp_path / "tp.db").exists(), "nothing was created for a configuration that does not load"


def test_rules_check_knows_the_connections_of_the_connections_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "connections.yaml").write_text(CONNECTIONS)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("acme-zendesk", "globex-zendesk"))
    monkeypatch.setenv("PD_KEY", KEY)
    monkeypatch.setenv("ENG_JIRA_WEBHOOK", ENG_SECRET)
    monkeypatch.setenv("GLOBEX_ZD_TOKEN", "globex-token-4242")
    assert cli.main(["rules", "check", str(rules)]) == 1, "without the file, globex-zendesk is unknown"
    assert "unknown connection 'globex-zendesk'" in capsys.readouterr().err
    monkeypatch.setenv("TICKETPAGER_CONNECTIONS_FILE", str(tmp_path / "connections.yaml"))
    assert cli.main(["rules", "check", str(rules)]) == 0
