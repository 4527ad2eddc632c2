"""Migration 0007 (outbox.destination): a database upgraded with events and notes still pending delivers them
as before, each once, to the destination its row now names (events: PagerDuty; notes: the ticket's system)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from connectors.pagerduty import build_event
from kernel import jsonutil
from kernel.clock import FakeClock
from kernel.model import EventAction, PlannedEvent, TriggerSpec
from sync import db
from sync.schema import outbox
from sync.store import Store
from tests.factories import ROUTING_KEY
from tests.fakes.jira_server import FakeJira, make_issue
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service


def _row(clock: FakeClock, **values: Any) -> dict[str, Any]:
    row = {
        "source": "jira",
        "ticket_id": "10042",
        "ticket_key": "OPS-12",
        "rule": "ops-highest",
        "generation": 1,
        "routing_key": ROUTING_KEY,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": clock.now(),
        "created_at": clock.now(),
        "sent_at": None,
    }
    return row | values


def _event(action: EventAction, dedup_key: str) -> str:
    """An event body as version 0006 stored it (``jsonutil.dumps(build_event(...))``)."""
    trigger = TriggerSpec(ROUTING_KEY, "critical", "[OPS-12] Checkout down", "jira") if action == "trigger" else None
    event = PlannedEvent("ops-highest", action, dedup_key, ROUTING_KEY, 1, "matched", trigger)
    return jsonutil.dumps(build_event(event))


def _note(dedup_key: str, marker: str) -> str:
    """A write-back note as version 0006 queued it (``json.dumps`` of its fields)."""
    ticket = {"source": "jira", "id": "10042", "key": "OPS-12", "url": None}
    text = f"PagerDuty incident triggered by rule 'ops-highest'. dedup_key: {dedup_key}. [{marker}]"
    body = {"ticket": ticket, "action": "trigger", "dedup_key": dedup_key, "rule": "ops-highest", "marker": marker}
    return json.dumps(body | {"text": text})


def test_pending_events_and_notes_of_a_0006_database_go_out_once_after_the_upgrade(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    old = Store(db_url)
    db.upgrade(old.engine, "0006")
    sent_key, open_key = "ticketpager/jira/10042/ops-highest/1", "ticketpager/jira/10099/ops-highest/1"
    with old.engine.begin() as conn:  # what the 0006 engine and delivery left behind
        conn.execute(
            insert(outbox),
            [
                _row(clock, kind="event", action="trigger", dedup_key=sent_key, status="sent", sent_at=clock.now(),
                     body=_event(EventAction.TRIGGER, sent_key)),
                _row(clock, kind="writeback", action="trigger", dedup_key=sent_key, routing_key="",
                     body=_note(sent_key, f"tp:{sent_key}:trigger:1")),
                _row(clock, kind="event", action="trigger", dedup_key=open_key, ticket_id="10099", ticket_key="OPS-99",
                     body=_event(EventAction.TRIGGER, open_key)),
                _row(clock, kind="event", action="acknowledge", dedup_key=open_key, ticket_id="10099",
                     ticket_key="OPS-99", body=_event(EventAction.ACKNOWLEDGE, open_key)),
            ],
        )  # fmt: skip
    old.dispose()

    with MockPagerDuty() as pd, FakeJira(deployment="Cloud") as jira:
        for issue_id, key in (("10042", "OPS-12"), ("10099", "OPS-99")):
            jira.put(make_issue(issue_id, key, updated=clock.now() - timedelta(hours=1), base_url=jira.url))
        svc = make_service(  # upgrades to this version's schema
            db_url,
            rules_path,
            pd.url,
            clock,
            jira={"enabled": True, "url": jira.url, "email": "bot@example.com", "api_token": "t0ken",
                  "deployment": "cloud", "write_back": True},
        )  # fmt: skip
        with svc.store.engine.connect() as conn:
            moved = conn.execute(select(outbox.c.kind, outbox.c.destination).order_by(outbox.c.id)).all()
        assert [tuple(r) for r in moved] == [
            ("event", "pagerduty"),
            ("writeback", "jira"),
            ("event", "pagerduty"),
            ("event", "pagerduty"),
        ]

        svc.process_all()
        svc.process_all()  # a second round sends nothing again

        with svc.store.engine.connect() as conn:
            stored = {r.id: r.body for r in conn.execute(select(outbox.c.id, outbox.c.body)).all()}
        assert [(e["event_action"], e["dedup_key"]) for e in pd.events] == [
            ("trigger", open_key),
            ("acknowledge", open_key),
        ]  # the sent trigger is not sent again; the pending two once each, in order
        assert pd.events[0] == json.loads(stored[3])
        notes = [c["body"] for cs in jira.comments.values() for c in cs]
        markers = [f"tp:{sent_key}:trigger:1", f"tp:{open_key}:trigger:3", f"tp:{open_key}:acknowledge:4"]
        for marker in markers:  # the pending note, and one note per event sent after the upgrade
            assert sum(marker in n for n in notes) == 1, (marker, notes)
        assert len(notes) == 3
        assert "PagerDuty incident acknowledged (rule 'ops-highest')" in " ".join(notes)
        with svc.store.engine.connect() as conn:
            statuses = conn.execute(select(outbox.c.kind, outbox.c.destination, outbox.c.status)).all()
        assert {tuple(r) for r in statuses} == {
            ("event", "pagerduty", "sent"),
            ("writeback", "jira", "sent"),
        }
        svc.store.dispose()


def test_a_row_an_older_replica_writes_mid_rollout_is_delivered_by_its_kind(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """During a rolling upgrade a replica of the previous version still queues rows without a destination."""
    key = "ticketpager/jira/10099/ops-highest/1"
    with MockPagerDuty() as pd, FakeJira(deployment="Cloud") as jira:
        for issue_id, ticket_key in (("10042", "OPS-12"), ("10099", "OPS-99")):
            jira.put(make_issue(issue_id, ticket_key, updated=clock.now() - timedelta(hours=1), base_url=jira.url))
        svc = make_service(
            db_url,
            rules_path,
            pd.url,
            clock,
            jira={"enabled": True, "url": jira.url, "email": "bot@example.com", "api_token": "t0ken",
                  "deployment": "cloud", "write_back": True},
        )  # fmt: skip
        with svc.store.begin() as conn:  # no destination column value: what the 0006 code inserts
            conn.execute(
                insert(outbox),
                [
                    _row(clock, kind="event", action="trigger", dedup_key=key, ticket_id="10099",
                         ticket_key="OPS-99", body=_event(EventAction.TRIGGER, key), connection="jira"),
                    _row(clock, kind="writeback", action="trigger", dedup_key=key, routing_key="",
                         body=_note(key, f"tp:{key}:trigger:7"), connection="jira"),
                ],
            )  # fmt: skip
        svc.process_all()
        assert [(e["event_action"], e["dedup_key"]) for e in pd.events] == [("trigger", key)]
        assert [f"tp:{key}:trigger:7" in c["body"] for c in jira.comments["10042"]] == [True]  # to the source
        assert [f"tp:{key}:trigger:" in c["body"] for c in jira.comments["10099"]] == [True]  # the event's note
        with svc.store.engine.connect() as conn:
            assert {r.status for r in conn.execute(select(outbox.c.status)).all()} == {"sent"}
        svc.store.dispose()
