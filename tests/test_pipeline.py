"""The durable pipeline end to end (store → rules → engine → outbox → mock PagerDuty), on SQLite and
PostgreSQL: nothing lost, nothing paged twice, failures retried or dead-lettered as PagerDuty documents."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from kernel.model import FieldChange, StatusCategory
from sync.engine import verdict_of
from tests.factories import ROUTING_KEY, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty, validate_event
from tests.harness import make_service, receive
from ticketpager.service import Service


@pytest.fixture
def service(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(db_url, rules_path, pd.url, clock)
    yield svc
    svc.store.dispose()


def actions(pd: MockPagerDuty) -> list[tuple[str, str]]:
    return [(e["event_action"], e["dedup_key"]) for e in pd.events]


def test_duplicate_webhooks_page_once(service: Service, pd: MockPagerDuty) -> None:
    t = ticket()
    first = change(t, "delivery-1")
    # the same delivery three times (vendor retries), and the same version under another id (poll)
    assert receive(service, [first, first]) == 1
    assert receive(service, [first]) == 0
    receive(service, [change(t, "poll:10001:same-version")])
    service.process_all()
    assert [a for a, _ in actions(pd)] == ["trigger"]
    event = pd.events[0]
    assert event["routing_key"] == ROUTING_KEY
    assert event["payload"]["summary"] == "[OPS-10001] Checkout is down"
    assert validate_event(event) == []
    assert service.store.status().open_incidents == 1


def test_stale_out_of_order_change_is_ignored(service: Service, pd: MockPagerDuty) -> None:
    opened = ticket(minutes=0)
    done = ticket(minutes=5, status="Done", category=StatusCategory.DONE)
    receive(service, [change(opened)])
    service.process_all()
    receive(service, [change(done)])
    service.process_all()
    # the older "To Do" version arrives late under a new delivery id: it must not page again
    receive(service, [change(opened, "late-retry-of-old-version")])
    service.process_all()
    assert [a for a, _ in actions(pd)] == ["trigger", "resolve"]
    assert actions(pd)[0][1] == actions(pd)[1][1]
    decisions = service.store.decisions_for("jira", "10001")
    assert decisions[0]["outcome"] == "stale"


def test_lifecycle_acknowledge_resolve_reopen(service: Service, pd: MockPagerDuty) -> None:
    steps = [
        ticket(minutes=0),
        ticket(minutes=1, status="In Progress", category=StatusCategory.IN_PROGRESS),
        ticket(minutes=2, status="Done", category=StatusCategory.DONE),
        ticket(minutes=3, status="Reopened", category=StatusCategory.NEW),
    ]
    for t in steps:
        receive(service, [change(t)])
        service.process_all()
    got = actions(pd)
    assert [a for a, _ in got] == ["trigger", "acknowledge", "resolve", "trigger"]
    assert got[0][1] == got[1][1] == got[2][1]
    assert got[3][1] != got[0][1], "a reopened ticket pages as a new incident"
    for event in pd.events:
        assert event["routing_key"] == ROUTING_KEY
        assert validate_event(event) == []


def test_server_errors_retry_until_delivered_once(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    pd.fail_next(3, 500)
    receive(service, [change(ticket())])
    service.engine.drain()
    delivery = service.delivery()
    for _ in range(10):
        delivery.drain()
        clock.advance(120)
    assert len(pd.requests) == 4
    assert [a for a, _ in actions(pd)] == ["trigger"]
    status = service.store.status()
    assert status.outbox_pending == 0 and status.dead_letters == 0


def test_429_retry_after_is_honoured(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    pd.fail_next(1, 429, {"Retry-After": "30"})
    receive(service, [change(ticket())])
    service.engine.drain()
    delivery = service.delivery()
    delivery.drain()
    assert len(pd.requests) == 1 and not pd.events
    clock.advance(29)
    delivery.drain()
    assert len(pd.requests) == 1, "retried before Retry-After elapsed"
    clock.advance(1.5)
    delivery.drain()
    assert [a for a, _ in actions(pd)] == ["trigger"]


def test_retry_after_as_http_date(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    when = clock.now().replace(microsecond=0)
    from datetime import timedelta
    from email.utils import format_datetime

    pd.fail_next(1, 503, {"Retry-After": format_datetime(when + timedelta(seconds=90), usegmt=True)})
    receive(service, [change(ticket())])
    service.engine.drain()
    delivery = service.delivery()
    delivery.drain()
    clock.advance(80)
    delivery.drain()
    assert not pd.events
    clock.advance(11)
    delivery.drain()
    assert len(pd.events) == 1


def test_400_is_a_dead_letter_and_can_be_redriven(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    pd.fail_next(1, 400)
    receive(service, [change(ticket())])
    service.process_all()
    status = service.store.status()
    assert status.dead_letters == 1 and not pd.events
    dead = service.store.dead_letters()
    assert "scripted 400" in dead[0]["last_error"]
    assert service.store.retry_dead(None, clock.now()) == (1, 0)
    service.process_all()
    assert [a for a, _ in actions(pd)] == ["trigger"]
    assert service.store.status().dead_letters == 0


def test_resolve_waits_for_its_trigger(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    """Events of one incident go out in order even when the trigger is being retried."""
    pd.fail_next(2, 502)
    receive(service, [change(ticket(minutes=0))])
    receive(service, [change(ticket(minutes=1, status="Done", category=StatusCategory.DONE))])
    service.engine.drain()
    delivery = service.delivery()
    for _ in range(6):
        delivery.drain()
        clock.advance(120)
    assert [a for a, _ in actions(pd)] == ["trigger", "resolve"]


def test_retries_are_bounded(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> None:
    svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"max_attempts": 3})
    pd.fail_next(10, 500)
    receive(svc, [change(ticket())])
    svc.engine.drain()
    delivery = svc.delivery()
    for _ in range(10):
        delivery.drain()
        clock.advance(600)
    assert len(pd.requests) == 3
    assert svc.store.status().dead_letters == 1
    assert "retries exhausted" in svc.store.dead_letters()[0]["last_error"]
    svc.store.dispose()


def test_dry_run_sends_nothing_and_logs_the_event(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    svc = make_service(db_url, rules_path, pd.url, clock, dry_run=True)
    receive(svc, [change(ticket())])
    with caplog.at_level(logging.INFO, logger="ticketpager.delivery"):
        svc.process_all()
    assert pd.requests == []
    logged = [r.getMessage() for r in caplog.records if "would send" in r.getMessage()]
    assert len(logged) == 1
    body = json.loads(logged[0].split("would send ", 1)[1])
    assert body["event_action"] == "trigger" and body["payload"]["summary"] == "[OPS-10001] Checkout is down"
    assert ROUTING_KEY not in logged[0] and body["routing_key"].endswith(ROUTING_KEY[-4:])
    svc.store.dispose()


def test_non_matching_ticket_is_explained_in_the_decision_log(service: Service, pd: MockPagerDuty) -> None:
    receive(service, [change(ticket(priority="Low"))])
    service.process_all()
    assert pd.events == []
    detail = json.loads(service.store.decisions_for("jira", "10001")[0]["detail"])
    stored = detail["verdicts"][0]
    assert set(stored) == {"rule", "why"}, "a rule that did not match is stored as its name and why only"
    verdict = verdict_of(stored)
    assert verdict["rule"] == "ops-highest" and verdict["matched"] is False and verdict["applies"] is True
    assert any("priority" in why for why in verdict["why"])


def test_a_poison_change_is_isolated_and_the_batch_still_pages(
    service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """A stored change that cannot be processed (here: a corrupted payload written to the database) is
    marked failed with its error and shown by `status`; the good changes of the same batch still page."""
    from sqlalchemy import insert, select

    from sync.schema import changes

    receive(service, [change(ticket("1"))])
    with service.store.begin() as conn:
        conn.execute(
            insert(changes).values(
                source="jira", connection="jira", delivery_id="poison", ticket_id="2", ticket_updated=clock.now(),
                origin="webhook", received_at=clock.now(), payload="{not json", status="pending",
            )
        )
    receive(service, [change(ticket("3"))])
    service.process_all()
    assert sorted(e["dedup_key"].split("/")[2] for e in pd.events) == ["1", "3"]
    status = service.store.status()
    assert status.changes_failed == 1 and status.changes_pending == 0
    with service.store.engine.connect() as conn:
        error = conn.execute(select(changes.c.error).where(changes.c.delivery_id == "poison")).scalar_one()
    assert "JSONDecodeError" in error or "ValueError" in error


def test_a_dead_trigger_is_not_resent_after_its_incident_resolved(
    service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Re-driving a trigger that PagerDuty refused, after the ticket's resolve went out, would open an
    incident for a finished ticket: it is marked superseded instead."""
    pd.fail_next(1, 400)
    receive(service, [change(ticket(minutes=0))])
    service.process_all()
    receive(service, [change(ticket(minutes=1, status="Done", category=StatusCategory.DONE))])
    service.process_all()
    assert [e["event_action"] for e in pd.events] == ["resolve"]
    assert service.store.retry_dead(None, clock.now()) == (0, 1)
    service.process_all()
    assert [e["event_action"] for e in pd.events] == ["resolve"], "the finished incident was not reopened"
    assert service.store.status().dead_letters == 0


def test_a_worker_whose_claim_expired_does_not_send_again(
    service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Fencing: worker A claimed a row, stalled past its claim; worker B took the row over and sent it.
    When A gets to the row it must not send it a second time."""
    receive(service, [change(ticket())])
    service.engine.drain()
    slow, fast = service.delivery("slow"), service.delivery("fast")
    [row] = slow.claim(10)
    clock.advance(service.settings.engine.claim_seconds + 1)
    assert fast.run_once() == 1
    slow.deliver(row)  # the stale worker wakes up
    assert [e["event_action"] for e in pd.events] == ["trigger"]
    assert service.store.status().outbox_pending == 0


def test_an_idle_delivery_worker_or_engine_does_not_queue_for_the_write_lock(service: Service) -> None:
    """With nothing due, a delivery worker's or the engine's poll is a read: on SQLite it must not wait
    behind (or hold up) the one write lock that the webhook writer needs."""
    done: list[int] = []
    with service.store.begin():  # a long write transaction elsewhere (an engine batch, a migration)
        worker = threading.Thread(target=lambda: done.append(service.delivery("idle").run_once()))
        worker.start()
        worker.join(timeout=5)
        assert not worker.is_alive() and done == [0], "the idle poll waited for the write lock"
        engine = threading.Thread(target=lambda: done.append(service.engine.run_once()))
        engine.start()
        engine.join(timeout=5)
        assert not engine.is_alive() and done == [0, 0], "the idle engine waited for the write lock"


def test_a_stopping_worker_hands_back_what_it_claimed_but_did_not_send(service: Service, pd: MockPagerDuty) -> None:
    """SIGTERM mid-batch: the worker sends nothing more, and another worker (or the restarted replica)
    can send the rest at once instead of after the claim's visibility timeout."""
    receive(service, [change(ticket(str(10001 + n))) for n in range(3)])
    service.engine.drain()
    stopping = service.delivery("stopping")
    assert stopping.run_once(10, stopping=lambda: len(pd.events) >= 1) == 1
    assert len(pd.events) == 1
    assert service.delivery("next").run_once() == 2  # no clock advance needed
    assert sorted(e["dedup_key"] for e in pd.events) == sorted({e["dedup_key"] for e in pd.events})
    assert service.store.status().outbox_pending == 0


def test_a_redriven_dead_letter_gets_its_full_retry_budget(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"max_attempts": 2})
    pd.fail_next(2, 500)
    receive(svc, [change(ticket())])
    svc.engine.drain()
    delivery = svc.delivery()
    for _ in range(3):
        delivery.drain()
        clock.advance(600)
    assert svc.store.status().dead_letters == 1
    clock.advance(7200)  # an operator re-drives it hours later; PagerDuty fails once more
    assert svc.store.retry_dead(None, clock.now()) == (1, 0)
    pd.fail_next(1, 503)
    delivery.drain()
    assert svc.store.status().dead_letters == 0, "one failure after a re-drive must not be 'retries exhausted'"
    clock.advance(600)
    delivery.drain()
    assert [e["event_action"] for e in pd.events] == ["trigger"]
    svc.store.dispose()


CHANGED_RULES = """
version: 1
rules:
  - name: finished
    source: jira
    when: {status_category: {changed_to: done}}
    trigger: {routing_key: "${PD_PLATFORM_KEY}", severity: info, summary: "{{ ticket.key }} finished"}
    resolve_when: {status: never}
    continue: true
  - name: tier-raised
    source: jira
    when: {custom.customfield_10010: {changed_to: Gold}}
    trigger: {routing_key: "${PD_PLATFORM_KEY}", severity: warning, summary: "{{ ticket.key }} is Gold now"}
    resolve_when: {status: never}
"""


def test_a_webhook_change_list_and_the_diff_both_count_for_changed_conditions(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """A Jira changelog names the status, never the derived status_category, and names a custom field the
    way the connector reports it: the engine also diffs against the stored version, so a rule on
    `status_category: {changed_to: done}` pages, as `rules test --previous` says it does."""
    (rules_path / "ops.yaml").write_text(CHANGED_RULES)
    svc = make_service(db_url, rules_path, pd.url, clock)
    try:
        before = ticket(status="In Progress", category=StatusCategory.IN_PROGRESS, custom_fields={
            "customfield_10010": "Silver"})
        receive(svc, [change(before)])
        svc.process_all()
        assert pd.events == []
        after = ticket(minutes=5, status="Done", category=StatusCategory.DONE, custom_fields={
            "customfield_10010": "Gold"})
        changelog = (FieldChange("status", "In Progress", "Done"),)  # what Jira's changelog carries
        receive(svc, [change(after, changes=changelog)])
        svc.process_all()
        assert sorted(e["payload"]["summary"] for e in pd.events) == ["OPS-10001 finished", "OPS-10001 is Gold now"]
    finally:
        svc.store.dispose()


def test_the_rate_limit_holds_across_replicas_sharing_the_database(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Two replicas, one routing key, a limit of 2 per minute: the third event waits for the window even
    though the replica sending it has sent only one itself (the others' sends are read from the outbox)."""
    one = make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": 2})
    two = make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": 2})
    try:
        receive(one, [change(ticket("10001"))])
        one.engine.drain()
        assert one.delivery().run_once() == 1
        receive(two, [change(ticket("10002"))])
        two.engine.drain()
        assert two.delivery().run_once() == 1
        receive(one, [change(ticket("10003"))])
        one.engine.drain()
        one.delivery().run_once()
        assert len(pd.events) == 2, "the third event in the same minute went out"
        clock.advance(61)
        one.delivery().drain()
        assert len(pd.events) == 3
    finally:
        one.store.dispose()
        two.store.dispose()
