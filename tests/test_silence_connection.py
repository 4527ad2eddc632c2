"""Silences match on ``connection`` (issue 18, with issue 17's named connections): a silence on one client's
Zendesk holds that connection's ticket, not the ticket with the same id on the default Zendesk. The name is
checked against the configured connections as a rule's ``connection:`` condition is, by ``silence add``
(TICKETPAGER_CONNECTIONS_FILE) and by the console's form. SQLite and PostgreSQL."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from kernel.fields import declare_connections
from rules.silence_match import MatcherErrors, parse_match
from sync.repos.silences import add_silence
from tests.factories import ROUTING_KEY, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from tests.test_console import CONSOLE, csrf, login
from ticketpager import cli, silence_cli
from ticketpager.app import build_app
from ticketpager.exitcodes import EXIT_OK, EXIT_USAGE
from ticketpager.service import Service

CONNECTIONS = """\
connections:
  - name: acme-zendesk
    system: zendesk
    subdomain: acme
"""

RULES = """\
version: 1
rules:
  - name: zendesk-urgent
    source: zendesk
    when:
      priority: urgent
    trigger:
      routing_key: ${PD_PLATFORM_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
"""


@pytest.fixture(autouse=True)
def _forget_connections() -> Iterator[None]:
    yield
    declare_connections({})  # later tests know only the default connections


@pytest.fixture
def connections_file(tmp_path: Path) -> Path:
    path = tmp_path / "connections.yaml"
    path.write_text(CONNECTIONS)
    return path


@pytest.fixture
def service(
    db_url: str, tmp_path: Path, pd: MockPagerDuty, clock: FakeClock, connections_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Service]:  # fmt: skip
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "zendesk.yaml").write_text(RULES)
    svc = make_service(db_url, rules, pd.url, clock, console=CONSOLE, connections_file=str(connections_file))
    yield svc
    svc.store.dispose()


def zendesk(connection: str = "") -> object:
    """Ticket 7, urgent, of the default Zendesk or of ``connection``."""
    extra = {"connection": connection} if connection else {}
    return change(ticket("7", source="zendesk", key="7", priority="urgent", attributes={}, **extra))


def triggers(pd: MockPagerDuty) -> list[str]:
    return [e["dedup_key"] for e in pd.events if e["event_action"] == "trigger"]


def outcome(svc: Service, connection: str) -> tuple[str, dict[str, object]]:
    with svc.store.engine.connect() as conn:
        from sync.repos import console as q

        row = q.decisions_of(conn, "zendesk", connection, "7")[0]
    return row["outcome"], json.loads(row["detail"])


def test_a_silence_on_a_connection_holds_its_ticket_not_the_same_id_on_the_default_one(
    service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    matchers = parse_match(["connection=acme-zendesk"])
    with service.store.begin() as conn:
        held = add_silence(conn, matchers, clock.now(), clock.now() + timedelta(hours=2), "ACME cut-over", "alice",
                           clock.now())  # fmt: skip
    receive(service, [zendesk("acme-zendesk"), zendesk()])
    service.process_all()
    assert triggers(pd) == ["ticketpager/zendesk/7/zendesk-urgent/1"], "the default Zendesk's ticket 7 pages"
    verdict, detail = outcome(service, "acme-zendesk")
    assert verdict == "silenced" and detail["silenced"][0]["why"].startswith(f"silenced by #{held.id} until ")  # type: ignore[index]
    assert outcome(service, "zendesk")[0] == "paged"
    clock.advance(3 * 3600)  # the silence ends: acme's ticket, still urgent, pages once
    service.process_all()
    service.process_all()
    assert triggers(pd) == [
        "ticketpager/zendesk/7/zendesk-urgent/1",
        "ticketpager/zendesk/acme-zendesk/7/zendesk-urgent/1",
    ]


def test_a_list_of_connections_holds_each_of_them(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    matchers = parse_match(["connection in [acme-zendesk, zendesk]"])
    with service.store.begin() as conn:
        add_silence(conn, matchers, clock.now(), clock.now() + timedelta(hours=2), "both", "alice", clock.now())
    receive(service, [zendesk("acme-zendesk"), zendesk()])
    service.process_all()
    assert pd.events == []
    assert outcome(service, "acme-zendesk")[0] == outcome(service, "zendesk")[0] == "silenced"


def test_a_connection_is_checked_against_the_configured_ones_and_their_system(service: Service) -> None:
    with pytest.raises(MatcherErrors) as unknown:
        parse_match(["connection=acme-zendes"])
    assert "unknown connection 'acme-zendes' (did you mean 'acme-zendesk'?)" in str(unknown.value)
    with pytest.raises(MatcherErrors) as other_system:
        parse_match(["source=jira", "connection=acme-zendesk"])
    assert "unknown connection 'acme-zendesk' (use jira)" in str(other_system.value)
    with pytest.raises(MatcherErrors) as vocabulary:  # a Zendesk connection: Zendesk's priorities
        parse_match(["connection=acme-zendesk", "priority=Urgent"])
    assert "Zendesk priorities are lowercase: did you mean 'urgent'?" in str(vocabulary.value)


def test_silence_add_knows_the_connections_file(
    service: Service, db_url: str, connections_file: Path, clock: FakeClock,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(silence_cli, "CLOCK", clock)
    argv = ["silence", "add", "--match", "connection=acme-zendesk", "--duration", "2h", "--comment", "ACME",
            "--author", "alice", "--json", "--database-url", db_url]  # fmt: skip
    declare_connections({})  # a new process: only the default connections, until the file is read
    monkeypatch.delenv("TICKETPAGER_CONNECTIONS_FILE", raising=False)
    assert cli.main(argv) == EXIT_USAGE
    assert "unknown connection 'acme-zendesk'" in capsys.readouterr().err
    monkeypatch.setenv("TICKETPAGER_CONNECTIONS_FILE", str(connections_file))
    assert cli.main(argv) == EXIT_OK, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["matchers"] == {"connection": {"equals": "acme-zendesk"}}


def test_the_console_form_checks_the_connection_and_the_silence_holds(
    service: Service, pd: MockPagerDuty
) -> None:
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as client:
        login(client)

        def add(matchers: str) -> object:
            page = client.get("/console/silences")
            fields = {"matchers": matchers, "duration": "2h", "comment": "ACME cut-over"}
            return client.post("/console/silences", data={"csrf": csrf(page.text), **fields})

        refused = add("connection=acme-zendes")
        assert refused.status_code == 400  # type: ignore[attr-defined]
        assert "did you mean 'acme-zendesk'?" in html.unescape(refused.text)  # type: ignore[attr-defined]
        added = add("connection=acme-zendesk")
        assert added.status_code == 303  # type: ignore[attr-defined]
    receive(service, [zendesk("acme-zendesk"), zendesk()])
    service.process_all()
    assert triggers(pd) == ["ticketpager/zendesk/7/zendesk-urgent/1"]
