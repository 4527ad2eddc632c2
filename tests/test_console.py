"""The admin console in process (Starlette's test client), on SQLite and PostgreSQL: off unless enabled, login,
CSRF, read-only role, why a ticket paged or not, dead-letter retry with audit, the playground without side
effects, the stored-ticket backtest, a path prefix behind a proxy, and no secret in any page."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from kernel.model import StatusCategory
from sync.schema import audit_log, decisions, outbox
from tests.factories import ROUTING_KEY, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager.app import build_app
from ticketpager.console.auth import hash_password
from ticketpager.service import Service

TOKEN = "console-admin-token-0123456789"
READONLY = "console-readonly-token-987654321"
PASSWORD = "correct horse battery staple"
CONSOLE = {
    "enabled": True,
    "token": TOKEN,
    "readonly_token": READONLY,
    "username": "lead",
    "password_hash": hash_password(PASSWORD, iterations=1000),
}
SECRETS = (TOKEN, READONLY, PASSWORD, ROUTING_KEY, CONSOLE["password_hash"])


@pytest.fixture
def service(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(db_url, rules_path, pd.url, clock, console=CONSOLE)
    yield svc
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as c:
        yield c


def csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the form carries a CSRF token"
    return match.group(1)


def login(client: TestClient, token: str = TOKEN) -> None:
    form = client.get("/console/login")
    answer = client.post("/console/login", data={"csrf": csrf(form.text), "token": token, "next": "/"})
    assert answer.status_code == 303, answer.text


def seed(service: Service, pd: MockPagerDuty) -> None:
    """OPS-1 pages (Highest), OPS-2 does not (Low); OPS-3's trigger is refused by PagerDuty (a dead letter)."""
    receive(service, [change(ticket("1", title="Checkout is down"))])
    receive(service, [change(ticket("2", priority="Low", title="Typo on the pricing page"))])
    service.process_all()
    pd.fail_next(1, 400)
    receive(service, [change(ticket("3", title="Payments slow"))])
    service.process_all()


def test_console_is_off_unless_enabled(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> None:
    svc = make_service(db_url, rules_path, pd.url, clock)
    try:
        with TestClient(build_app(svc)) as c:
            assert c.get("/console/").status_code == 404
    finally:
        svc.store.dispose()
    with pytest.raises(ValueError, match="needs a way to log in"):
        make_service(db_url, rules_path, pd.url, clock, console={"enabled": True})


def test_login_is_required_and_checked(client: TestClient) -> None:
    page = client.get("/console/tickets?key=OPS")
    assert page.status_code == 303 and page.headers["location"].startswith("/console/login?next=")
    form = client.get("/console/login")
    assert client.post("/console/login", data={"token": TOKEN}).status_code == 403, "login needs its CSRF token"
    wrong = client.post("/console/login", data={"csrf": csrf(form.text), "token": "nope"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    user = client.post(
        "/console/login", data={"csrf": csrf(form.text), "username": "lead", "password": PASSWORD, "next": "//evil"}
    )
    assert user.status_code == 303 and user.headers["location"] == "/console/", "no redirect off the console"
    cookie = user.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # plain http here
    assert client.get("/console/").status_code == 200
    client.cookies.set("tp_console", client.cookies["tp_console"][:-3] + "abc")  # a forged signature
    assert client.get("/console/").status_code == 303


def test_why_a_ticket_paged_and_why_another_did_not(client: TestClient, service: Service, pd: MockPagerDuty) -> None:
    seed(service, pd)
    login(client)
    found = client.get("/console/tickets", params={"key": "OPS-"})
    assert "OPS-1" in found.text and "OPS-2" in found.text
    assert "OPS-2" in client.get("/console/tickets", params={"title": "pricing"}).text
    assert "OPS-1" not in client.get("/console/tickets", params={"title": "pricing"}).text
    paged = html.unescape(client.get("/console/tickets/jira/1").text)
    assert "paged" in paged and "matched" in paged and "Vendor's answer: accepted" in paged
    assert '"event_action": "trigger"' in paged
    quiet = html.unescape(client.get("/console/tickets/jira/2").text)
    assert "no action" in quiet and "no match" in quiet and "priority" in quiet  # the explanation says which
    assert "This ticket never paged." in quiet


def test_a_pending_event_says_what_it_waits_for_until_it_is_sent(
    client: TestClient, service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """OPS-7's trigger meets a 503 and waits out its back-off; the ticket is done meanwhile, and its resolve waits
    behind the trigger (one incident's events go out in order). The ticket's page says so for each, instead of a
    bare "pending, 0 attempt(s)"; once the back-off is over both are sent, in order, and nothing waits."""
    pd.fail_next(1, 503)
    receive(service, [change(ticket("7"))])
    service.process_all()
    receive(service, [change(ticket("7", status="Done", category=StatusCategory.DONE, minutes=1))])
    service.process_all()
    assert pd.events == [], "the trigger waits out its back-off, the resolve waits behind it"
    with service.store.engine.connect() as conn:
        trigger, resolve = conn.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars().all()
        retry_at = conn.execute(select(outbox.c.next_attempt_at).where(outbox.c.id == trigger)).scalar_one()
    login(client)
    page = html.unescape(client.get("/console/tickets/jira/7").text)
    summaries = {int(m.group(1)): m.group(2) for m in re.finditer(r"<summary>#(\d+) (.*?)</summary>", page, re.S)}
    assert "pending" in summaries[trigger] and "1 attempt(s)" in summaries[trigger]
    assert f"next attempt not before {retry_at:%Y-%m-%d %H:%M:%S} UTC" in summaries[trigger]
    assert "0 attempt(s)" in summaries[resolve]
    assert f"waits for #{trigger} (event trigger)" in summaries[resolve]
    shown = page[page.index(f"<summary>#{trigger} ") :]
    assert "503" in shown[: shown.index("</details>")], "the trigger's own answer is shown with it"

    clock.advance(seconds=120)
    service.process_all()
    assert [e["event_action"] for e in pd.events] == ["trigger", "resolve"]
    page = html.unescape(client.get("/console/tickets/jira/7").text)
    assert "waits for" not in page and "next attempt" not in page


def test_decisions_stored_by_an_older_release_read_as_they_did(client: TestClient, service: Service) -> None:
    """Verdicts are stored compactly (a rule that did not match: its name and why); rows an older release wrote
    carry every flag. The timeline reads both alike."""
    receive(service, [change(ticket("2", priority="Low", title="Typo on the pricing page"))])
    service.process_all()
    login(client)
    compact = html.unescape(client.get("/console/tickets/jira/2").text)
    assert "no match" in compact and "not applicable" not in compact
    full = {"rule": "ops-highest", "matched": False, "applies": False, "why": ["source: 'zendesk' only"],
            "acknowledge": False, "resolve": True}  # fmt: skip
    detail = {"origin": "webhook", "changes": [], "verdicts": [full], "events": []}
    with service.store.begin() as conn:
        conn.execute(update(decisions).values(detail=json.dumps(detail)))
    older = html.unescape(client.get("/console/tickets/jira/2").text)
    assert "not applicable" in older and "resolve_when holds" in older and "source: 'zendesk' only" in older
    assert "no match" not in older and "acknowledge_when holds" not in older


def test_timeline_shows_what_changed_between_versions(client: TestClient, service: Service, pd: MockPagerDuty) -> None:
    seed(service, pd)
    receive(service, [change(ticket("1", status="In Progress", category=StatusCategory.IN_PROGRESS, minutes=5))])
    service.process_all()
    login(client)
    page = html.unescape(client.get("/console/tickets/jira/1").text)
    diff = page[page.index("What changed") :]
    assert re.search(r"status</th><td><del>To Do</del></td><td><ins>In Progress</ins>", diff)
    assert '"event_action": "acknowledge"' in page and "acknowledge_when holds" in page


def test_dead_letter_retry_needs_confirmation_csrf_and_the_full_role(
    client: TestClient, service: Service, pd: MockPagerDuty
) -> None:
    seed(service, pd)
    login(client, READONLY)
    listing = client.get("/console/deadletters")
    assert "OPS-3" in listing.text and "Retry…" not in listing.text, "read-only sees no retry"
    assert client.post("/console/deadletters/retry", data={"csrf": csrf(listing.text), "all": "1"}).status_code == 403
    client.cookies.clear()
    login(client)
    listing = client.get("/console/deadletters")
    dead_id = re.search(r"/deadletters/retry\?id=(\d+)", listing.text)
    assert dead_id
    confirm = client.get(f"/console/deadletters/retry?id={dead_id.group(1)}")
    assert "Yes, retry" in confirm.text and "OPS-3" in confirm.text
    refused = client.post("/console/deadletters/retry", data={"id": dead_id.group(1)})
    assert refused.status_code == 403, "no CSRF token, no retry"
    done = client.post("/console/deadletters/retry", data={"id": dead_id.group(1), "csrf": csrf(confirm.text)})
    assert done.status_code == 303
    service.process_all()
    assert [e["event_action"] for e in pd.events].count("trigger") == 2, "OPS-3 was sent this time"
    with service.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox).where(outbox.c.status == "dead")).scalar() == 0
        entry = conn.execute(select(audit_log)).mappings().one()
    assert entry["actor"] == "token" and entry["action"] == "deadletter.retry"
    assert entry["target"] == f"outbox:{dead_id.group(1)}"
    assert "deadletter.retry" in client.get("/console/audit").text


def test_playground_evaluates_without_side_effects(client: TestClient, service: Service, pd: MockPagerDuty) -> None:
    seed(service, pd)
    login(client)
    rules_page = client.get("/console/rules")
    assert "Valid: 1 rules" in rules_page.text
    with service.store.engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(outbox)).scalar()
    text = rules_page.text
    rule_text = re.search(r'<textarea id="rules-text" name="rules"[^>]*>(.*?)</textarea>', text, re.S)
    assert rule_text
    rules = html.unescape(rule_text.group(1)).replace("[Highest, P1]", "[Low]")
    answer = client.post(
        "/console/rules/playground",
        data={"csrf": csrf(text), "rules": rules, "pick_source": "jira", "pick_id": "2"},
    )
    assert answer.status_code == 200
    shown = html.unescape(answer.text)
    assert "matched" in shown and '"event_action": "trigger"' in shown
    assert "Typo on the pricing page" in answer.text
    assert ROUTING_KEY not in answer.text and "****" in answer.text
    broken = client.post("/console/rules/playground", data={"csrf": csrf(text), "rules": "version: [", "ticket": "{}"})
    assert "playground.yaml:" in broken.text
    backtest = client.post(
        "/console/rules/backtest", data={"csrf": csrf(text), "rules": rules, "source": "jira", "days": "7"}
    )
    assert "Would have paged <strong>1</strong> tickets, <strong>1</strong> of them not paged today" in backtest.text
    with service.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar() == before, "nothing was queued"


def test_behind_a_proxy_under_a_prefix(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> None:
    svc = make_service(db_url, rules_path, pd.url, clock, console={**CONSOLE, "trust_proxy_headers": True})
    headers = {"X-Forwarded-Prefix": "/ops/tp", "X-Forwarded-Proto": "https"}
    try:
        # the proxy speaks https to the browser: Secure cookies come back
        with TestClient(build_app(svc), "https://proxy.test", follow_redirects=False, headers=headers) as c:
            assert c.get("/console/").headers["location"].startswith("/ops/tp/console/login")
            form = c.get("/console/login")
            assert 'action="/ops/tp/console/login"' in form.text
            assert 'href="/ops/tp/console/static/console.css"' in form.text
            set_cookie = form.headers["set-cookie"]
            assert "Secure" in set_cookie and "Path=/ops/tp/console" in set_cookie
            # the browser sends the cookie to /ops/tp/console/…, which the proxy forwards as /console/…
            pair = set_cookie.split(";")[0]
            c.cookies.clear()
            done = c.post("/console/login", data={"csrf": csrf(form.text), "token": TOKEN}, headers={"Cookie": pair})
            assert done.headers["location"] == "/ops/tp/console/"
            assert "Secure" in done.headers["set-cookie"] and "Path=/ops/tp/console" in done.headers["set-cookie"]
    finally:
        svc.store.dispose()


def pages(client: TestClient) -> dict[str, Any]:
    shown = {}
    for path in (
        "/console/login",
        "/console/",
        "/console/tickets",
        "/console/tickets/jira/1",
        "/console/tickets/jira/3",
        "/console/deadletters",
        "/console/rules",
        "/console/silences",
        "/console/audit",
    ):
        answer = client.get(path)
        assert answer.status_code == 200, path
        shown[path] = answer
    return shown


def test_no_secret_in_any_page(client: TestClient, service: Service, pd: MockPagerDuty) -> None:
    seed(service, pd)
    login(client)
    for path, answer in pages(client).items():
        for secret in SECRETS:
            assert secret not in answer.text, f"{path} shows a secret"
        assert "script" not in answer.headers["content-security-policy"]
        assert answer.headers["cache-control"] == "no-store"


def test_pages_have_headings_and_labelled_fields(client: TestClient, service: Service, pd: MockPagerDuty) -> None:
    seed(service, pd)
    login(client)
    for path, answer in pages(client).items():
        text = answer.text
        assert text.count("<h1") == 1, path
        assert '<html lang="en">' in text
        ids = set(re.findall(r'<label for="([^"]+)"', text))
        for field in re.findall(r"<(?:input|select|textarea)\b([^>]*)>", text):
            if 'type="hidden"' in field:
                continue
            found = re.search(r'id="([^"]+)"', field)
            assert found and found.group(1) in ids, f"{path}: a field without a label: {field}"
