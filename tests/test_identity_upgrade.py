"""Migration 0010 (a ticket is (system, connection, id)): a database of version 0007 full of open incidents is
upgraded without a new page and without an orphaned incident — a version seen again pages nobody, and the
tickets' resolves go out under the dedup keys their incidents were triggered with. And, after it, the same
ticket id on two connections of one system is two tickets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, Table, func, insert, select

from connectors.pagerduty import build_event
from kernel import jsonutil
from kernel.clock import FakeClock
from kernel.model import EventAction, PlannedEvent, StatusCategory, TriggerSpec
from sync import db, schema
from sync.schema import changes, decisions, links, outbox, tickets
from sync.store import Store
from tests.factories import ROUTING_KEY, T0, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager import cli

OPEN = 25  # tickets with an open incident before the upgrade
RULE = "ops-highest"


def old_key(ticket_id: str) -> str:
    """The dedup key every version before 0010 wrote."""
    return f"ticketpager/jira/{ticket_id}/{RULE}/1"


def event_body(action: EventAction, key: str) -> str:
    trigger = TriggerSpec(ROUTING_KEY, "critical", "[OPS] down", "jira") if action is EventAction.TRIGGER else None
    return jsonutil.dumps(build_event(PlannedEvent(RULE, action, key, ROUTING_KEY, 1, "matched", trigger)))


def as_0007(table: Table) -> Table:
    """``table`` as version 0007 had it: without ``connection``."""
    columns = [Column(c.name, c.type, primary_key=c.primary_key) for c in table.columns if c.name != "connection"]
    return Table(table.name, MetaData(), *columns)


def fill_0007(store: Store) -> list[str]:
    """What the 0007 engine and delivery leave behind for ``OPEN`` paged tickets (their trigger sent), one of
    them with an acknowledge still pending in the outbox. Returns the ticket ids."""
    ids = [str(20000 + n) for n in range(OPEN)]
    now = T0
    changes, tickets, links, outbox, decisions = (
        as_0007(t) for t in (schema.changes, schema.tickets, schema.links, schema.outbox, schema.decisions)
    )
    with store.engine.begin() as conn:
        for n, ticket_id in enumerate(ids):
            t = ticket(ticket_id)
            key = old_key(ticket_id)
            change_id = conn.execute(
                insert(changes).values(
                    source="jira", delivery_id=f"wh-{ticket_id}", ticket_id=ticket_id, ticket_updated=t.updated,
                    origin="webhook", received_at=now, payload=jsonutil.dumps(change(t).to_json()),
                    status="processed", processed_at=now,
                )
            ).inserted_primary_key[0]  # fmt: skip
            conn.execute(
                insert(tickets).values(
                    source="jira", ticket_id=ticket_id, key=t.key, status_category="new", updated=t.updated,
                    version_hash=t.version_hash(), snapshot=jsonutil.dumps(t.to_json()), last_change_id=change_id,
                    open_incidents=1, recheck=False, processed_at=now,
                )
            )  # fmt: skip
            conn.execute(
                insert(links).values(
                    source="jira", ticket_id=ticket_id, rule=RULE, generation=1, dedup_key=key,
                    routing_key=ROUTING_KEY, state="triggered", created_at=now, updated_at=now,
                )
            )  # fmt: skip
            row: dict[str, Any] = {
                "kind": "event", "destination": "pagerduty", "source": "jira", "ticket_id": ticket_id,
                "ticket_key": t.key, "rule": RULE, "dedup_key": key, "generation": 1, "routing_key": ROUTING_KEY,
                "attempts": 1, "next_attempt_at": now, "created_at": now, "change_id": change_id,
            }  # fmt: skip
            conn.execute(insert(outbox).values(**row, action="trigger", status="sent", sent_at=now,
                                               body=event_body(EventAction.TRIGGER, key)))  # fmt: skip
            if n == 0:  # an acknowledge queued, not yet sent when the old version stopped
                conn.execute(insert(outbox).values(**row | {"attempts": 0}, action="acknowledge", status="pending",
                                                   body=event_body(EventAction.ACKNOWLEDGE, key)))  # fmt: skip
            conn.execute(
                insert(decisions).values(
                    change_id=change_id, source="jira", ticket_id=ticket_id, ticket_key=t.key, at=now,
                    outcome="paged", detail="{}",
                )
            )  # fmt: skip
    return ids


def test_a_0007_database_of_open_incidents_upgrades_without_a_page_or_an_orphan(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    old = Store(db_url)
    db.upgrade(old.engine, "0007")
    ids = fill_0007(old)
    old.dispose()

    with MockPagerDuty() as pd:
        service = make_service(db_url, rules_path, pd.url, clock)  # migrates to 0010
        try:
            with service.store.engine.connect() as conn:
                for table in (changes, tickets, links, outbox, decisions):
                    moved = conn.execute(select(func.count()).where(table.c.connection == "jira")).scalar_one()
                    assert moved == conn.execute(select(func.count()).select_from(table)).scalar_one() > 0
            assert service.store.status().open_incidents == OPEN

            # the same versions again (a poll re-reading them): nothing new is paged
            receive(service, [change(ticket(i), f"poll:{i}:again") for i in ids])
            service.process_all()
            assert [(e["event_action"], e["dedup_key"]) for e in pd.events] == [("acknowledge", old_key(ids[0]))]

            # every ticket is resolved: each resolve goes to the incident it opened before the upgrade
            done = [ticket(i, minutes=5, status="Done", category=StatusCategory.DONE) for i in ids]
            receive(service, [change(t) for t in done])
            service.process_all()
            resolves = [e["dedup_key"] for e in pd.events if e["event_action"] == "resolve"]
            assert sorted(resolves) == sorted(old_key(i) for i in ids)
            assert not [e for e in pd.events if e["event_action"] == "trigger"]
            assert service.store.status().open_incidents == 0
            assert [d["outcome"] for d in service.store.decisions_for("jira", ids[1])] == ["paged", "same_version",
                                                                                          "paged"]  # fmt: skip
        finally:
            service.store.dispose()


def test_the_same_ticket_id_on_two_connections_is_two_tickets(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    with MockPagerDuty() as pd:
        service = make_service(db_url, rules_path, pd.url, clock)
        try:
            default, other = ticket("7"), ticket("7", connection="eng-jira")
            # the same delivery id from two instances (a poll's poll:<id>:<updated>) is two deliveries
            assert receive(service, [change(default, "poll:7:x"), change(other, "poll:7:x")]) == 2
            service.process_all()
            assert sorted(e["dedup_key"] for e in pd.events) == [
                "ticketpager/jira/7/ops-highest/1",
                "ticketpager/jira/eng-jira/7/ops-highest/1",
            ]
            # resolving one instance's ticket leaves the other's incident open
            receive(service, [change(ticket("7", connection="eng-jira", minutes=5, category=StatusCategory.DONE))])
            service.process_all()
            assert [e["dedup_key"] for e in pd.events if e["event_action"] == "resolve"] == [
                "ticketpager/jira/eng-jira/7/ops-highest/1"
            ]
            assert service.store.status().open_incidents == 1 and service.store.status().tickets == 2
            assert [d["outcome"] for d in service.store.decisions_for("jira", "7")] == ["paged"]
            assert [d["outcome"] for d in service.store.decisions_for("jira", "7", connection="eng-jira")] == [
                "paged",
                "paged",
            ]
        finally:
            service.store.dispose()


def test_dead_letters_name_the_connection_of_their_ticket(
    db_url: str, rules_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    with MockPagerDuty() as pd:
        service = make_service(db_url, rules_path, pd.url, clock)
        try:
            pd.fail_next(2, 400)
            receive(service, [change(ticket("7")), change(ticket("7", connection="eng-jira"))])
            service.process_all()
        finally:
            service.store.dispose()
    assert cli.main(["--database-url", db_url, "deadletters", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted((d["ticket"], d["connection"]) for d in listed) == [("OPS-7", "eng-jira"), ("OPS-7", "jira")]
    assert cli.main(["--database-url", db_url, "deadletters", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split(" rule=")[0].split(" ", 3)[3] for line in lines if line.startswith("#")) == [
        "OPS-7",
        "OPS-7 (eng-jira)",
    ]
