"""Issue 19: a delivery worker writes once per batch during a burst, not once per page and once per claim.

The sends of a batch are marked ``sent`` together at its end, in the transaction that also claims the next batch
when this one came back full; a send accepted longer ago than ``MARK_WITHIN_SECONDS`` is marked before the
batch's next send; a stopping worker hands back the batch it claimed ahead. The service's workers leave the sends of
a batch that was not full to their next claim's transaction, within that bound: at low rates a page costs one write,
and a stop marks what is left. Only while the replica is alone: beside
another replica, whose rate limit counts this one's sends from the outbox, every send is marked at once. Real SQLite
and PostgreSQL, the PagerDuty Events API mocked at the wire, write transactions counted by the database engine's
commits, replicas known by their heartbeats.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
import responses
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.exc import DBAPIError

from kernel.clock import FakeClock
from kernel.model import StatusCategory
from sync.delivery import CLAIM_BATCH, MARK_WITHIN_SECONDS, QUICK_SEND_SECONDS, TICKET_KINDS, Delivery
from sync.metrics import METRICS
from sync.schema import outbox
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive, wait_until
from ticketpager.service import Service

PD_URL = "https://events.pagerduty.test/v2/enqueue"


@pytest.fixture
def service(db_url: str, rules_path: Path, clock: FakeClock) -> Iterator[Service]:
    """A replica alone on its database: its heartbeat saw no other."""
    svc = make_service(db_url, rules_path, PD_URL, clock)
    svc.heartbeat.register()
    assert svc.heartbeat.alone()
    yield svc
    svc.store.dispose()


def _worker(service: Service, name: str = "0") -> Delivery:
    return service.delivery(name, heartbeat=service.heartbeat)


def _accepting(rsps: responses.RequestsMock, on_send: Callable[[], object] | None = None) -> list[tuple[str, str]]:
    """PagerDuty accepts every page (``on_send`` runs while it is being sent); returns (action, dedup key) sent."""
    sent: list[tuple[str, str]] = []

    def accept(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body or b"{}")
        sent.append((body["event_action"], body["dedup_key"]))
        if on_send is not None:
            on_send()
        return 202, {}, json.dumps({"status": "success", "dedup_key": body["dedup_key"]})

    rsps.add_callback("POST", PD_URL, callback=accept)
    return sent


def _commits(service: Service) -> list[int]:
    """The database engine's commits from now on (a one-item list, counted up)."""
    counted = [0]

    def commit(_conn: object) -> None:
        counted[0] += 1

    event.listen(service.store.engine, "commit", commit)
    return counted


def test_a_burst_is_sent_with_one_write_per_batch_and_in_order(
    service: Service, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """Ten tickets page, and the first is resolved: its resolve waits for its trigger, which the first batch
    sends. The first batch's ten marks and the claim of the resolve are one transaction: three writes in all
    (a claim, the first batch's marks with the next claim, the resolve's mark), where a write per claim and
    per page made thirteen. Each row's ``sent_at`` is when PagerDuty accepted it."""
    accepted_at: list[datetime] = []

    def answer_in_10_ms() -> None:
        clock.advance(0.01)
        accepted_at.append(clock.now())

    sent = _accepting(rsps, answer_in_10_ms)
    receive(service, [change(ticket(str(20001 + n), minutes=0)) for n in range(CLAIM_BATCH)])
    receive(service, [change(ticket("20001", minutes=1, status="Done", category=StatusCategory.DONE))])
    assert service.engine.drain() == CLAIM_BATCH + 1
    worker = _worker(service)
    commits = _commits(service)
    assert worker.drain() == CLAIM_BATCH + 1
    assert commits[0] == 3, f"{commits[0]} write transactions for two batches"
    assert [a for a, _ in sent] == ["trigger"] * CLAIM_BATCH + ["resolve"]
    assert sent[-1][1] == sent[0][1], "the resolve is the first ticket's"
    with service.store.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.status, outbox.c.sent_at).order_by(outbox.c.sent_at)).all()
    assert [r.status for r in rows] == ["sent"] * (CLAIM_BATCH + 1)
    stored = [r.sent_at.replace(tzinfo=None) for r in rows]
    assert stored == [t.replace(tzinfo=None) for t in accepted_at]


def _marked_at_each_send(service: Service, clock: FakeClock, seconds: float) -> tuple[list[int], Callable[[], None]]:
    """A PagerDuty that answers in ``seconds`` (on the fake clock): how many rows were marked sent as each page
    reached it, and the callback that records it."""
    marked_when_sending: list[int] = []

    def answer() -> None:
        with service.store.engine.connect() as conn:
            marked = conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'sent'")).scalar_one()
        marked_when_sending.append(int(marked))
        clock.advance(seconds)

    return marked_when_sending, answer


def test_what_was_accepted_longer_ago_than_the_bound_is_marked_before_the_next_send(
    service: Service, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """PagerDuty answers in 0.1 s: pages 1 to 4 were accepted 0.3 s to 0 s before the fifth send, the first longer
    ago than MARK_WITHIN_SECONDS: all four are marked before it, not at the batch's end."""
    assert 0.2 < MARK_WITHIN_SECONDS < 0.3 and QUICK_SEND_SECONDS > 0.1
    marked_when_sending, answer = _marked_at_each_send(service, clock, 0.1)
    _accepting(rsps, answer)
    receive(service, [change(ticket(str(20101 + n))) for n in range(6)])
    assert service.engine.drain() == 6
    assert _worker(service).run_once(CLAIM_BATCH) == 6
    assert marked_when_sending == [0, 0, 0, 0, 4, 4]
    assert service.store.status().outbox_pending == 0


def test_after_slow_sends_each_is_marked_before_the_next(
    service: Service, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """PagerDuty answers in 0.2 s, slower than QUICK_SEND_SECONDS: the next send may be slow too (a PagerDuty
    slowing down), so what was accepted is marked before it, not kept unmarked while it lasts."""
    marked_when_sending, answer = _marked_at_each_send(service, clock, 0.2)
    _accepting(rsps, answer)
    receive(service, [change(ticket(str(20151 + n))) for n in range(4)])
    assert service.engine.drain() == 4
    assert _worker(service).run_once(CLAIM_BATCH) == 4
    assert marked_when_sending == [0, 1, 2, 3]


def test_what_was_accepted_is_marked_before_a_retry_is_sent(
    service: Service, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """A retry may wait longer for its answer (its timeout grows): the quick sends before it in the batch are
    marked first."""
    marked_when_sending: list[int] = []
    keys: list[str] = []

    def accept(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body or b"{}")
        with service.store.engine.connect() as conn:
            marked = conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'sent'")).scalar_one()
        marked_when_sending.append(int(marked))
        keys.append(body["dedup_key"])
        clock.advance(0.01)
        if len(keys) == 1:  # the first page fails: retried in 0.5-1 s (backoff_base_seconds 1, full jitter)
            return 500, {}, json.dumps({"status": "error"})
        return 202, {}, json.dumps({"status": "success", "dedup_key": body["dedup_key"]})

    rsps.add_callback("POST", PD_URL, callback=accept)
    receive(service, [change(ticket(str(20161 + n))) for n in range(4)])
    assert service.engine.drain() == 4
    worker = _worker(service)
    assert worker.run_once(CLAIM_BATCH) == 4  # the first failed, three sent
    clock.advance(0.1)
    receive(service, [change(ticket(str(20171 + n))) for n in range(2)])  # due before the retry
    assert service.engine.drain() == 2
    clock.advance(2)
    assert worker.run_once(CLAIM_BATCH) == 3
    assert keys[-1] == keys[0], "the retry goes last in the batch"
    assert marked_when_sending[-3:] == [3, 3, 5], "the two new pages are marked before the retry is sent"
    assert service.store.status().outbox_pending == 0


def test_a_rate_limit_hold_marks_what_the_batch_sent_before_it_reschedules_the_backlog(
    db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """Two a minute for the routing key, three pages in one batch: the third is held. The hold's transaction marks
    the two sent first, so the backlog it reschedules to the limiter's slots is the third page alone: it goes at
    the first free slot, a minute on, and only it is counted as held back."""
    svc = make_service(db_url, rules_path, PD_URL, clock, pagerduty={"rate_limit_per_minute": 2})
    try:
        svc.heartbeat.register()
        sent = _accepting(rsps)
        receive(svc, [change(ticket(str(20181 + n))) for n in range(3)])
        assert svc.engine.drain() == 3
        held_before = _rate_limited()
        worker = _worker(svc)
        assert worker.run_once(CLAIM_BATCH) == 3
        assert len(sent) == 2 and _rate_limited() - held_before == 1
        with svc.store.engine.connect() as conn:
            statuses = conn.execute(select(outbox.c.status).order_by(outbox.c.id)).scalars().all()
        assert statuses == ["sent", "sent", "pending"]
        clock.advance(62)
        svc.heartbeat.beat()
        assert worker.run_once(CLAIM_BATCH) == 1, "the held page went at the first free slot"
        assert len(sent) == 3 and len({key for _, key in sent}) == 3, "nothing sent twice"
    finally:
        svc.store.dispose()


def _rate_limited() -> float:
    labels = {"action": "trigger", "outcome": "rate_limited"}
    return METRICS.registry.get_sample_value("ticketpager_events_total", labels) or 0.0


def test_a_stopping_worker_hands_back_the_batch_it_claimed_ahead(
    service: Service, rsps: responses.RequestsMock
) -> None:
    """A full batch claims the next with its marks; the worker then stops: those rows are free at once for
    another worker (or the restarted replica), not held for the 60 s claim."""
    sent = _accepting(rsps)
    receive(service, [change(ticket(str(20201 + n))) for n in range(CLAIM_BATCH + 5)])
    assert service.engine.drain() == CLAIM_BATCH + 5
    stopping = _worker(service, "stopping")
    assert stopping.run_once(CLAIM_BATCH) == CLAIM_BATCH
    with service.store.engine.connect() as conn:
        held = "SELECT count(*) FROM outbox WHERE status = 'pending' AND claimed_by LIKE '%/stopping'"
        assert conn.execute(text(held)).scalar() == 5, "the next batch was claimed with the marks"
    service.stopping.set()
    service._delivery_loop(stopping, service.outbox_wake)  # the worker's loop ends at once, handing them back
    assert _worker(service, "next").run_once() == 5  # no clock advance needed
    assert len(sent) == CLAIM_BATCH + 5 and len({key for _, key in sent}) == CLAIM_BATCH + 5
    assert service.store.status().outbox_pending == 0


def test_beside_another_replica_each_send_is_marked_at_once(
    service: Service, db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """Another replica heartbeats on the same database: it counts this replica's sends for the rate limit from
    their marks, so none waits for its batch's end. Once it is gone (silent past the replica timeout), this
    replica batches its marks again."""
    marked_when_sending, answer = _marked_at_each_send(service, clock, 0.01)
    _accepting(rsps, answer)
    other = make_service(db_url, rules_path, PD_URL, clock)
    try:
        other.heartbeat.register()
        service.heartbeat.beat()
        assert not service.heartbeat.alone()
        receive(service, [change(ticket(str(20301 + n))) for n in range(3)])
        assert service.engine.drain() == 3
        assert _worker(service).run_once(CLAIM_BATCH) == 3
        assert marked_when_sending == [0, 1, 2], "each send marked before the next"
        clock.advance(service.settings.engine.replica_timeout_seconds + 1)  # the other replica stopped beating
        service.heartbeat.beat()
        assert service.heartbeat.alone()
        receive(service, [change(ticket(str(20401 + n))) for n in range(3)])
        assert service.engine.drain() == 3
        assert _worker(service).run_once(CLAIM_BATCH) == 3
        assert marked_when_sending[3:] == [3, 3, 3], "alone again: marked with the batch"
        assert service.store.status().outbox_pending == 0
        other.heartbeat.beat()
        service.heartbeat.beat()
        receive(service, [change(ticket(str(20501 + n))) for n in range(CLAIM_BATCH + 2)])
        assert service.engine.drain() == CLAIM_BATCH + 2
        assert _worker(service).run_once(CLAIM_BATCH) == CLAIM_BATCH
        with service.store.engine.connect() as conn:
            claimed = conn.execute(text("SELECT count(*) FROM outbox WHERE claimed_until IS NOT NULL")).scalar_one()
        assert claimed == 0, "beside another replica a full batch claims no next batch ahead"
    finally:
        other.store.dispose()


JIRA = "https://jira.example.com"


def _writing_back(db_url: str, rules_path: Path, clock: FakeClock) -> Service:
    """A service whose Jira connection writes a note back to the ticket after each page (one ticket worker)."""
    return make_service(
        db_url, rules_path, PD_URL, clock,
        jira={"enabled": True, "url": JIRA, "api_token": "pat-token", "deployment": "datacenter",
              "webhook_secrets": ["s3cret"], "write_back": True},
        engine={"write_back_workers": 1},
    )  # fmt: skip


def test_notes_are_marked_one_by_one_their_sends_have_no_timeout_bound(
    db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """A note to a ticket is several calls (look for its marker, then post it) with no one timeout: a note that
    hangs could keep the batch's earlier notes unmarked past their claim, and a note sent twice is a duplicate
    comment. So even alone, each note is marked before the next is sent."""
    svc = _writing_back(db_url, rules_path, clock)
    try:
        svc.heartbeat.register()
        _accepting(rsps)
        marked_when_posting: list[int] = []

        def post(_request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
            with svc.store.engine.connect() as conn:
                query = "SELECT count(*) FROM outbox WHERE kind = 'writeback' AND status = 'sent'"
                marked_when_posting.append(int(conn.execute(text(query)).scalar_one()))
            return 201, {}, json.dumps({"id": "1", "body": "noted"})

        comments = re.compile(rf"{re.escape(JIRA)}/rest/api/2/issue/\d+/comment")
        rsps.add(responses.GET, comments, json={"startAt": 0, "maxResults": 100, "total": 0, "comments": []})
        rsps.add_callback(responses.POST, comments, callback=post)
        receive(svc, [change(ticket(str(20601 + n))) for n in range(3)])
        assert svc.engine.drain() == 3
        assert _worker(svc).run_once(CLAIM_BATCH) == 3  # the pages: their notes are queued with their marks
        notes = svc.delivery("t0", heartbeat=svc.heartbeat, kinds=TICKET_KINDS)
        assert notes.run_once(CLAIM_BATCH, defer_marks=True) == 3  # as the service's ticket workers run it
        assert marked_when_posting == [0, 1, 2]
        assert notes.marks_due_in() is None, "the last note too is marked at once, not left for the next claim"
        assert svc.store.status().outbox_pending == 0
    finally:
        svc.store.dispose()


def test_a_worker_whose_heartbeat_is_overdue_hands_back_the_batch_it_claimed_ahead(
    service: Service, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """It may be presumed dead, so it sends nothing; the rows it claimed ahead with its last batch's marks are
    free at once for the others, not held until their claim expires."""
    _accepting(rsps)
    receive(service, [change(ticket(str(20701 + n))) for n in range(CLAIM_BATCH + 3)])
    assert service.engine.drain() == CLAIM_BATCH + 3
    worker = _worker(service)
    assert worker.run_once(CLAIM_BATCH) == CLAIM_BATCH
    clock.advance(service.settings.engine.replica_timeout_seconds)  # no beat meanwhile: overdue
    assert not service.heartbeat.healthy()
    assert worker.run_once(CLAIM_BATCH) == 0
    with service.store.engine.connect() as conn:
        claimed = conn.execute(text("SELECT count(*) FROM outbox WHERE claimed_until IS NOT NULL")).scalar_one()
    assert claimed == 0, "the batch claimed ahead was handed back"


def test_a_note_that_cannot_be_written_does_not_undo_the_batchs_marks(
    db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """Three pages in one batch, the second with an action this version cannot describe in a note (a row a newer
    release wrote, say): its note is dropped with an error in the log; the three pages are marked sent, and the
    other two notes are queued, in the batch's one transaction."""
    svc = _writing_back(db_url, rules_path, clock)
    try:
        svc.heartbeat.register()
        sent = _accepting(rsps)
        receive(svc, [change(ticket(str(20801 + n))) for n in range(3)])
        assert svc.engine.drain() == 3
        with svc.store.begin() as conn:
            second = conn.execute(select(outbox.c.id).order_by(outbox.c.id).offset(1).limit(1)).scalar_one()
            conn.execute(outbox.update().where(outbox.c.id == second).values(action="escalate"))
        with caplog.at_level("ERROR", logger="ticketpager.delivery"):
            assert _worker(svc).run_once(CLAIM_BATCH) == 3
        assert len(sent) == 3
        with svc.store.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.kind, outbox.c.status).order_by(outbox.c.id)).all()
        assert [tuple(r) for r in rows] == [("event", "sent")] * 3 + [("writeback", "pending")] * 2
        assert f"about outbox row {second} could not be rendered" in caplog.text
    finally:
        svc.store.dispose()


# -- a batch that was not full: its sends marked by the worker's next claim (the service's workers) --------------


def _statuses(service: Service) -> list[tuple[str, str | None]]:
    """(status, claimed_by's worker) of every outbox row, in id order."""
    with service.store.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.status, outbox.c.claimed_by).order_by(outbox.c.id)).all()
    return [(r.status, r.claimed_by and r.claimed_by.rsplit("/", 1)[-1]) for r in rows]


def test_at_low_rates_the_next_claim_marks_the_last_page_one_write_per_page(
    service: Service, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """Pages arrive one at a time, 0.1 s apart, alone on the database: each batch holds one page. The worker leaves
    its page to be marked by its next claim, in the claim's transaction: three pages cost four writes (three claims,
    the last page's mark at its bound), where a claim and a mark per page made six. Until its mark a page stays the
    worker's (no other claims it), and it is stored as sent when PagerDuty accepted it."""
    accepted_at: list[datetime] = []

    def answer_in_10_ms() -> None:
        clock.advance(0.01)
        accepted_at.append(clock.now())

    sent = _accepting(rsps, answer_in_10_ms)
    worker, other = _worker(service, "w"), _worker(service, "other")
    commits = _commits(service)
    writes = 0  # the worker's
    for n in range(3):
        receive(service, [change(ticket(str(20901 + n)))])
        assert service.engine.drain() == 1
        before = commits[0]
        assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 1
        writes += commits[0] - before
        assert worker.marks_due_in() == pytest.approx(MARK_WITHIN_SECONDS)
        assert _statuses(service)[n] == ("pending", "w"), "sent, not yet marked: still the worker's"
        assert other.run_once(CLAIM_BATCH) == 0, "no other worker claims (and sends) it again"
        clock.advance(0.09)
    assert _statuses(service)[:2] == [("sent", "w")] * 2
    assert writes == 3, f"{writes} writes for three pages: one claim each, the marks inside them"
    clock.advance(MARK_WITHIN_SECONDS)
    assert worker.marks_due_in() == 0.0
    before = commits[0]
    assert worker.run_once(CLAIM_BATCH, defer_marks=True) == 0  # no look first: the claim marks the last page
    assert worker.marks_due_in() is None
    assert commits[0] - before == 1
    assert [a for a, _ in sent] == ["trigger"] * 3
    with service.store.engine.connect() as conn:
        stored = conn.execute(select(outbox.c.sent_at).order_by(outbox.c.id)).scalars().all()
    assert [t.replace(tzinfo=None) for t in stored] == [t.replace(tzinfo=None) for t in accepted_at]


def test_a_later_event_of_an_incident_goes_out_with_the_claim_that_marks_its_trigger(
    service: Service, rsps: responses.RequestsMock
) -> None:
    """The ticket pages, then is resolved: the resolve waits for its trigger's mark. Another worker finds nothing
    to claim; the worker that sent the trigger marks it and claims the resolve in one transaction, and sends it."""
    sent = _accepting(rsps)
    worker, other = _worker(service, "w"), _worker(service, "other")
    receive(service, [change(ticket("20951", minutes=0))])
    assert service.engine.drain() == 1
    assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 1
    receive(service, [change(ticket("20951", minutes=1, status="Done", category=StatusCategory.DONE))])
    assert service.engine.drain() == 1
    assert other.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 0, "the resolve waits for its trigger"
    commits = _commits(service)
    assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 1
    assert commits[0] == 1, "the trigger's mark and the resolve's claim: one transaction"
    assert [a for a, _ in sent] == ["trigger", "resolve"] and sent[0][1] == sent[1][1]
    assert _statuses(service) == [("sent", "w"), ("pending", "w")]
    worker.hand_back()  # the worker stops: what it sent is marked
    assert _statuses(service) == [("sent", "w"), ("sent", "w")]


def test_a_page_whose_mark_queues_its_note_for_the_ticket_is_marked_at_once(
    db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """The tickets' connection writes back: a page's mark queues the note that it paged. Left to the batch's end or
    the next claim, that note would wait too, and a person acknowledging at once could see their acknowledgement
    on the ticket before it. So each page is marked as soon as PagerDuty accepted it, its note queued with it:
    within one batch (each page's note is queued before the next page is sent) and after it (nothing is left to
    the next claim). A ticket worker is woken at the first note, not at the batch's end."""
    svc = _writing_back(db_url, rules_path, clock)
    try:
        svc.heartbeat.register()
        assert svc.heartbeat.alone()
        queued_when_sending: list[tuple[int, int, int]] = []  # (pages marked, notes queued, ticket workers woken)
        woken = svc.write_back_wake.count

        def count() -> None:
            with svc.store.engine.connect() as conn:
                query = "SELECT count(*) FROM outbox WHERE kind = :kind AND status = :status"
                marked = conn.execute(text(query), {"kind": "event", "status": "sent"}).scalar_one()
                notes = conn.execute(text(query), {"kind": "writeback", "status": "pending"}).scalar_one()
            queued_when_sending.append((int(marked), int(notes), svc.write_back_wake.count - woken))

        sent = _accepting(rsps, count)
        receive(svc, [change(ticket(str(20971 + n))) for n in range(3)])
        assert svc.engine.drain() == 3
        worker = _worker(svc)
        assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 3
        assert [a for a, _ in sent] == ["trigger"] * 3
        assert queued_when_sending == [(0, 0, 0), (1, 1, 1), (2, 2, 1)], "each page marked, its note queued, at once"
        assert svc.write_back_wake.count - woken == 1, "three notes: one claim's worth, one worker woken"
        assert worker.marks_due_in() is None, "nothing left to the next claim"
        with svc.store.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.kind, outbox.c.status).order_by(outbox.c.id)).all()
        assert [tuple(r) for r in rows] == [("event", "sent")] * 3 + [("writeback", "pending")] * 3
    finally:
        svc.store.dispose()


def test_with_claims_too_short_to_hold_a_mark_back_each_page_is_marked_at_once(
    db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """A claim of 20 s against PagerDuty's 10 s timeout: three timeouts do not fit in it, so a send left unmarked
    could outlive its claim, and another worker would send it again. Such settings mark every page at once."""
    svc = make_service(db_url, rules_path, PD_URL, clock, engine={"claim_seconds": 20})
    try:
        svc.heartbeat.register()
        assert svc.heartbeat.alone()
        sent = _accepting(rsps)
        commits = _commits(svc)
        receive(svc, [change(ticket(str(20981 + n))) for n in range(2)])
        assert svc.engine.drain() == 2
        before = commits[0]
        worker = _worker(svc)
        assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 2
        assert len(sent) == 2
        assert worker.marks_due_in() is None
        assert [s for s, _ in _statuses(svc)] == ["sent", "sent"]
        assert commits[0] - before == 5, "the claim, then per page its claim renewed and its mark"
    finally:
        svc.store.dispose()


def test_beside_another_replica_a_batch_that_was_not_full_is_marked_at_its_end(
    service: Service, db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """Another replica counts this one's sends from their marks (its rate limit): nothing waits for a next claim."""
    _accepting(rsps)
    other = make_service(db_url, rules_path, PD_URL, clock)
    try:
        other.heartbeat.register()
        service.heartbeat.beat()
        assert not service.heartbeat.alone()
        receive(service, [change(ticket("20961"))])
        assert service.engine.drain() == 1
        worker = _worker(service)
        assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 1
        assert worker.marks_due_in() is None
        assert [s for s, _ in _statuses(service)] == ["sent"]
    finally:
        other.store.dispose()


def test_a_worker_whose_heartbeat_is_overdue_marks_the_page_it_left_to_mark(
    service: Service, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """It sends nothing while it may be presumed dead, but the page PagerDuty already accepted is marked (its claim
    is still its own), not left to be sent again after a takeover."""
    sent = _accepting(rsps)
    receive(service, [change(ticket("20971"))])
    assert service.engine.drain() == 1
    worker = _worker(service)
    assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 1
    clock.advance(service.settings.engine.replica_timeout_seconds)  # no beat meanwhile: overdue
    assert not service.heartbeat.healthy()
    assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 0
    assert worker.marks_due_in() is None
    assert [s for s, _ in _statuses(service)] == ["sent"] and len(sent) == 1


def test_serve_sends_pages_arriving_one_by_one_with_a_write_each_and_marks_the_last_within_the_bound(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's workers, alone on the database, PagerDuty on loopback: five pages stored 30 ms apart, each its
    own batch. The delivery threads write six times (a claim per page, the marks inside the next, the last page's
    mark), where a claim and a mark per page made ten; the last page is marked sent within about the bound (2 s
    here, so that a slow machine's page cycle stays within it)."""
    monkeypatch.setattr("sync.delivery.MARK_WITHIN_SECONDS", 2.0)
    service = make_service(db_url, rules_path, pd.url, clock)
    delivery_writes: list[str] = []

    def commit(_conn: object) -> None:
        if threading.current_thread().name.startswith("ticketpager-delivery"):
            delivery_writes.append(threading.current_thread().name)

    service.start()
    try:
        assert wait_until(service.heartbeat.alone)
        event.listen(service.store.engine, "commit", commit)
        for n in range(5):
            receive(service, [change(ticket(str(21001 + n)))])
            service.wake.set()  # what the webhook writer does after its commit
            assert wait_until(functools.partial(_pages_are, pd, n + 1))
            time.sleep(0.03)
        last_sent = time.monotonic()
        assert wait_until(lambda: service.store.status().outbox_pending == 0)
        assert time.monotonic() - last_sent < 2.0 + 1.0
        assert len(delivery_writes) <= 7, f"{len(delivery_writes)} delivery writes for five pages"
    finally:
        service.stop()
        service.store.dispose()


def _pages_are(pd: MockPagerDuty, count: int) -> bool:
    return len(pd.events) == count


def test_a_page_taken_over_while_its_batch_went_on_is_not_marked_by_this_worker(
    service: Service, clock: FakeClock, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """Three pages in one batch, marked together at its end. While the third is being sent, another replica takes
    the first over (as after a heartbeat gap): the batch's marks leave that row to its new holder, with a warning,
    and mark the other two."""
    receive(service, [change(ticket(str(21101 + n))) for n in range(3)])
    assert service.engine.drain() == 3
    with service.store.engine.connect() as conn:
        first = conn.execute(select(outbox.c.id).order_by(outbox.c.id).limit(1)).scalar_one()
    sends = [0]

    def take_over_the_first() -> None:
        sends[0] += 1
        clock.advance(0.01)
        if sends[0] == 3:
            with service.store.begin() as conn:
                conn.execute(text("UPDATE outbox SET claimed_by = 'other-replica/0' WHERE id = :i"), {"i": first})

    sent = _accepting(rsps, take_over_the_first)
    with caplog.at_level("WARNING", logger="ticketpager.delivery"):
        assert _worker(service, "w").run_once(CLAIM_BATCH) == 3
    assert len(sent) == 3
    assert _statuses(service) == [("pending", "0"), ("sent", "w"), ("sent", "w")]
    assert f"outbox row {first} was taken over while it was being sent" in caplog.text


def test_a_page_left_to_mark_when_the_database_fails_is_marked_once_it_is_back_and_not_sent_again(
    service: Service, db_url: str, rsps: responses.RequestsMock
) -> None:
    """The claim that would mark the last page fails (the outbox table is gone for a moment): the page stays to be
    marked, by the next claim once the database answers again; PagerDuty got it once."""
    sent = _accepting(rsps)
    other = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        receive(service, [change(ticket("21201"))])
        assert service.engine.drain() == 1
        worker = _worker(service)
        assert worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True) == 1
        with other.begin() as conn:
            conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
        with pytest.raises(DBAPIError):
            worker.run_once(CLAIM_BATCH, woken=True, defer_marks=True)
        assert worker.marks_due_in() is not None, "still to be marked"
        with other.begin() as conn:  # the database is back
            conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
        assert worker.run_once(CLAIM_BATCH, defer_marks=True) == 0
        assert worker.marks_due_in() is None
        assert [s for s, _ in _statuses(service)] == ["sent"] and len(sent) == 1
    finally:
        other.dispose()


def _serving(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Service:
    """The service's threads, alone on the database; a page is left to mark for 30 s (longer than these tests: the
    claims last 300 s, so they hold that wait)."""
    monkeypatch.setattr("sync.delivery.MARK_WITHIN_SECONDS", 30.0)
    engine = {"write_back_workers": 0, "claim_seconds": 300}
    service = make_service(db_url, rules_path, pd.url, clock, engine=engine)
    service.start()
    assert wait_until(service.heartbeat.alone)
    return service


def test_stopping_the_service_marks_the_page_left_to_mark(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM right after a page went out: the worker's loop ends and marks it; a restarted replica does not send
    it again."""
    service = _serving(db_url, rules_path, pd, clock, monkeypatch)
    try:
        receive(service, [change(ticket("21301"))])
        service.wake.set()
        assert wait_until(lambda: len(pd.events) == 1)
        assert [s for s, _ in _statuses(service)] == ["pending"], "left to mark"
    finally:
        service.stop()
    assert [s for s, _ in _statuses(service)] == ["sent"]
    service.store.dispose()


def test_stopping_the_service_marks_the_page_of_a_worker_a_database_error_stopped(
    db_url: str,
    rules_path: Path,
    pd: MockPagerDuty,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The claim that would mark a page fails (the outbox table is gone for a moment) and the worker's loop waits a
    second to restart; the service stops meanwhile. The stop marks the page once the database answers: it is not
    sent again by the replica that takes over."""
    service = _serving(db_url, rules_path, pd, clock, monkeypatch)
    other = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        receive(service, [change(ticket("21401"))])
        service.wake.set()
        assert wait_until(lambda: len(pd.events) == 1)
        with other.begin() as conn:
            conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
        with caplog.at_level("WARNING"):
            service.outbox_wake.set()  # every worker claims: the one holding the page fails to mark it
            failed = re.compile(r"worker delivery-\d+: database unavailable")  # both databases: the table is missing
            assert wait_until(lambda: failed.search(caplog.text) is not None)
            with other.begin() as conn:  # the database is back, the worker waits out its restart
                conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
            service.stop()
        assert [s for s, _ in _statuses(service)] == ["sent"] and len(pd.events) == 1
    finally:
        other.dispose()
        service.stop()
        service.store.dispose()
