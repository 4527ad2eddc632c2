"""The admin console in a real browser (Debian's headless Chromium driven by Playwright) against a real
``serve`` on a socket and the PagerDuty fake: log in with the keyboard, find a ticket, read why it paged and
why another did not, retry a dead letter and see it reach PagerDuty, add a silence and see a matching ticket not page
(then page once when it is expired), try a rule in the playground; a POST
without the CSRF token is refused; no secret in any page's HTML; labels and headings. Screenshots of each
page go to a temporary folder, or to ``docs/console/`` (shown in the README) when
``TICKETPAGER_SCREENSHOTS=docs/console`` is set, so an ordinary run leaves the checkout clean.

Skips, saying why, without the ``playwright`` package or a ``chromium`` binary (``.ci/run`` installs both;
no browser is ever downloaded).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories import ROUTING_KEY, RULES
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import wait_until
from tests.serve_proc import ROOT, Serve
from tests.test_app import SECRET, sign

sync_api: Any
try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - depends on the machine
    sync_api = None

CHROMIUM = os.environ.get("TICKETPAGER_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sync_api is None, reason="browser tests need the playwright package (pip install playwright)"),
    pytest.mark.skipif(
        CHROMIUM is None, reason="browser tests need Chromium (Debian: apt-get install chromium; .ci/run does)"
    ),
]

TOKEN = "browser-console-token-0123456789abcdef"
SHOTS = Path(os.environ["TICKETPAGER_SCREENSHOTS"]) if os.environ.get("TICKETPAGER_SCREENSHOTS") else None
FIXTURE = ROOT / "tests" / "fixtures" / "jira" / "webhook_issue_updated_done.json"


def jira_issue(issue_id: str, key: str, title: str, priority: str) -> bytes:
    payload = json.loads(FIXTURE.read_text())
    issue = payload["issue"]
    issue["id"], issue["key"] = issue_id, key
    issue["fields"]["summary"] = title
    issue["fields"]["priority"]["name"] = priority
    issue["fields"]["status"]["statusCategory"]["key"] = "new"
    return json.dumps(payload).encode()


def wait_for(predicate: Callable[[], bool]) -> bool:
    return wait_until(predicate, 20.0, every=0.1)


@pytest.fixture
def serve(tmp_path: Path, pd: MockPagerDuty) -> Iterator[Serve]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "ops.yaml").write_text(RULES)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "TICKETPAGER_CONSOLE__TOKEN").write_text(TOKEN)  # the token from a secret file
    (secrets / "PD_PLATFORM_KEY").write_text(ROUTING_KEY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKETPAGER_", "PD_"))} | {
        "TICKETPAGER_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
        "TICKETPAGER_RULES_PATH": str(rules),
        "TICKETPAGER_SECRETS_DIR": str(secrets),
        "TICKETPAGER_PAGERDUTY__EVENTS_URL": pd.url,
        "TICKETPAGER_PAGERDUTY__MAX_ATTEMPTS": "1",
        "TICKETPAGER_JIRA__WEBHOOK_SECRETS": SECRET,
        "TICKETPAGER_CONSOLE__ENABLED": "true",
        # the scheduler's silence release pass runs every second (not every minute) so the test sees it
        "TICKETPAGER_ENGINE__RECHECK_INTERVAL_SECONDS": "1",
        "TICKETPAGER_ENGINE__GAUGE_INTERVAL_SECONDS": "0.5",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    server = Serve(env)
    server.env = env | {"TICKETPAGER_PORT": str(server.port), "PYTHONPATH": str(ROOT)}
    server.start()
    try:
        yield server
    finally:
        server.stop()


def webhook(serve: Serve, body: bytes, delivery: str) -> None:
    status, answer = serve.post(
        "/webhooks/jira", body, {"X-Hub-Signature": sign(body), "X-Atlassian-Webhook-Identifier": delivery}
    )
    assert status == 202, answer


def triggers(pd: MockPagerDuty) -> list[str]:
    return [e["dedup_key"] for e in pd.events if e["event_action"] == "trigger"]


def tab_to(page: Any, what: str, matches: Any, limit: int = 60) -> None:
    """Press Tab until the focused element is the one ``matches`` (given its id, tag, text and aria-label)
    accepts: the element is reachable with the keyboard alone."""
    for _ in range(limit):
        focused = page.evaluate(
            """() => { const e = document.activeElement || document.body;
                       return {id: e.id, tag: e.tagName.toLowerCase(), text: (e.textContent || '').trim(),
                               label: e.getAttribute('aria-label') || ''}; }"""
        )
        if matches(focused):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{what} is not reachable with Tab ({limit} presses)")


def check_accessible(page: Any, name: str) -> None:
    """One h1; every visible form field has a label; the page has a language."""
    assert page.locator("h1").count() == 1, name
    assert page.get_attribute("html", "lang") == "en"
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(e => e.labels.length === 0).map(e => e.outerHTML)"""
    )
    assert unlabelled == [], f"{name}: fields without a label: {unlabelled}"


def test_console_in_a_browser(serve: Serve, pd: MockPagerDuty, tmp_path: Path) -> None:
    webhook(serve, jira_issue("501", "OPS-501", "Checkout API down in eu-west", "Highest"), "b-1")
    webhook(serve, jira_issue("502", "OPS-502", "Typo on the pricing page", "Low"), "b-2")
    assert wait_for(lambda: len(triggers(pd)) == 1), "OPS-501 did not page"
    pd.fail_next(1, 400)  # PagerDuty refuses the next event for good: a dead letter
    webhook(serve, jira_issue("503", "OPS-503", "Payments slow", "Highest"), "b-3")
    assert wait_for(lambda: len(pd.requests) == 2)
    shots = SHOTS or tmp_path
    held_key = "ticketpager/jira/504/ops-highest/1"
    shots.mkdir(parents=True, exist_ok=True)
    html: dict[str, str] = {}

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            # log in with the keyboard only
            page.goto(f"{serve.url}/console/tickets")
            assert "/console/login" in page.url
            check_accessible(page, "login")
            html["login"] = page.content()
            page.screenshot(path=str(shots / "login.png"))
            for _ in range(10):
                if page.evaluate("document.activeElement && document.activeElement.id") == "token":
                    break
                page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "token", "the token field is reachable by Tab"
            page.keyboard.type(TOKEN)
            page.keyboard.press("Enter")
            page.wait_for_url("**/console/tickets")

            page.goto(f"{serve.url}/console/")
            assert page.get_by_role("heading", name="Overview").is_visible()
            assert page.locator("svg.chart").count() == 1
            check_accessible(page, "overview")
            html["overview"] = page.content()
            page.screenshot(path=str(shots / "overview.png"), full_page=True)

            # find a ticket and read why it paged
            page.goto(f"{serve.url}/console/tickets")
            page.get_by_label("Key starts with").fill("OPS-50")
            page.get_by_label("Key starts with").press("Enter")
            page.wait_for_url("**key=OPS-50**")
            check_accessible(page, "tickets")
            html["tickets"] = page.content()
            page.screenshot(path=str(shots / "tickets.png"), full_page=True)
            page.get_by_role("link", name="OPS-501").click()
            timeline = page.locator("main").text_content() or ""
            assert "paged" in timeline and "ops-highest: matched" in timeline
            assert "Vendor's answer: accepted" in timeline
            check_accessible(page, "ticket")
            html["ticket-paged"] = page.content()
            page.screenshot(path=str(shots / "ticket-paged.png"), full_page=True)

            # and why another did not
            page.goto(f"{serve.url}/console/tickets?title=pricing")
            page.get_by_role("link", name="OPS-502").click()
            quiet = page.locator("main").text_content() or ""
            assert "no action" in quiet and "ops-highest: no match" in quiet and "priority" in quiet
            assert "This ticket never paged." in quiet
            html["ticket-quiet"] = page.content()
            page.screenshot(path=str(shots / "ticket-not-paged.png"), full_page=True)

            # a POST without the CSRF token is refused, even with the session cookie
            refused = page.request.post(f"{serve.url}/console/deadletters/retry", form={"all": "1"})
            assert refused.status == 403

            # retry the dead letter, with confirmation
            page.goto(f"{serve.url}/console/deadletters")
            assert "OPS-503" in page.locator("main").text_content() or ""
            check_accessible(page, "dead letters")
            html["deadletters"] = page.content()
            page.screenshot(path=str(shots / "deadletters.png"), full_page=True)
            # with the keyboard: Tab to the row's "Retry…" link, Enter; Tab to "Yes, retry", Enter
            tab_to(page, "the retry link", lambda e: e["tag"] == "a" and e["label"].startswith("Retry dead letter"))
            with page.expect_navigation():
                page.keyboard.press("Enter")
            check_accessible(page, "retry confirmation")
            html["confirm"] = page.content()
            tab_to(page, "the confirm button", lambda e: e["tag"] == "button" and e["text"] == "Yes, retry")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert "1 queued again" in page.locator("main").text_content() or ""
            assert wait_for(lambda: len(triggers(pd)) == 2), "the retried trigger did not reach PagerDuty"
            assert any("503" in key for key in triggers(pd))

            # silence ACME's tickets from the console, with the keyboard; a typo is refused next to the form
            page.goto(f"{serve.url}/console/silences")
            check_accessible(page, "silences")
            matchers = page.get_by_label("Matchers, one per line (all must hold)")
            matchers.focus()
            page.keyboard.type("projct=OPS")
            page.keyboard.press("Tab")
            page.keyboard.type("2h")
            page.get_by_label("Comment (why)").focus()
            page.keyboard.type("ACME migration tonight")
            page.keyboard.press("Enter")
            refused_form = page.locator("[role=alert]").text_content() or ""
            assert "unknown field 'projct' (did you mean 'project'?)" in refused_form
            assert page.get_by_label("Comment (why)").input_value() == "ACME migration tonight", "what was typed stays"
            matchers.fill("project=OPS\ntitle=~ACME")
            page.get_by_role("button", name="Add silence").focus()
            page.keyboard.press("Enter")
            page.wait_for_url("**/console/silences?added=*")
            listing = page.locator("main").text_content() or ""
            assert "Silence #1 added" in listing and "title: {regex: ACME}" in listing and "ACME migration" in listing
            check_accessible(page, "silences")
            html["silences"] = page.content()
            page.screenshot(path=str(shots / "silences.png"), full_page=True)

            # a matching ticket does not page: the timeline says why
            webhook(serve, jira_issue("504", "OPS-504", "ACME checkout migration failing", "Highest"), "b-4")
            timeline_url = f"{serve.url}/console/tickets/jira/504"
            assert wait_for(lambda: "silenced by #1" in page.request.get(timeline_url).text()), "not held"
            assert held_key not in triggers(pd), "OPS-504 paged through its silence"
            page.goto(timeline_url)
            assert "Nothing sent: silenced by #1" in (page.locator("main").text_content() or "")
            html["ticket-silenced"] = page.content()

            # expire it, with confirmation: the ticket pages, once
            page.goto(f"{serve.url}/console/silences")
            page.get_by_role("link", name="Expire silence 1").click()
            check_accessible(page, "expire")
            page.get_by_role("button", name="Yes, expire").click()
            assert "Silence #1 expired" in (page.locator("main").text_content() or "")
            assert wait_for(lambda: held_key in triggers(pd)), "OPS-504 did not page when its silence ended"

            page.goto(f"{serve.url}/console/audit")
            audit_text = page.locator("main").text_content() or ""
            assert "deadletter.retry" in audit_text and "silence.add" in audit_text and "silence.expire" in audit_text
            html["audit"] = page.content()
            page.screenshot(path=str(shots / "audit.png"), full_page=True)

            # try a rule in the playground: Low tickets page too
            page.goto(f"{serve.url}/console/rules")
            check_accessible(page, "rules")
            box = page.get_by_label("Rule file (YAML)").first
            edited = box.input_value().replace("[Highest, P1]", "[Highest, Low]")
            # with the keyboard only: Tab into the rule file, replace it, Tab through the ticket box to the
            # stored-ticket picker (type-ahead selects a connection), its id, and Enter on "Evaluate"
            tab_to(page, "the playground's rule file", lambda e: e["id"] == "rules-text")
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(edited)
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "ticket-text", "Tab goes on to the ticket box"
            tab_to(page, "the stored ticket's connection", lambda e: e["id"] == "pick-connection")
            page.keyboard.type("jira")
            assert page.get_by_label("Connection").first.input_value() == "jira", "type-ahead picks the connection"
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "pick-id"
            page.keyboard.type("502")
            tab_to(page, "the Evaluate button", lambda e: e["tag"] == "button" and e["text"] == "Evaluate")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            result = page.locator("main").text_content() or ""
            assert "ops-highest: matched" in result and '"event_action": "trigger"' in result
            assert "Typo on the pricing page" in result
            html["playground"] = page.content()
            page.screenshot(path=str(shots / "rules-playground.png"), full_page=True)
        finally:
            browser.close()

    assert len(triggers(pd)) == 3, "the playground sent nothing"
    assert triggers(pd).count(held_key) == 1, "the silenced ticket paged exactly once"
    for name, text in html.items():
        for secret in (TOKEN, ROUTING_KEY, SECRET):
            assert secret not in text, f"{name} shows a secret"
