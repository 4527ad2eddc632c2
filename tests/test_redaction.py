"""Credentials a vendor echoes never come back out (issue 13, item 5).

A Jira or Zendesk that answers 401 with the request's credentials (proxies and gateways do), and a
PagerDuty 400 repeating the routing key: no configured secret, in any form it travels in (raw, Basic
base64 of ``user:secret``, URL-encoded, JSON-escaped), may reach ``/readyz``, ``/admin/status``,
``ticketpager status``, ``deadletters list``, the database or the serve log; ``/readyz`` without the
metrics token says what is degraded without the vendor's text.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests
import responses

from kernel.errors import classify_response
from kernel.redact import REDACTED, Redactor
from tests.fakes.jira_server import FakeJira
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.fakes.zendesk_server import FakeZendesk
from tests.serve_proc import ROOT, Serve
from tests.test_app import SECRET, jira_body, sign

JIRA_EMAIL = "ticketpager-bot@acme.example"
JIRA_TOKEN = "ATATT3x/Jira+Tok=e9n"  # noqa: S105 - a test credential; '/', '+', '=' change when URL-encoded
ZENDESK_EMAIL = "api@acme.example"
ZENDESK_TOKEN = 'zdTok/9+"quoted"=x'  # noqa: S105 - and a quote, which JSON escapes
METRICS_TOKEN = "metrics-t0ken-for-admin"  # noqa: S105
ROUTING_KEY = "R0SECRETR0UT1NGKEY0000000000000A"  # 32 characters: a valid-looking integration key

RULES = """
version: 1
rules:
  - name: ops-highest
    source: jira
    when:
      project: OPS
      priority: [Highest, P1]
    trigger:
      routing_key: ${PD_SECRET_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
    resolve_when: {status_category: done}
"""


def forms(secret: str, *basic: str) -> dict[str, str]:
    """Every encoding ``secret`` travels in, by name (``basic``: the strings before ``:`` in Basic auth)."""
    out = {
        "raw": secret,
        "url-encoded": quote(secret, safe=""),
        "url-encoded (plus)": quote_plus(secret),
        "json-escaped": json.dumps(secret)[1:-1],
    }
    for user in basic:
        out[f"basic {user}"] = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return out


LEAKS = {
    **{f"jira token {k}": v for k, v in forms(JIRA_TOKEN, JIRA_EMAIL).items()},
    **{f"zendesk token {k}": v for k, v in forms(ZENDESK_TOKEN, f"{ZENDESK_EMAIL}/token").items()},
    **{f"routing key {k}": v for k, v in forms(ROUTING_KEY).items()},
    "metrics token": METRICS_TOKEN,
}


def leaks(text: str) -> list[str]:
    return [name for name, value in LEAKS.items() if value in text]


# -- the redaction itself -------------------------------------------------------------------------------
def test_every_encoding_of_a_configured_secret_is_redacted() -> None:
    redactor = Redactor([JIRA_TOKEN], [JIRA_EMAIL])
    for name, value in forms(JIRA_TOKEN, JIRA_EMAIL, "someone-else@acme.example").items():
        text = f"gateway said: {value}; goodbye"
        out = redactor.redact(text)
        assert value not in out, name
        assert out.startswith("gateway said: ") and out.endswith("; goodbye"), out
        assert REDACTED in out


def test_the_settings_secrets_and_their_basic_forms_are_learned_from_the_settings() -> None:
    """ServiceNow's Basic credential is ``username:password``, Jira Cloud's ``email:token``; the metrics token
    and webhook secrets are secrets too: all come from the one settings tree."""
    from kernel.redact import credentials
    from ticketpager.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        metrics_token=METRICS_TOKEN,
        jira={"email": JIRA_EMAIL, "api_token": JIRA_TOKEN, "webhook_secrets": ["hook/secret+1"]},
        servicenow={"username": "svc.ticketpager", "password": "Sn0w-pa55word"},
    )
    redactor = Redactor(*credentials(settings))
    shown = {
        **{f"jira {k}": v for k, v in forms(JIRA_TOKEN, JIRA_EMAIL).items()},
        **{f"servicenow {k}": v for k, v in forms("Sn0w-pa55word", "svc.ticketpager").items()},
        **{f"webhook secret {k}": v for k, v in forms("hook/secret+1").items()},
        "metrics token": METRICS_TOKEN,
    }
    assert len(shown) == 15  # each of the three: 4 encodings (+ Basic for the two with a user); the token
    for name, value in shown.items():
        assert value not in redactor.redact(f"echo {value} end"), name


def test_credential_shaped_text_is_redacted_without_knowing_the_secret() -> None:
    redactor = Redactor()
    cases = {
        "Authorization: Bearer eyJhbGciOi.J9x": "eyJhbGciOi.J9x",
        '{"authorization": "Basic dXNlcjpzM2NyZXQ="}': "dXNlcjpzM2NyZXQ=",
        "sent Bearer abcdef123456 upstream": "abcdef123456",
        "GET /x?token=abc123&page=2": "abc123",
        '{"api_key": "k-9f8e7d"}': "k-9f8e7d",
        "password=hunter22": "hunter22",
        "X-Api-Key: 77aa88bb": "77aa88bb",
        "postgresql://ticketpager:pgpass99@db/tp": "pgpass99",
        "routing_key: R0OTHERKEY": "R0OTHERKEY",
    }
    for text, secret in cases.items():
        out = redactor.redact(text)
        assert secret not in out and REDACTED in out, (text, out)
        assert redactor.redact(out) == out, "redacting twice changes nothing"


def test_prose_about_credentials_is_left_alone() -> None:
    redactor = Redactor()
    for text in (
        "Jira answered HTTP 401: check the API token",
        "Basic authentication required",
        "the server wants Basic authentication.",
        "Bearer token-expired",
        "token_type=bearer",
        "webhook secret not configured: set TICKETPAGER_JIRA__WEBHOOK_SECRETS",
    ):
        assert redactor.redact(text) == text


def test_hostile_vendor_text_is_redacted_in_bounded_time() -> None:
    """Vendor text is hostile input: 64 KiB built to make a pattern backtrack costs milliseconds."""
    redactor = Redactor([JIRA_TOKEN], [JIRA_EMAIL])
    for hostile in ("a.a." * 16384, "a_a_" * 16384, "api_" * 16384, "http://" + "a:" * 30000, "Bearer " * 9000):
        start = time.process_time()
        redactor.redact(hostile)
        assert time.process_time() - start < 0.5, hostile[:12]


@responses.activate
def test_a_secret_across_the_cut_of_a_vendor_body_leaves_no_fragment() -> None:
    """The stored vendor text is the body's first 300 characters: a secret straddling the cut must be
    redacted whole first, not leave a prefix that no longer matches."""
    from kernel import redact

    redact.SECRETS.add([JIRA_TOKEN])
    body = "x" * 290 + f" {JIRA_TOKEN} tail"
    responses.get("https://jira.example/rest/api/2/myself", body=body, status=401)
    response = requests.get("https://jira.example/rest/api/2/myself", timeout=5)
    error = classify_response("Jira", response, {})
    assert error is not None
    assert JIRA_TOKEN[:6] not in str(error), str(error)[-80:]


@responses.activate
def test_a_pagerduty_400_repeating_a_routing_key_no_rule_has_any_more_is_redacted() -> None:
    """An outbox row may carry a routing key its rule no longer has (edited since): the sink knows the key
    it sent and redacts it from PagerDuty's answer itself."""
    from connectors.pagerduty import PagerDutySink
    from kernel.errors import PermanentError

    key = "R0NEVERREGISTERED000000000000042"
    url = "https://events.pagerduty.example/v2/enqueue"
    answer = {"status": "invalid event", "message": f"routing key {key} unknown", "errors": [f"{'x' * 995} {key}"]}
    responses.post(url, json=answer, status=400)
    with pytest.raises(PermanentError) as raised:
        PagerDutySink(url).send({"routing_key": key, "event_action": "trigger"})
    text = str(raised.value)
    assert "PagerDuty answered HTTP 400: routing key [redacted] unknown" in text, text
    assert key[:8] not in text  # nor a fragment of it at the 1000-character cut


# -- end to end: serve, the CLI, the database, the log ----------------------------------------------------
def _get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "ticketpager.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_echoed_credentials_reach_no_output_store_or_log(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    db = tmp_path / "tp.db"
    with MockPagerDuty() as pd, FakeJira() as jira, FakeZendesk(email=ZENDESK_EMAIL, token=ZENDESK_TOKEN) as zd:
        jira.echo_credentials = zd.echo_credentials = True
        pd.echo_routing_key_next = 1  # the first page: 400 repeating the key; the second goes through
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TICKETPAGER_")},
            "NO_PROXY": "127.0.0.1,localhost",
            "TICKETPAGER_DATABASE_URL": f"sqlite:///{db}",
            "TICKETPAGER_RULES_PATH": str(rules),
            "TICKETPAGER_METRICS_TOKEN": METRICS_TOKEN,
            "TICKETPAGER_PAGERDUTY__EVENTS_URL": pd.url,
            "TICKETPAGER_JIRA__ENABLED": "true",
            "TICKETPAGER_JIRA__URL": jira.url,
            "TICKETPAGER_JIRA__EMAIL": JIRA_EMAIL,
            "TICKETPAGER_JIRA__API_TOKEN": JIRA_TOKEN,
            "TICKETPAGER_JIRA__WEBHOOK_SECRETS": SECRET,
            "TICKETPAGER_JIRA__POLL_INTERVAL_SECONDS": "0.5",
            "TICKETPAGER_ZENDESK__ENABLED": "true",
            "TICKETPAGER_ZENDESK__URL": zd.url,
            "TICKETPAGER_ZENDESK__EMAIL": ZENDESK_EMAIL,
            "TICKETPAGER_ZENDESK__API_TOKEN": ZENDESK_TOKEN,
            "TICKETPAGER_ZENDESK__POLL_INTERVAL_SECONDS": "0.5",
            "TICKETPAGER_ZENDESK__MIN_REQUEST_INTERVAL_SECONDS": "0",
            "TICKETPAGER_ENGINE__IDLE_SECONDS": "0.05",
            "TICKETPAGER_PAGERDUTY__BACKOFF_BASE_SECONDS": "0.05",
            "PD_SECRET_KEY": ROUTING_KEY,
        }
        serve = Serve(env).start()
        try:
            for issue in ("10042", "10043"):  # two P1 pages: one refused by PagerDuty, one whose Jira note fails
                body = jira_body(issue, "new")
                status, _ = serve.post(
                    "/webhooks/jira", body, {"X-Hub-Signature": sign(body), "X-Atlassian-Webhook-Identifier": issue}
                )
                assert status == 202

            def admin() -> dict[str, Any]:
                code, text = _get(f"{serve.url}/admin/status", METRICS_TOKEN)
                assert code == 200, text
                return dict(json.loads(text))

            def failed_everywhere() -> bool:
                status = admin()
                errors = {c["source"] for c in status["cursors"] if c["last_error_kind"] == "permanent"}
                return errors == {"jira", "zendesk"} and status["dead_letters"] == 2

            _wait(failed_everywhere, "both polls to fail with 401 and two dead letters")
            code, anonymous = _get(f"{serve.url}/readyz")
            _, with_token = _get(f"{serve.url}/readyz", METRICS_TOKEN)
            admin_text = json.dumps(admin())
        finally:
            serve.stop()
        log = serve.output()

    # the vendors did echo the credentials: the test would see a leak if one went through
    assert jira.requests and zd.requests and pd.requests[0]["routing_key"] == ROUTING_KEY

    # /readyz without the token: what is degraded, no vendor text
    assert code == 200, anonymous
    ready = json.loads(anonymous)
    assert ready["degraded"] is True
    problems = ready["sources"]["permanent_errors"]
    assert set(problems) == {"jira", "zendesk"}
    for source, text in problems.items():
        assert "HTTP 401" in text and "/admin/status" in text, text
        for vendor_text in ("credential", "API token", "echo", "Unauthorized", REDACTED):
            assert vendor_text not in text, (source, text)
    # with the token, the detail (redacted) is there
    detailed = json.loads(with_token)["sources"]["permanent_errors"]
    assert "API token" in detailed["jira"] and REDACTED in detailed["jira"], detailed

    status_text = _cli(env, "status") + _cli(env, "status", "--json")
    dead_text = _cli(env, "deadletters", "list") + _cli(env, "deadletters", "list", "--json")
    with sqlite3.connect(db) as conn:
        stored = [
            str(e)
            for (e,) in conn.execute(
                "SELECT last_error FROM cursors UNION ALL SELECT last_error FROM outbox WHERE last_error IS NOT NULL"
            )
        ]
    assert len(stored) == 4, stored  # two poll errors, two dead letters (the page and the Jira note)
    assert any("PagerDuty answered HTTP 400" in e for e in stored), stored
    assert any("jira answered HTTP 401" in e for e in stored), stored
    assert "jira answered HTTP 401" in status_text and "PagerDuty answered HTTP 400" in dead_text

    for surface, text in {
        "/readyz": anonymous,
        "/readyz with the token": with_token,
        "/admin/status": admin_text,
        "ticketpager status": status_text,
        "deadletters list": dead_text,
        "the database": "\n".join(stored),
        "the serve log": log,
    }.items():
        assert leaks(text) == [], f"{surface} leaks {leaks(text)}"
    assert "answered HTTP 401" in log, "the log still says what failed"


def test_a_line_break_in_logged_input_cannot_forge_a_log_line() -> None:
    """Text logs are one line per record: a vendor's error text or a ticket title with line breaks is written
    with ``\\n``, so it cannot pass for a line of its own; a traceback keeps its lines after the message."""
    import logging
    import sys

    from kernel.logs import TextFormatter

    forged = "refused\n2026-12-05 10:00:00,000 INFO ticketpager.delivery: sent trigger for OPS-1\r"
    record = logging.LogRecord(
        "ticketpager.delivery", logging.WARNING, __file__, 1, "PagerDuty said: %s", (forged,), None
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert line.endswith(
        r"PagerDuty said: refused\n2026-12-05 10:00:00,000 INFO ticketpager.delivery: sent trigger for OPS-1\r"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = TextFormatter().format(failed)
    assert text.splitlines()[0].endswith("ERROR x: failed") and text.splitlines()[-1] == "ValueError: boom"
