"""The incident check (``sync/reconcile.py``) through the real service against the PagerDuty REST fake: a status
change whose webhook PagerDuty dropped (a 4xx, a TLS error, a disabled subscription) still reaches the ticket,
once; the webhook arriving after all writes nothing again; an incident with news waiting, or recent news, is not
asked about; a REST API that does not answer changes nothing and is asked again."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from connectors.pagerduty_webhooks import incident_event_body
from kernel.clock import FakeClock
from kernel.incidents import IncidentStatus
from kernel.model import StatusCategory
from kernel.ports import IncidentStatusReader
from sync.metrics import METRICS
from sync.reconcile import IncidentCheck
from sync.schema import pagerduty_inbox
from tests.factories import ROUTING_KEY, ticket
from tests.fakes.pagerduty_rest import TOKEN, Delivery, FakePagerDutyRest
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.twoway_world import World, build, rules_dir

KEY = "ticketpager/jira/10001/ops-highest/1"
QUIET = 600.0  # TICKETPAGER_PAGERDUTY__INCIDENT_CHECK_QUIET_SECONDS's default


@pytest.fixture
def world(db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        w = build(db_url, rules_dir(tmp_path), clock, pd, events)
        yield w
        w.svc.store.dispose()


def paged(world: World) -> str:
    world.desk.put(ticket("10001", attributes={"project": "OPS"}, assignment_group="Service Desk"))
    world.settle()
    incident = world.incident_of(KEY)
    assert incident is not None
    return str(incident["id"])


def lost(world: World) -> list[Delivery]:
    """PagerDuty's queued webhooks, which never reach us (dropped after a 4xx)."""
    gone, world.pd.outbox = world.pd.outbox, []
    return gone


def checks(outcome: str) -> float:
    return METRICS.incident_checks.labels(outcome)._value.get()


def acknowledged_by_the_check(world: World, clock: FakeClock) -> str:
    """Jane acknowledges; the webhook is lost; the check tells it."""
    incident_id = paged(world)
    world.pd.acknowledge(incident_id, by="PUSER01")
    lost(world)
    clock.advance(QUIET + 1)
    assert world.svc.check_incidents() == 1
    world.settle()
    return incident_id


def resolved_comments(world: World) -> list[str]:
    return [c for c in world.desk.comments["10001"] if "Resolved in PagerDuty by Jane Doe" in c]


def test_a_resolve_whose_webhook_was_lost_reaches_the_ticket_once(world: World, clock: FakeClock) -> None:
    incident_id = paged(world)
    world.pd.resolve(incident_id, by="PUSER01")
    dropped = lost(world)
    clock.advance(QUIET / 2)
    assert world.svc.check_incidents() == 0  # news may still be on its way: not asked about yet
    assert world.rest_calls("GET", f"/incidents/{incident_id}") == []

    applied = checks("applied")
    clock.advance(QUIET)
    assert world.svc.check_incidents() == 1
    world.settle()

    assert [link["state"] for link in world.link_rows()] == ["resolved"]
    assert world.desk.tickets["10001"].status_category is StatusCategory.DONE  # the rules' transition
    assert len(resolved_comments(world)) == 1
    assert checks("applied") == applied + 1
    [decided] = [d for d in world.decisions() if d["outcome"] == "pagerduty_applied"
                 and d["detail"]["event_type"] == "incident.resolved"]  # fmt: skip
    assert "incident check" in decided["detail"]["why"][0]

    for hook in dropped:  # the webhook arrives after all (PagerDuty retried, or it was replayed)
        world.pagerduty_webhook(hook)
    world.settle()
    assert len(resolved_comments(world)) == 1  # not written again
    assert set(world.desk.marked("10001").values()) == {1}
    assert [d["outcome"] for d in world.decisions()][-1] == "pagerduty_told_before"

    clock.advance(QUIET * 2)
    assert world.svc.check_incidents() == 0  # the link is resolved: nothing left to ask about
    assert len(world.rest_calls("GET", f"/incidents/{incident_id}")) == 1
    assert world.outbox_counts().keys() == {"sent"} and world.pd.spec_errors == []


def test_a_lost_acknowledge_is_applied_and_an_agreeing_incident_is_not_asked_again_until_quiet(
    world: World, clock: FakeClock
) -> None:
    incident_id = acknowledged_by_the_check(world, clock)
    assert [link["state"] for link in world.link_rows()] == ["acknowledged"]
    acked = [c for c in world.desk.comments["10001"] if "cknowledged" in c and "Jane Doe" in c]
    assert len(acked) == 1

    same = checks("same")
    clock.advance(QUIET + 1)
    assert world.svc.check_incidents() == 0  # PagerDuty agrees now
    assert checks("same") == same + 1
    assert world.svc.check_incidents() == 0  # just asked: not again until the quiet period passed
    assert len(world.rest_calls("GET", f"/incidents/{incident_id}")) == 2


def test_news_waiting_in_the_inbox_is_not_taken_for_a_lost_webhook(world: World, clock: FakeClock) -> None:
    incident_id = paged(world)
    world.pd.resolve(incident_id, by="PUSER01")
    for hook in lost(world):
        world.pagerduty_webhook(hook)  # stored; the reverse worker has not run (it was behind, or down)
    clock.advance(QUIET * 3)
    assert world.svc.check_incidents() == 0
    assert world.rest_calls("GET", f"/incidents/{incident_id}") == []
    world.settle()
    assert len(resolved_comments(world)) == 1


def test_a_rest_api_that_does_not_answer_changes_nothing_and_is_asked_again(world: World, clock: FakeClock) -> None:
    incident_id = paged(world)
    world.pd.resolve(incident_id, by="PUSER01")
    lost(world)
    clock.advance(QUIET + 1)
    failed = checks("failed")
    world.pd.fail_next(1, 503)
    assert world.svc.check_incidents() == 0
    assert checks("failed") == failed + 1
    assert [link["state"] for link in world.link_rows()] == ["triggered"]

    assert world.svc.check_incidents() == 1  # not marked as asked: the next run asks again
    world.settle()
    assert [link["state"] for link in world.link_rows()] == ["resolved"] and len(resolved_comments(world)) == 1


def test_the_check_is_off_without_an_api_token_or_when_set_to_zero(
    db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    monkeypatch.setenv("TICKETPAGER_PAGERDUTY__INCIDENT_CHECK_SECONDS", "0")
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        w = build(db_url, rules_dir(tmp_path), clock, pd, events)
        try:
            assert w.svc.incident_check is None and w.svc.check_incidents() == 0
        finally:
            w.svc.store.dispose()


def test_serve_runs_the_check_on_its_scheduler_every_interval(
    db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running service's scheduler asks PagerDuty once the check's interval has passed (not at start), and
    the reverse worker applies what it stored."""
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    monkeypatch.setenv("TICKETPAGER_ENGINE__GAUGE_INTERVAL_SECONDS", "0.02")  # the scheduler's tick, real time
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        w = build(db_url, rules_dir(tmp_path), clock, pd, events)
        try:
            incident_id = paged(w)
            w.pd.resolve(incident_id, by="PUSER01")
            lost(w)
            clock.advance(QUIET + 1)  # quiet long enough, but the first run is an interval after start
            w.svc.start()
            time.sleep(0.3)
            assert w.rest_calls("GET", f"/incidents/{incident_id}") == []
            clock.advance(301)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and [r["state"] for r in w.link_rows()] != ["resolved"]:
                time.sleep(0.02)
            assert [r["state"] for r in w.link_rows()] == ["resolved"]
            assert len(w.rest_calls("GET", f"/incidents/{incident_id}")) == 1
        finally:
            w.svc.stop()
            w.svc.store.dispose()


def test_the_webhook_of_a_checked_acknowledge_after_a_newer_resolve_writes_nothing_again(
    world: World, clock: FakeClock
) -> None:
    """PagerDuty retries the acknowledge's webhook (our endpoint answered 502 for a while) and delivers the resolve
    made later at once (no order across event types): the acknowledge, told by the check, is told once."""
    incident_id = paged(world)
    world.pd.acknowledge(incident_id, by="PUSER01")
    held = lost(world)
    clock.advance(QUIET + 1)
    assert world.svc.check_incidents() == 1
    world.settle()
    world.pd.resolve(incident_id, by="PUSER01")
    world.settle()
    for hook in held:
        world.pagerduty_webhook(hook)
    world.settle()

    assert len([c for c in world.desk.comments["10001"] if " acknowledged by Jane Doe" in c]) == 1
    assert len(resolved_comments(world)) == 1


def test_a_new_acknowledge_after_a_checked_one_is_written(world: World, clock: FakeClock) -> None:
    """Jane's acknowledge is lost and told by the check; it times out (lost too) and Sam acknowledges: Sam's is
    another change, not the webhook of Jane's."""
    incident_id = acknowledged_by_the_check(world, clock)
    world.pd.unacknowledge(incident_id)
    lost(world)
    world.pd.acknowledge(incident_id, by="PUSER02")
    world.settle()

    assert [c for c in world.desk.comments["10001"] if " acknowledged by Sam Roe" in c]


def test_our_own_acknowledge_still_queued_is_not_undone(world: World, clock: FakeClock) -> None:
    """The ticket goes In Progress while PagerDuty's Events API refuses (an outage): the link is acknowledged, our
    acknowledge waits in the outbox, and PagerDuty still says triggered. The check leaves it: one acknowledge is
    sent when PagerDuty is back."""
    incident_id = paged(world)
    clock.advance(QUIET + 1)
    world.events.fail_next(1, 503)
    world.desk.edit("10001", status_category=StatusCategory.IN_PROGRESS)
    world.settle()
    assert world.pd.state.incidents[incident_id]["status"] == "triggered"
    assert world.svc.check_incidents() == 0
    world.settle()
    assert [r["state"] for r in world.link_rows()] == ["acknowledged"]
    clock.advance(3600)
    world.settle()
    assert [e["event_action"] for e in world.events.events].count("acknowledge") == 1
    assert world.pd.state.incidents[incident_id]["status"] == "acknowledged"


def test_a_delegated_incident_triggered_again_is_not_taken_for_a_lost_unacknowledge(
    world: World, clock: FakeClock
) -> None:
    """PagerDuty triggers a delegated incident again, for the new on-call. Its webhook (the delegation) came; the
    check must not make the link triggered, or the ticket's next edit would acknowledge for the new on-call."""
    incident_id = paged(world)
    world.desk.edit("10001", status_category=StatusCategory.IN_PROGRESS)  # acknowledge_when: ours
    world.settle()
    world.pd.delegate(incident_id, "PEP0002", by="PUSER02")
    world.settle()
    assert world.pd.state.incidents[incident_id]["status"] == "triggered"
    acks = [e["event_action"] for e in world.events.events].count("acknowledge")
    clock.advance(QUIET + 1)
    assert world.svc.check_incidents() == 0
    world.desk.edit("10001", title="DB failover in progress")
    world.settle()
    assert [e["event_action"] for e in world.events.events].count("acknowledge") == acks
    assert world.pd.state.incidents[incident_id]["status"] == "triggered"


def test_a_deleted_incident_is_asked_about_again_a_day_later(world: World, clock: FakeClock) -> None:
    incident_id = paged(world)
    clock.advance(QUIET + 1)
    world.pd.fail_next(1, 404, body={"error": {"message": "Not Found", "code": 2100}})
    failed = checks("failed")
    assert world.svc.check_incidents() == 0 and checks("failed") == failed + 1
    clock.advance(QUIET + 1)
    assert world.svc.check_incidents() == 0
    assert len(world.rest_calls("GET", f"/incidents/{incident_id}")) == 1  # not again within the day
    clock.advance(24 * 3600)
    world.svc.check_incidents()
    assert len(world.rest_calls("GET", f"/incidents/{incident_id}")) == 2


def test_a_refused_token_pauses_nothing_beyond_the_quiet_period(world: World, clock: FakeClock) -> None:
    """A 401 (a rotated token) is not a gone incident: once the token works, the next quiet period asks again."""
    incident_id = paged(world)
    world.pd.resolve(incident_id, by="PUSER01")
    lost(world)
    clock.advance(QUIET + 1)
    world.pd.fail_next(1, 401, body={"error": {"message": "Unauthorized", "code": 2006}})
    assert world.svc.check_incidents() == 0
    clock.advance(QUIET + 1)
    assert world.svc.check_incidents() == 1


class SlowPagerDuty:
    """The REST API answering each incident in ``seconds`` (the clock moves by that much per answer)."""

    def __init__(self, reader: IncidentStatusReader, clock: FakeClock, seconds: float) -> None:
        self.reader, self.clock, self.seconds = reader, clock, seconds

    def incident_status(self, incident_id: str) -> IncidentStatus:
        self.clock.advance(self.seconds)
        return self.reader.incident_status(incident_id)


def test_a_run_stops_at_its_time_budget_and_the_next_run_goes_on(world: World, clock: FakeClock) -> None:
    for number in ("10001", "10002", "10003"):
        world.desk.put(ticket(number, attributes={"project": "OPS"}, assignment_group="Service Desk"))
    world.settle()
    ids = sorted(world.pd.state.incidents)
    assert len(ids) == 3
    clock.advance(QUIET + 1)
    rest = world.svc.rest_client()
    check = IncidentCheck(world.svc.store, SlowPagerDuty(rest, clock, 40), incident_event_body, clock,
                          quiet_seconds=QUIET, run_seconds=60)  # fmt: skip
    same = checks("same")
    check.run_once()
    assert checks("same") == same + 2  # 40 s, 80 s: the budget is spent after the second
    check.run_once()
    assert checks("same") == same + 3  # the one left, and not the two asked a moment ago


def test_the_rest_token_is_in_no_log_line_decision_or_stored_event(
    world: World, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    incident_id = paged(world)
    world.pd.resolve(incident_id, by="PUSER01")
    lost(world)
    clock.advance(QUIET + 1)
    world.pd.fail_next(1, 401, body={"error": {"message": f"token {TOKEN} is not valid", "code": 2006}})
    with caplog.at_level(logging.DEBUG):
        world.svc.check_incidents()
        clock.advance(QUIET + 1)
        assert world.svc.check_incidents() == 1
        world.settle()
    assert "incident check of" in caplog.text and "no webhook said so" in caplog.text
    assert TOKEN not in caplog.text
    with world.svc.store.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(select(pagerduty_inbox)).all() for v in row)
    assert TOKEN not in stored and TOKEN not in json.dumps(world.decisions(), default=str)
