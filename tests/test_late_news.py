"""PagerDuty's news delivered late (it keeps no order across event types): through the real service against the
PagerDuty REST fake, the ticketing desk in memory and the rules of ``tests/twoway_world.py`` (a move in
PagerDuty sets the ticket's group, a resolve in PagerDuty moves the ticket to done). Late news is history — its
comment is written — but it never moves the ticket behind newer news."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from kernel.model import StatusCategory
from tests.factories import ROUTING_KEY
from tests.fakes.pagerduty_rest import FakePagerDutyRest
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.test_pagerduty_inbound import lose
from tests.test_reassignment import paged, policy, world  # noqa: F401 - the fixture and its helpers
from tests.twoway_world import World, build, rules_dir


@contextmanager
def world_with(
    sync_back: str, db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """The world of ``tests/twoway_world.py`` with one more ``sync_back`` line in its rule, e.g.
    ``reopened: {transition: {category: in_progress}}`` (a line already there is replaced)."""
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    path = rules_dir(tmp_path)  # a resolve in PagerDuty moves the ticket to done
    rules = path / "ops.yaml"
    kind = sync_back.split(":", 1)[0]
    text = "".join(line for line in rules.read_text().splitlines(True) if not line.startswith(f"      {kind}:"))
    rules.write_text(text.replace("    sync_back:\n", f"    sync_back:\n      {sync_back}\n"))
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        w = build(db_url, path, clock, pd, events)
        try:
            yield w
        finally:
            w.svc.store.dispose()


def test_an_older_move_delivered_after_a_later_one_sets_no_group_and_moves_nothing_back(world: World) -> None:  # noqa: F811
    """Moved to PEP0002, then back to PEP0001; PagerDuty delivers the second move first. The older move sets no
    group: the ticket would otherwise reassign the incident back to PEP0002, behind the person's latest move."""
    incident_id = paged(world)
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.pd.delegate(incident_id, "PEP0001", by="PUSER02")
    world.pd.outbox.reverse()  # the later move arrives first
    world.settle()

    assert policy(world, incident_id) == "PEP0001"
    assert world.rest_calls("PUT") == []  # nothing moved the incident behind the person
    assert world.desk.tickets["10001"].assignment_group == "Service Desk"
    moved = [c for c in world.desk.comments["10001"] if "moved to escalation policy" in c]
    assert len(moved) == 2, "both moves are told on the ticket"


def test_a_move_delivered_after_a_later_priority_change_still_sets_the_group(world: World) -> None:  # noqa: F811
    """Moved to PEP0002, then its priority changed; the priority change arrives first. The move is older news,
    but the incident is still on PEP0002 (the priority change carried it there): the group follows it."""
    incident_id = paged(world)
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.pd.emit(incident_id, "incident.priority_updated")
    world.pd.outbox.reverse()
    world.settle()

    assert world.desk.tickets["10001"].assignment_group == "Network"  # PEP0002 → Network (reverse map)
    assert policy(world, incident_id) == "PEP0002" and world.rest_calls("PUT") == []


def test_a_resolve_delivered_after_a_later_reopen_does_not_close_the_ticket(world: World) -> None:  # noqa: F811
    """Resolved, then reopened in PagerDuty; the reopen arrives first. The resolve is older than the state applied:
    its comment is written, but it does not move the ticket to done under an open incident."""
    incident_id = paged(world)
    world.pd.resolve(incident_id, by="PUSER01")
    world.pd.unacknowledge(incident_id)  # back to triggered: PagerDuty sends incident.reopened
    world.pd.outbox.reverse()
    world.settle()

    assert world.pd.state.incidents[incident_id]["status"] == "triggered"
    assert world.desk.tickets["10001"].status_category is not StatusCategory.DONE
    assert [c for c in world.desk.comments["10001"] if "Resolved in PagerDuty by" in c], "the resolve is told"
    [link] = world.link_rows()
    assert link["state"] == "triggered"


@pytest.mark.parametrize("between", ["reassign", "priority", "in-order"])
def test_a_reopen_delivered_after_later_news_of_the_open_incident_still_reopens_the_ticket(
    db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, between: str
) -> None:
    """Resolved in PagerDuty (the ticket goes to done), reopened, then reassigned or its priority changed; the
    later news arrives first and reopens the link. The reopen is older news, but it agrees with the link (open):
    its transition still reopens the ticket, or the ticket would stay done under an open incident and its next
    change resolve it (review finding on the first version, which dropped every late state event's transition)."""
    sync_back = "reopened: {transition: {category: in_progress}}"
    with world_with(sync_back, db_url, tmp_path, clock, monkeypatch) as w:
        incident_id = paged(w)
        w.pd.resolve(incident_id, by="PUSER01")
        w.settle()
        assert w.desk.tickets["10001"].status_category is StatusCategory.DONE
        w.pd.unacknowledge(incident_id)  # back to triggered: PagerDuty sends incident.reopened
        if between == "reassign":
            w.pd.reassign(incident_id, ["PUSER02"], by="PUSER01")
        else:
            w.pd.emit(incident_id, "incident.priority_updated")
        if between != "in-order":
            w.pd.outbox.reverse()  # the later news arrives first
        w.settle()

        # open (the ticket in progress acknowledges it: acknowledge_when), not resolved again by ticketpager
        assert w.pd.state.incidents[incident_id]["status"] == "acknowledged"
        assert w.desk.tickets["10001"].status_category is StatusCategory.IN_PROGRESS


def test_an_acknowledge_after_a_lost_reopen_delivered_after_a_priority_change_reopens_the_ticket(
    db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolved (the ticket done), reopened (its webhook lost), acknowledged, priority changed; the priority change
    arrives first and opens the link. The acknowledge's transition agrees with it and is applied."""
    sync_back = "acknowledged: {transition: {category: in_progress}}"
    with world_with(sync_back, db_url, tmp_path, clock, monkeypatch) as w:
        incident_id = paged(w)
        w.pd.resolve(incident_id, by="PUSER01")
        w.settle()
        w.pd.unacknowledge(incident_id)
        w.pd.acknowledge(incident_id, by="PUSER02")
        w.pd.emit(incident_id, "incident.priority_updated")
        lose(w.pd, "incident.reopened")
        w.pd.outbox.reverse()  # the priority change, then the acknowledge
        w.settle()

        assert w.pd.state.incidents[incident_id]["status"] == "acknowledged", "ticketpager resolved it again"
        assert w.desk.tickets["10001"].status_category is StatusCategory.IN_PROGRESS


def test_a_late_escalation_does_not_reopen_a_ticket_done_by_a_later_resolve(
    db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Escalated (a rule moves the ticket to in progress on it), then resolved; the resolve arrives first and the
    ticket is done. The escalation is older news of an open incident while the link says resolved: no
    transition, so the ticket stays done and does not page again (review finding: it did, before this stop)."""
    with world_with("escalated: {transition: {category: in_progress}}", db_url, tmp_path, clock, monkeypatch) as w:
        incident_id = paged(w)
        w.pd.emit(incident_id, "incident.escalated")
        w.pd.resolve(incident_id, by="PUSER01")
        w.pd.outbox.reverse()
        w.settle()

        assert w.desk.tickets["10001"].status_category is StatusCategory.DONE
        assert sum(w.triggers.values()) == 1, "paged once"
        assert [c for c in w.desk.comments["10001"] if "escalated" in c], "the escalation is told"
