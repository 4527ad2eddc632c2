"""Issue 19: a delivery worker writes once per batch during a burst, not once per page and once per claim.

The sends of a batch are marked ``sent`` together at its end, in the transaction that also claims the next batch
when this one came back full; a send accepted longer ago than ``MARK_WITHIN_SECONDS`` is marked before the
batch's next send; a stopping worker hands back the batch it claimed ahead. Only while the replica is alone: beside
another replica, whose rate limit counts this one's sends from the outbox, every send is marked at once. Real SQLite
and PostgreSQL, the PagerDuty Events API mocked at the wire, write transactions counted by the database engine's
commits, replicas known by their heartbeats.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
import responses
from sqlalchemy import event, select, text

from kernel.clock import FakeClock
from kernel.model import StatusCategory
from sync.delivery import CLAIM_BATCH, MARK_WITHIN_SECONDS, QUICK_SEND_SECONDS, TICKET_KINDS, Delivery
from sync.metrics import METRICS
from sync.schema import outbox
from tests.factories import change, ticket
from tests.harness import make_service, receive
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
        assert notes.run_once(CLAIM_BATCH) == 3
        assert marked_when_posting == [0, 1, 2]
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
