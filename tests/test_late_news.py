"""PagerDuty's news delivered late (it keeps no order across event types): through the real service against the
PagerDuty REST fake, the ticketing desk in memory and the rules of ``tests/twoway_world.py`` (a move in
PagerDuty sets the ticket's group, a resolve in PagerDuty moves the ticket to done). Late news is history — its
comment is written — but it never moves the ticket behind newer news."""

from __future__ import annotations

from kernel.model import StatusCategory
from tests.test_reassignment import paged, policy, world  # noqa: F401 - the fixture and its helpers
from tests.twoway_world import World


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
