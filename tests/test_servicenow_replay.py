"""A replayed ServiceNow webhook never pages again (review of issue 13).

ServiceNow's HMAC covers the body only; ``X-Ticketpager-Delivery`` is not signed. The delivery id came from
that header, so a signed body replayed inside the 300 s window with a new header value was a new delivery.
``sys_updated_on`` has one-second resolution: when a record is updated twice in one second (an insert and
an assignment rule, say), the replay of the first body has the same ``updated`` as the current version but
other content, so it was processed again — a resolved incident re-paged. Through the real HTTP app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.schema import outbox
from tests.test_webhook_fuzz import make_service
from ticketpager.app import build_app
from ticketpager.service import Service

SECRET = "servicenow-replay-secret-1"
NOC_KEY = "R0NOC0000000000000000000000000AB"
RULES = """
version: 1
rules:
  - name: p1
    source: servicenow
    when: {priority: "1 - Critical"}
    trigger:
      routing_key: ${PD_NOC_KEY}
      severity: critical
      summary: "[ServiceNow {{ ticket.key }}] P1"
    resolve_when: {status_category: done}
"""
FIXTURE = Path(__file__).parent / "fixtures" / "servicenow" / "webhook_incident_update.json"
SENT = int(datetime(2026, 11, 27, 9, 0, tzinfo=UTC).timestamp())


def body(state: str, sent_at: int, mod_count: str) -> bytes:
    payload = json.loads(FIXTURE.read_text())
    payload["sent_at"] = sent_at
    payload["record"].update(state=state, sys_mod_count=mod_count)
    payload["delivery_id"] = f"{payload['record']['sys_id']}:{mod_count}:{payload['record']['sys_updated_on']}"
    return json.dumps(payload).encode()


class Desk:
    def __init__(self, service: Service, client: TestClient) -> None:
        self.service, self.client = service, client

    def send(self, raw: bytes, delivery: str) -> Any:
        stamp = str(json.loads(raw)["sent_at"])
        signature = base64.b64encode(hmac.new(SECRET.encode(), raw, hashlib.sha256).digest()).decode()
        headers = {"X-Signature": signature, "X-Timestamp": stamp, "X-Ticketpager-Delivery": delivery,
                   "Content-Type": "application/json"}
        response = self.client.post("/webhooks/servicenow", content=raw, headers=headers)
        self.service.engine.drain()
        return response

    def events(self) -> list[str]:
        with self.service.store.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.action).where(outbox.c.kind == "event").order_by(outbox.c.id)).all()
        return [r.action for r in rows]


@pytest.fixture
def desk(tmp_path: Path, db_url: str) -> Iterator[Desk]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    clock = FakeClock(datetime(2026, 11, 27, 9, 0, 30, tzinfo=UTC))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PD_NOC_KEY", NOC_KEY)
        service = make_service(db_url, rules, clock, "servicenow",
                               {"instance_url": "https://acme.service-now.com", "webhook_secrets": [SECRET]})
    service.writer.start()
    try:
        with TestClient(build_app(service), raise_server_exceptions=False) as client:
            yield Desk(service, client)
    finally:
        service.writer.stop()
        service.store.dispose()


def test_a_signed_body_replayed_with_a_new_delivery_header_is_a_duplicate(desk: Desk) -> None:
    opened = body("2", SENT, "4")  # P1, in progress
    assert desk.send(opened, "d-4").json()["stored"] == 1
    solved = body("6", SENT + 1, "5")  # resolved in the same second of sys_updated_on
    assert desk.send(solved, "d-5").json()["stored"] == 1
    assert desk.events() == ["trigger", "resolve"]

    replay = desk.send(opened, "d-attacker")  # same signed bytes, a header nobody signed

    assert replay.json() == {"status": "accepted", "stored": 0, "duplicates": 1}
    assert desk.events() == ["trigger", "resolve"]


def test_a_business_rule_retry_of_one_update_is_a_duplicate(desk: Desk) -> None:
    """The shipped Business Rule's own delivery id (in the signed body) still identifies its retries."""
    first = body("2", SENT, "4")
    assert desk.send(first, "d-4").json()["stored"] == 1
    again = body("2", SENT + 20, "4")  # re-sent later: new sent_at, same record version
    assert desk.send(again, "d-4").json() == {"status": "accepted", "stored": 0, "duplicates": 1}
