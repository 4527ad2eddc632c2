"""The console's Silences page (Starlette's test client, SQLite and PostgreSQL): add a silence from a form whose
matchers the rules language checks (its messages shown next to the form, never a 500), see a matching ticket
not page and its timeline say why, expire it with a confirmation and see the ticket page once; CSRF and the full
role on both actions; each action and its audit entry commit together (also a dead-letter retry)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.schema import audit_log, outbox, silences
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from tests.test_console import CONSOLE, READONLY, csrf, login, seed
from ticketpager.app import build_app
from ticketpager.service import Service


@pytest.fixture
def service(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(db_url, rules_path, pd.url, clock, console=CONSOLE)
    yield svc
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as c:
        yield c


def triggers(pd: MockPagerDuty) -> list[str]:
    return [e["dedup_key"] for e in pd.events if e["event_action"] == "trigger"]


def count(service: Service, table: object) -> int:
    with service.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def add(client: TestClient, **fields: str) -> object:
    page = client.get("/console/silences")
    return client.post("/console/silences", data={"csrf": csrf(page.text), **fields})


def test_a_silence_from_the_console_holds_a_page_until_it_is_expired(
    client: TestClient, service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    login(client)
    added = add(client, matchers="project=OPS\ntitle=~(?i)acme", duration="2h", comment="ACME migration tonight")
    assert added.status_code == 303, getattr(added, "text", "")
    listing = client.get(added.headers["location"])
    shown = html.unescape(listing.text)
    assert "Silence #1 added" in shown
    assert "project: {equals: OPS}" in shown and "title: {regex: (?i)acme}" in shown
    assert "ACME migration tonight" in shown and "token" in shown and "active" in shown

    receive(service, [change(ticket("7", title="ACME db migration failing"))])
    receive(service, [change(ticket("8", title="Checkout is down"))])
    service.process_all()
    assert triggers(pd) == ["ticketpager/jira/8/ops-highest/1"], "OPS-8 pages, OPS-7 is held"
    timeline = html.unescape(client.get("/console/tickets/jira/7").text)
    assert "silenced by #1" in timeline and "This ticket never paged." in timeline

    confirm = client.get("/console/silences/1/expire")
    assert "Expire silence #1?" in confirm.text and "Yes, expire" in confirm.text
    assert client.post("/console/silences/1/expire", data={}).status_code == 403, "no CSRF token, no expiry"
    done = client.post("/console/silences/1/expire", data={"csrf": csrf(confirm.text)})
    assert done.status_code == 303
    assert "Silence #1 expired" in client.get(done.headers["location"]).text
    clock.advance(1)
    service.process_all()  # the engine's release pass (serve's scheduler runs it)
    service.process_all()
    assert triggers(pd) == ["ticketpager/jira/8/ops-highest/1", "ticketpager/jira/7/ops-highest/1"], "OPS-7 pages once"
    assert "silence #1 ended" in html.unescape(client.get("/console/tickets/jira/7").text)
    assert client.post("/console/silences/1/expire", data={"csrf": csrf(confirm.text)}).status_code == 409
    assert client.get("/console/silences/99/expire").status_code == 404

    with service.store.engine.connect() as conn:
        entries = conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings().all()
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("token", "silence.add", "silence:1"),
        ("token", "silence.expire", "silence:1"),
    ]
    audit_page = client.get("/console/audit").text
    assert "silence.add" in audit_page and "silence.expire" in audit_page


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"matchers": "projectt=OPS", "duration": "2h"}, "unknown field 'projectt' (did you mean 'project'?)"),
        ({"matchers": "priority in P1", "duration": "2h"}, "'in' takes a list in brackets"),
        ({"matchers": "older_than: 1h", "duration": "2h"}, "a silence matches what a ticket is, not when"),
        ({"matchers": "", "duration": "2h"}, "give at least one matcher"),
        ({"matchers": "project=OPS", "duration": "soon"}, "soon"),
        ({"matchers": "project=OPS", "duration": "2h", "ends": "2026-12-01T10:00"}, "not both"),
        ({"matchers": "project=OPS", "ends": "2020-01-01T10:00"}, "is in the past"),
        ({"matchers": "project=OPS", "ends": "tomorrow"}, "not a time"),
    ],
)
def test_a_bad_silence_is_refused_with_the_reason_next_to_the_form(
    client: TestClient, service: Service, fields: dict[str, str], message: str
) -> None:
    login(client)
    answer = add(client, comment="maintenance", **fields)
    assert answer.status_code == 400
    shown = html.unescape(answer.text)
    assert "The silence was not added" in shown and message in shown
    assert 'aria-invalid="true"' in answer.text
    assert html.escape(fields["matchers"]) in answer.text, "what was typed is kept"
    assert count(service, silences) == 0 and count(service, audit_log) == 0


def test_a_silence_needs_a_comment(client: TestClient, service: Service) -> None:
    login(client)
    answer = add(client, matchers="project=OPS", duration="1h", comment="  ")
    assert answer.status_code == 400 and "say why" in answer.text
    assert count(service, silences) == 0


def test_read_only_sees_silences_but_cannot_add_or_expire(client: TestClient, service: Service) -> None:
    login(client)
    assert add(client, matchers="project=OPS", duration="1h", comment="window").status_code == 303
    client.cookies.clear()
    login(client, READONLY)
    listing = client.get("/console/silences")
    assert listing.status_code == 200 and "window" in listing.text
    assert "Add a silence" not in listing.text and "Expire…" not in listing.text
    token = csrf(listing.text)  # the log-out form's
    fields = {"csrf": token, "matchers": "project=OPS", "duration": "1h", "comment": "x"}
    assert client.post("/console/silences", data=fields).status_code == 403
    assert client.get("/console/silences/1/expire").status_code == 403
    assert client.post("/console/silences/1/expire", data={"csrf": token}).status_code == 403
    assert count(service, silences) == 1 and count(service, audit_log) == 1


def test_recently_ended_silences_stay_listed_for_a_week(client: TestClient, clock: FakeClock) -> None:
    login(client)
    add(client, matchers="project=OPS", duration="1h", comment="short window")
    clock.advance(2 * 3600)
    listing = client.get("/console/silences").text
    assert "short window" in listing and "silence-expired" in listing and "Expire…" not in listing
    clock.advance(8 * 86400)
    assert "short window" not in client.get("/console/silences").text


def break_audit_log(service: Service) -> None:
    """The audit log cannot be written any more (its table renamed away), as a failing disk would do."""
    with service.store.begin() as conn:
        conn.execute(text("ALTER TABLE audit_log RENAME TO audit_log_gone"))


def test_no_silence_without_its_audit_entry(service: Service) -> None:
    with TestClient(build_app(service), follow_redirects=False, raise_server_exceptions=False) as client:
        login(client)
        page = client.get("/console/silences")
        break_audit_log(service)
        fields = {"csrf": csrf(page.text), "matchers": "project=OPS", "duration": "1h", "comment": "x"}
        assert client.post("/console/silences", data=fields).status_code == 500
    assert count(service, silences) == 0, "the silence was rolled back with its audit entry"


def test_no_expiry_without_its_audit_entry(service: Service, clock: FakeClock) -> None:
    with TestClient(build_app(service), follow_redirects=False, raise_server_exceptions=False) as client:
        login(client)
        add(client, matchers="project=OPS", duration="1h", comment="x")
        confirm = client.get("/console/silences/1/expire")
        break_audit_log(service)
        assert client.post("/console/silences/1/expire", data={"csrf": csrf(confirm.text)}).status_code == 500
    with service.store.engine.connect() as conn:
        assert conn.execute(select(silences.c.expired_at)).scalar_one() is None, "still active"


def test_no_dead_letter_retry_without_its_audit_entry(service: Service, pd: MockPagerDuty) -> None:
    seed(service, pd)
    with TestClient(build_app(service), follow_redirects=False, raise_server_exceptions=False) as client:
        login(client)
        listing = client.get("/console/deadletters")
        found = re.search(r"/deadletters/retry\?id=(\d+)", listing.text)
        assert found
        break_audit_log(service)
        answer = client.post("/console/deadletters/retry", data={"id": found.group(1), "csrf": csrf(listing.text)})
        assert answer.status_code == 500
    with service.store.engine.connect() as conn:
        dead = conn.execute(select(func.count()).select_from(outbox).where(outbox.c.status == "dead")).scalar()
    assert dead == 1, "the retry was rolled back with its audit entry"
