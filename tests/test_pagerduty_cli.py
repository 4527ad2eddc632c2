"""``ticketpager pagerduty subscribe`` creates the v3 subscription through PagerDuty's REST API and prints its
secret once (running it again creates nothing); ``--dry-run`` calls nothing; ``pagerduty ping`` has PagerDuty
send ``pagey.ping`` through it, which the webhook endpoint accepts. PagerDuty is the local REST fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from tests.fakes.pagerduty_rest import BOT_EMAIL, TOKEN, FakePagerDutyRest, sign
from tests.harness import make_service
from ticketpager import cli
from ticketpager.app import build_app

URL = "https://tp.example.com/webhooks/pagerduty"


@pytest.fixture
def pd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePagerDutyRest]:
    with FakePagerDutyRest() as fake:
        monkeypatch.setenv("TICKETPAGER_PAGERDUTY__API_TOKEN", TOKEN)
        monkeypatch.setenv("TICKETPAGER_PAGERDUTY__API_URL", fake.url)
        monkeypatch.setenv("TICKETPAGER_PAGERDUTY__FROM_EMAIL", BOT_EMAIL)
        yield fake


def test_subscribe_prints_the_secret_once_and_a_second_run_creates_nothing(
    pd: FakePagerDutyRest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["pagerduty", "subscribe", "--url", URL, "--service", "PSVC001"]) == 0
    first = capsys.readouterr().out
    [sub] = pd.state.subscriptions.values()
    assert (sub.url, sub.filter) == (URL, {"type": "service_reference", "id": "PSVC001"})
    assert "incident.acknowledged" in sub.events and "incident.responder.added" in sub.events
    assert sub.secrets[0] in first and "shown once" in first

    assert cli.main(["pagerduty", "subscribe", "--url", URL, "--service", "PSVC001"]) == 0
    again = capsys.readouterr().out
    assert len(pd.state.subscriptions) == 1
    assert "already subscribed" in again and sub.secrets[0] not in again
    assert pd.spec_errors == []


def test_subscribe_dry_run_calls_nothing(pd: FakePagerDutyRest, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pagerduty", "subscribe", "--url", URL, "--dry-run"]) == 0
    assert "would subscribe" in capsys.readouterr().out
    assert pd.requests == [] and pd.state.subscriptions == {}


def test_subscribe_without_a_token_says_which_setting_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TICKETPAGER_PAGERDUTY__API_TOKEN", raising=False)
    assert cli.main(["pagerduty", "subscribe", "--url", URL]) == 2
    assert "TICKETPAGER_PAGERDUTY__API_TOKEN" in capsys.readouterr().err


def test_ping_reaches_the_webhook_endpoint_which_accepts_it(
    pd: FakePagerDutyRest, db_url: str, rules_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["pagerduty", "ping", "--url", URL]) == 1  # nothing subscribed yet
    pd.subscribe(URL, "pd-webhook-secret-0000001")
    assert cli.main(["pagerduty", "ping", "--url", URL]) == 0
    assert "pagey.ping" in capsys.readouterr().out
    svc = make_service(
        db_url, rules_path, "http://127.0.0.1:9/v2/enqueue", clock,
        pagerduty={"webhook_secrets": ["pd-webhook-secret-0000001"]},
    )  # fmt: skip
    [ping] = pd.outbox
    with TestClient(build_app(svc)) as c:
        response = c.post("/webhooks/pagerduty", content=ping.body, headers=ping.headers)
    assert (response.status_code, response.json()["status"]) == (202, "ignored")
    svc.store.dispose()


def test_status_shows_the_pagerduty_inbox(
    db_url: str, rules_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "pd-webhook-secret-0000001"
    svc = make_service(
        db_url, rules_path, "http://127.0.0.1:9/v2/enqueue", clock, pagerduty={"webhook_secrets": [secret]}
    )
    body = (Path(__file__).parent / "fixtures" / "pagerduty" / "webhooks" / "resolved_by_user.json").read_bytes()
    headers = {"X-Webhook-Id": "wh-1", "X-PagerDuty-Signature": sign(secret, body)}
    with TestClient(build_app(svc)) as c:
        assert c.post("/webhooks/pagerduty", content=body, headers=headers).status_code == 202
    svc.store.dispose()
    assert cli.main(["--database-url", db_url, "status", "--json"]) == 0
    inbox = json.loads(capsys.readouterr().out)["pagerduty_inbox"]
    assert (inbox["pending"], inbox["failed"], inbox["last_event_type"]) == (1, 0, "incident.resolved")
    assert cli.main(["--database-url", db_url, "status"]) == 0
    assert "pagerduty inbox   1 pending" in capsys.readouterr().out
