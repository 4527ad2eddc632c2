"""A replayed or late Zendesk trigger webhook never moves a ticket backwards or pages again (issue 13, item 3).

Through the real HTTP app with signed requests: the trigger body is signed (``timestamp + body``), the
``X-Zendesk-Webhook-Invocation-Id`` header is not. Before the fix a delivery was identified by that header
and a body without ``updated_at`` was versioned by its receive time, so a replay of the first request of a
solved ticket, with a new invocation id, opened a second incident that stayed open; and of two deliveries
of one minute (``{{ticket.updated_at_with_timestamp}}`` has minute resolution) the one arriving last won,
even when it was the older.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.schema import links, outbox
from tests.fakes.zendesk_server import FakeZendesk, sign
from tests.test_webhook_fuzz import make_service
from ticketpager.app import build_app
from ticketpager.service import Service

SECRET = "zendesk-replay-secret-1"
SUPPORT_KEY = "R0SUPPORT000000000000000000000AB"
RULES = """
version: 1
rules:
  - name: gold-urgent
    source: zendesk
    when: {priority: urgent, labels: {contains: gold}}
    trigger:
      routing_key: ${PD_SUPPORT_KEY}
      severity: critical
      summary: "[Zendesk {{ ticket.key }}] urgent gold ticket"
    resolve_when: {status_category: done}
"""


@dataclass
class Desk:
    service: Service
    client: TestClient
    clock: FakeClock

    def send(self, body: bytes, stamp: str, invocation: str) -> Any:
        """POST a trigger webhook signed as Zendesk signs it, then let the engine process what was stored."""
        headers = {
            "X-Zendesk-Webhook-Signature": sign(SECRET, stamp, body),
            "X-Zendesk-Webhook-Signature-Timestamp": stamp,
            "X-Zendesk-Webhook-Invocation-Id": invocation,
            "X-Zendesk-Webhook-Id": "01HW4E0QJ3",
        }
        response = self.client.post("/webhooks/zendesk", content=body, headers=headers)
        self.service.engine.drain()
        return response

    def stamp(self, after_seconds: float = 0) -> str:
        return (self.clock.now() + timedelta(seconds=after_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def events(self, ticket: str) -> list[str]:
        with self.service.store.engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.action)
                .where(outbox.c.ticket_id == ticket, outbox.c.kind == "event")
                .order_by(outbox.c.id)
            ).all()
        return [r.action for r in rows]

    def incident(self, ticket: str) -> str | None:
        with self.service.store.engine.connect() as conn:
            return conn.execute(select(links.c.state).where(links.c.ticket_id == ticket)).scalar_one_or_none()


def open_desk(tmp_path: Path, db_url: str, connector: dict[str, Any]) -> Iterator[Desk]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PD_SUPPORT_KEY", SUPPORT_KEY)
        service = make_service(
            db_url,
            rules,
            clock,
            "zendesk",
            {"enabled": True, "webhook_secrets": [SECRET], **connector},
        )
    service.writer.start()
    try:
        with TestClient(build_app(service), raise_server_exceptions=False) as client:
            yield Desk(service, client, clock)
    finally:
        service.writer.stop()
        service.store.dispose()


@pytest.fixture
def desk(tmp_path: Path, db_url: str) -> Iterator[Desk]:
    """Webhook-only: no API token, so the trigger body is all ticketpager knows (SQLite and PostgreSQL)."""
    yield from open_desk(tmp_path, db_url, {"subdomain": "acme"})


def body(status: str, **extra: str) -> bytes:
    return json.dumps({"ticket_id": "7001", "status": status, "priority": "urgent", "tags": "gold", **extra}).encode()


def test_replay_of_a_signed_body_with_a_new_invocation_id_is_a_duplicate_and_pages_nobody(desk: Desk) -> None:
    first = body("new", updated_at="2026-11-27T09:00:00Z")  # the shipped template carries updated_at
    stamp = desk.stamp()
    assert desk.send(first, stamp, "invocation-A").json() == {"status": "accepted", "stored": 1, "duplicates": 0}
    desk.clock.advance(60)
    solved = body("solved", updated_at="2026-11-27T09:01:00Z")
    assert desk.send(solved, desk.stamp(), "invocation-B").status_code == 202
    assert desk.events("7001") == ["trigger", "resolve"]

    desk.clock.advance(60)  # still inside the 5-minute signature window
    replay = desk.send(first, stamp, "invocation-C")  # same body, timestamp and signature; new unsigned header

    assert replay.json() == {"status": "accepted", "stored": 0, "duplicates": 1}
    assert desk.events("7001") == ["trigger", "resolve"]
    assert desk.incident("7001") == "resolved"


def test_a_trigger_body_without_a_version_is_refused_so_its_replay_cannot_reopen(desk: Desk) -> None:
    """The issue's reproduction: the body has no updated_at and no API can be asked."""
    first = body("new")
    stamp = desk.stamp()
    refused = desk.send(first, stamp, "invocation-A")
    assert refused.status_code == 400
    assert "updated_at" in refused.json()["error"] and "{{ticket.updated_at_with_timestamp}}" in refused.json()["error"]
    desk.clock.advance(60)
    desk.send(body("solved"), desk.stamp(), "invocation-B")
    desk.clock.advance(60)
    desk.send(first, stamp, "invocation-C")
    assert desk.events("7001") == []
    assert desk.incident("7001") is None


def test_two_deliveries_of_one_minute_arriving_out_of_order_do_not_page(desk: Desk) -> None:
    minute = "2026-11-27T09:00:00Z"  # {{ticket.updated_at_with_timestamp}}: both updates read the same
    opened, solved = body("new", updated_at=minute), body("solved", updated_at=minute)
    opened_at, solved_at = desk.stamp(), desk.stamp(10)  # Zendesk sent them in this order, signed
    desk.clock.advance(12)

    assert desk.send(solved, solved_at, "invocation-2").status_code == 202  # arrives first
    assert desk.send(opened, opened_at, "invocation-1").status_code == 202  # older, arrives last

    assert desk.events("7001") == []
    assert desk.incident("7001") is None


def test_two_deliveries_of_one_minute_in_order_still_trigger_then_resolve(desk: Desk) -> None:
    minute = "2026-11-27T09:00:00Z"
    opened, solved = body("new", updated_at=minute), body("solved", updated_at=minute)
    opened_at = desk.stamp()
    desk.clock.advance(10)
    assert desk.send(opened, opened_at, "invocation-1").status_code == 202
    assert desk.send(solved, desk.stamp(), "invocation-2").status_code == 202
    assert desk.events("7001") == ["trigger", "resolve"]


def test_with_an_api_a_versionless_body_is_reconciled_and_never_falls_back_to_the_receive_time(
    tmp_path: Path, db_url: str
) -> None:
    with FakeZendesk() as zd:
        zd.add_ticket(7001, status="new", priority="urgent", tags=["gold"])
        api = {"url": zd.url, "email": zd.email, "api_token": zd.token}
        for desk in open_desk(tmp_path, db_url, api):
            first = body("new")  # no updated_at: the canonical ticket gives the version
            stamp = desk.stamp()
            assert desk.send(first, stamp, "invocation-A").status_code == 202
            zd.update_ticket(7001, status="solved")
            desk.clock.advance(60)
            assert desk.send(body("solved"), desk.stamp(), "invocation-B").status_code == 202
            assert desk.events("7001") == ["trigger", "resolve"]

            desk.clock.advance(60)
            zd.fail_next(1, 503)  # Zendesk's API is down while the replay arrives
            replay = desk.send(first, stamp, "invocation-C")
            assert replay.status_code == 503 and "retry later" in replay.json()["error"]
            retried = desk.send(first, stamp, "invocation-C")  # the API is back: reconciled, nothing to do
            assert retried.status_code == 202

            assert desk.events("7001") == ["trigger", "resolve"]
            assert desk.incident("7001") == "resolved"
