"""Jira webhooks through the real HTTP app, store, rules and delivery to a mock PagerDuty."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service
from ticketpager.app import build_app
from ticketpager.service import Service

FIXTURES = Path(__file__).parent / "fixtures" / "jira"
SECRET = "pipeline-webhook-secret"
PLATFORM_KEY = "R0PLATFORM000000000000000000000A"


@pytest.fixture
def service(tmp_path: Path, pd: MockPagerDuty, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("PD_PLATFORM_KEY", PLATFORM_KEY)
    svc = make_service(
        f"sqlite:///{tmp_path / 'tp.db'}",
        FIXTURES / "e2e_rules.yaml",
        pd.url,
        FakeClock(),
        jira={"enabled": True, "webhook_secrets": [SECRET]},
    )
    svc.writer.start()  # the webhook group-commit writer (the app answers 202 after it commits)
    try:
        yield svc
    finally:
        svc.writer.stop()
        svc.store.dispose()


def p1_created() -> bytes:
    data: dict[str, Any] = json.loads((FIXTURES / "webhook_issue_updated_done.json").read_text())
    data["webhookEvent"] = "jira:issue_created"
    data.pop("changelog")
    fields = data["issue"]["fields"]
    fields["status"] = {"id": "1", "name": "Open", "statusCategory": {"id": 2, "key": "new", "name": "To Do"}}
    fields["resolution"] = None
    return json.dumps(data, indent=1).encode()


def post(client: TestClient, body: bytes, delivery: str, secret: str = SECRET) -> Any:
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return client.post(
        "/webhooks/jira",
        content=body,
        headers={
            "X-Hub-Signature": sig,
            "X-Atlassian-Webhook-Identifier": delivery,
            "Content-Type": "application/json",
        },
    )


def test_duplicate_webhook_deliveries_make_one_pagerduty_event(service: Service, pd: MockPagerDuty) -> None:
    body = p1_created()
    with TestClient(build_app(service)) as client:
        first = post(client, body, "d1b0c7a2-1")
        retried = post(client, body, "d1b0c7a2-1")  # Jira's retry: same identifier
        forged = post(client, body, "d1b0c7a2-2", secret="not-the-secret")
    service.process_all()

    assert first.status_code == 202 and first.json()["stored"] == 1
    assert retried.status_code == 202 and retried.json()["duplicates"] == 1
    assert forged.status_code == 401
    assert [(e["event_action"], e["payload"]["summary"]) for e in pd.events] == [
        ("trigger", "[OPS-12] Checkout API down in eu-west")
    ]


def test_ignored_events_and_malformed_bodies_never_page(service: Service, pd: MockPagerDuty) -> None:
    comment = (FIXTURES / "webhook_comment_created.json").read_bytes()
    with TestClient(build_app(service)) as client:
        ignored = post(client, comment, "c-1")
        broken = post(client, b'{"webhookEvent": "jira:issue_updated", "issue": []}', "c-2")
    service.process_all()

    assert ignored.status_code == 202 and ignored.json()["reason"] == "unhandled_event"
    assert broken.status_code == 400 and "invalid issue" in broken.json()["error"]
    assert pd.events == []
