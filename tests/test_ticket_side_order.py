"""A ticket's notes and updates about one incident reach it in the order they were queued, whichever of the ticket
workers (``engine.write_back_workers``, two by default) is free: the note that the ticket paged comes before a
person's acknowledgement, and the acknowledgement's transition to In Progress never lands after the resolve's to
Done (which would leave the ticket open under a resolved incident). Rows of other incidents do not wait. Real
SQLite and PostgreSQL, the PagerDuty Events API and Jira mocked at the wire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses
from sqlalchemy import select

from kernel.clock import FakeClock
from kernel.model import TicketNote, TicketUpdate
from sync.delivery import CLAIM_BATCH, TICKET_KINDS, Delivery
from sync.repos import outbox as outbox_repo
from sync.schema import outbox
from tests.factories import change, ticket
from tests.harness import make_service, receive
from ticketpager.service import Service

PD_URL = "https://events.pagerduty.test/v2/enqueue"
JIRA = "https://jira.example.com"
COMMENTS = re.compile(rf"{re.escape(JIRA)}/rest/api/2/issue/\d+/comment")


@pytest.fixture
def service(db_url: str, rules_path: Path, clock: FakeClock) -> Iterator[Service]:
    """A replica whose Jira connection writes a note back to the ticket after each page."""
    svc = make_service(
        db_url, rules_path, PD_URL, clock,
        jira={"enabled": True, "url": JIRA, "api_token": "pat-token", "deployment": "datacenter",
              "webhook_secrets": ["s3cret"], "write_back": True},
    )  # fmt: skip
    svc.heartbeat.register()
    yield svc
    svc.store.dispose()


def _pagerduty_and_jira_accept(rsps: responses.RequestsMock) -> list[str]:
    """PagerDuty accepts every page; Jira has no comment yet and takes each one; returns the comments posted."""
    posted: list[str] = []

    def page(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        key = json.loads(request.body or b"{}")["dedup_key"]
        return 202, {}, json.dumps({"status": "success", "dedup_key": key})

    def comment(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        posted.append(str(json.loads(request.body or b"{}")["body"]))
        return 201, {}, json.dumps({"id": str(len(posted)), "body": posted[-1]})

    rsps.add_callback(responses.POST, PD_URL, callback=page)
    rsps.add(responses.GET, COMMENTS, json={"startAt": 0, "maxResults": 100, "total": 0, "comments": []})
    rsps.add_callback(responses.POST, COMMENTS, callback=comment)
    return posted


def _acknowledgement_queued(service: Service, note_id: int) -> int:
    """What the reverse worker queues when a person acknowledges: an update to the ticket about the same incident
    (the note's ``dedup_key``); returns its row id."""
    with service.store.begin() as conn:
        note = conn.execute(select(outbox).where(outbox.c.id == note_id)).mappings().one()
        outbox_repo.enqueue(
            conn, kind=TicketUpdate.KIND, destination=note["destination"], source=note["source"],
            connection=note["connection"], ticket_id=note["ticket_id"], ticket_key=note["ticket_key"],
            rule=note["rule"], action="acknowledged", dedup_key=note["dedup_key"], generation=note["generation"],
            limit_key="", body="{}", change_id=None, now=service.clock.now(),
        )  # fmt: skip
        return int(conn.execute(select(outbox.c.id).order_by(outbox.c.id.desc()).limit(1)).scalar_one())


def _paged_and_acknowledged(service: Service, rsps: responses.RequestsMock, ticket_id: str) -> tuple[int, int]:
    """The ticket pages (its note for the ticket queued with the page's mark), then a person acknowledges: returns
    the note's and the acknowledgement's row ids."""
    _pagerduty_and_jira_accept(rsps)
    receive(service, [change(ticket(ticket_id))])
    assert service.engine.drain() == 1
    assert service.delivery("p0", heartbeat=service.heartbeat).run_once(CLAIM_BATCH) == 1
    with service.store.engine.connect() as conn:
        note_id = conn.execute(select(outbox.c.id).where(outbox.c.kind == TicketNote.KIND)).scalar_one()
    return note_id, _acknowledgement_queued(service, note_id)


def _ticket_worker(service: Service, name: str) -> Delivery:
    return service.delivery(name, heartbeat=service.heartbeat, kinds=TICKET_KINDS)


def test_a_tickets_rows_about_one_incident_go_out_one_at_a_time_in_order(
    service: Service, rsps: responses.RequestsMock
) -> None:
    posted = _pagerduty_and_jira_accept(rsps)
    receive(service, [change(ticket("31001")), change(ticket("31002"))])
    assert service.engine.drain() == 2
    assert service.delivery("p0", heartbeat=service.heartbeat).run_once(CLAIM_BATCH) == 2  # two pages, two notes
    with service.store.engine.connect() as conn:
        notes = conn.execute(select(outbox.c.id).where(outbox.c.kind == TicketNote.KIND).order_by(outbox.c.id))
        first_note, other_note = notes.scalars().all()
    ack = _acknowledgement_queued(service, first_note)

    one, two = _ticket_worker(service, "t0"), _ticket_worker(service, "t1")
    claimed = one.claim(CLAIM_BATCH)
    assert {r["id"] for r in claimed} == {first_note, other_note}, "both incidents' notes, not the acknowledgement"
    assert two.claim(CLAIM_BATCH) == [], "the acknowledgement waits for the note that its ticket paged"

    [note] = [r for r in claimed if r["id"] == first_note]
    one.deliver(note)
    assert len(posted) == 1 and "triggered by rule" in posted[0]
    assert [r["id"] for r in two.claim(CLAIM_BATCH)] == [ack], "once the note is written, the acknowledgement goes"
    one.hand_back()
    two.hand_back()


def test_a_failing_note_holds_its_incidents_later_rows_until_it_is_written_or_dead(
    service: Service, rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    """Jira answers 503 to the note: it is retried later, and the acknowledgement after it waits (it is not sent
    ahead of it). Once the note is written, the acknowledgement goes."""
    note_id, ack = _paged_and_acknowledged(service, rsps, "31011")
    rsps.replace(responses.POST, COMMENTS, status=503, json={"errorMessages": ["down for maintenance"]})

    worker = _ticket_worker(service, "t0")
    for _ in range(3):  # each claim takes the note alone (two rows would be claimed were the acknowledgement free)
        assert worker.run_once(CLAIM_BATCH) == 1
        clock.advance(60)  # its retry is due (the backoff's cap)
        service.heartbeat.beat()
    rsps.replace(responses.POST, COMMENTS, status=201, json={"id": "1", "body": "noted"})
    assert worker.run_once(CLAIM_BATCH) == 1  # the note, written
    with service.store.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.status, outbox.c.attempts).order_by(outbox.c.id)).all()
    assert [tuple(r) for r in rows if r.id in (note_id, ack)] == [(note_id, "sent", 4), (ack, "pending", 0)]
    assert [r["id"] for r in worker.claim(CLAIM_BATCH)] == [ack]


def test_a_note_that_becomes_a_dead_letter_lets_its_incidents_later_rows_go(
    service: Service, rsps: responses.RequestsMock
) -> None:
    """Jira refuses the note for good (400): it becomes a dead letter at once, and the acknowledgement behind it is
    no longer held."""
    note_id, ack = _paged_and_acknowledged(service, rsps, "31021")
    rsps.replace(responses.POST, COMMENTS, status=400, json={"errorMessages": ["comment body is invalid"]})

    worker = _ticket_worker(service, "t0")
    assert worker.run_once(CLAIM_BATCH) == 1  # the note alone, refused
    with service.store.engine.connect() as conn:
        status = conn.execute(select(outbox.c.status).where(outbox.c.id == note_id)).scalar_one()
    assert status == "dead"
    assert [r["id"] for r in worker.claim(CLAIM_BATCH)] == [ack]
