"""Time rules fire without a new ticket update: the scheduler re-evaluates open, unpaged tickets from the
store (durable across restarts), and pages once even when several replicas schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from kernel.model import Ticket
from tests.factories import change
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"
SUPPORT_KEY = "supportsupportsupportsupport0001"


def unassigned_p2() -> Ticket:
    return Ticket.from_json(json.loads((EXAMPLES / "support-unassigned-p2.ticket.json").read_text()))


def test_unassigned_p2_pages_after_30_minutes_once(
    db_url: str, pd: MockPagerDuty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_SUPPORT_KEY", SUPPORT_KEY)
    rules = EXAMPLES / "support-unassigned-p2.yaml"
    clock = FakeClock(datetime(2026, 11, 30, 9, 6, tzinfo=UTC))  # Monday, 10:06 in Berlin
    first = make_service(db_url, rules, pd.url, clock)
    receive(first, [change(unassigned_p2())])
    first.process_all()
    assert pd.events == [], "only 1 minute old"

    clock.set(datetime(2026, 11, 30, 9, 20, tzinfo=UTC))
    assert first.engine.recheck() == 0
    first.process_all()
    assert pd.events == [], "15 minutes old"
    first.store.dispose()

    # a restart (a new process on the same database) still knows which tickets to re-check
    clock.set(datetime(2026, 11, 30, 9, 36, tzinfo=UTC))
    second = make_service(db_url, rules, pd.url, clock)
    replica = make_service(db_url, rules, pd.url, clock)
    assert second.engine.recheck() == 1
    assert replica.engine.recheck() == 0, "a second replica's pass finds the incident open: no second page"
    second.process_all()
    replica.process_all()
    assert [e["event_action"] for e in pd.events] == ["trigger"]
    assert pd.events[0]["routing_key"] == SUPPORT_KEY
    assert pd.events[0]["payload"]["summary"].startswith("SUP-301 unassigned for 30+ minutes")

    clock.advance(60)  # paged tickets are no longer re-checked
    assert second.engine.recheck() == 0
    for svc in (second, replica):
        svc.store.dispose()


def test_outside_support_hours_does_not_page(db_url: str, pd: MockPagerDuty) -> None:
    rules = EXAMPLES / "support-unassigned-p2.yaml"
    clock = FakeClock(datetime(2026, 11, 30, 9, 6, tzinfo=UTC))
    svc = make_service(db_url, rules, pd.url, clock)
    receive(svc, [change(unassigned_p2())])
    svc.process_all()
    clock.set(datetime(2026, 11, 30, 18, 30, tzinfo=UTC))  # 19:30 in Berlin
    svc.engine.recheck()
    svc.process_all()
    assert pd.events == []
    clock.set(datetime(2026, 12, 1, 7, 1, tzinfo=UTC))  # Tuesday 08:01 in Berlin: support hours again
    svc.engine.recheck()
    svc.process_all()
    assert [e["event_action"] for e in pd.events] == ["trigger"]
    svc.store.dispose()


def test_every_waiting_ticket_is_rechecked_not_just_the_first_chunk(
    db_url: str, pd: MockPagerDuty, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    monkeypatch.setenv("PD_SUPPORT_KEY", SUPPORT_KEY)
    rules = EXAMPLES / "support-unassigned-p2.yaml"
    clock = FakeClock(datetime(2026, 11, 30, 9, 6, tzinfo=UTC))
    svc = make_service(db_url, rules, pd.url, clock, pagerduty={"rate_limit_per_minute": 1000})
    base = unassigned_p2()
    receive(svc, [change(replace(base, id=str(30000 + n), key=f"SUP-{n}")) for n in range(7)])
    svc.process_all()
    clock.set(datetime(2026, 11, 30, 9, 40, tzinfo=UTC))
    assert svc.engine.recheck(chunk=2) == 7
    svc.process_all()
    assert len({e["dedup_key"] for e in pd.events}) == 7
    assert svc.engine.recheck(chunk=2) == 0
    svc.store.dispose()
