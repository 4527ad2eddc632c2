"""Central Ops, both ways (issue 16 item 5), through the real service against the PagerDuty REST fake: a ticket
moved to another assignment group reassigns its open incident to the mapped escalation policy (``PUT
/incidents/{id}``) or asks that policy to help (``responder_requests``); a person moving the incident in
PagerDuty sets the ticket's group from the reverse map; and neither comes back as the other (no loop, including
ServiceNow's documented one: two groups on one policy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from kernel.clock import FakeClock
from kernel.errors import PermanentError
from kernel.model import IncidentUpdate, StatusCategory, TicketUpdate
from sync.repos.incidents import MIRROR_SECONDS
from sync.schema import incidents, outbox
from tests.factories import ROUTING_KEY, ticket
from tests.fakes.pagerduty_rest import Delivery, FakePagerDutyRest
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.twoway_world import World, build, rules_dir

KEY = "ticketpager/jira/10001/ops-highest/1"


@pytest.fixture
def world(
    db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[World]:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    on_change = getattr(request, "param", "reassign")
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        w = build(db_url, rules_dir(tmp_path, on_change), clock, pd, events)
        yield w
        w.svc.store.dispose()


def paged(world: World, group: str = "Service Desk") -> str:
    """OPS-10001 in ``group`` pages; PagerDuty's triggered webhook tells us its incident id."""
    world.desk.put(ticket("10001", attributes={"project": "OPS"}, assignment_group=group))
    world.settle()
    incident = world.incident_of(KEY)
    assert incident is not None and incident["status"] == "triggered"
    return str(incident["id"])


def policy(world: World, incident_id: str) -> str:
    return str(world.pd.state.incidents[incident_id]["escalation_policy"]["id"])


def test_a_group_change_reassigns_the_open_incident_once_and_its_echo_writes_nothing(world: World) -> None:
    incident_id = paged(world)
    assert policy(world, incident_id) == "PEP0001"

    world.desk.edit("10001", assignment_group="Network")
    redelivered = world.desk.webhooks[-1]
    world.settle()
    world.ticket_webhook(redelivered)  # the ticketing system sends the same change again
    world.settle()

    assert policy(world, incident_id) == "PEP0002"  # an escalation policy, never a user: escalation goes on
    puts = world.rest_calls("PUT", f"/incidents/{incident_id}")
    assert [p.body["incident"]["escalation_policy"]["id"] for p in puts] == ["PEP0002"]
    assert world.pd_markers() and set(world.pd_markers().values()) == {1}  # one note, with our marker
    # the incident.delegated echo (agent: our From user) wrote nothing onto the ticket: only the page's note
    assert [m for m in world.desk.marked("10001") if "delegated" in m or "grp" in m] == []
    assert world.desk.tickets["10001"].assignment_group == "Network"
    decided = [d for d in world.decisions() if d["outcome"] == "incident_update"]
    assert len(decided) == 1
    [entry] = decided[0]["detail"]["incident_updates"]
    assert entry["incident_id"] == incident_id and entry["queued"][0]["reassign_to_policy"] == "PEP0002"
    assert world.outbox_counts().get("pending", 0) == 0 and world.pd.spec_errors == []


@pytest.mark.parametrize("world", ["add_responders"], indirect=True)
def test_add_responders_asks_the_mapped_policy_to_help(world: World) -> None:
    incident_id = paged(world)

    world.desk.edit("10001", assignment_group="Network")
    world.settle()

    [request] = world.pd.state.responder_requests[incident_id]
    targets = [t["responder_request_target"] for t in request["responder_request_targets"]]
    assert targets == [{"id": "PEP0002", "type": "escalation_policy_reference"}]
    assert request["requester"]["id"] == "PBOT001"
    assert policy(world, incident_id) == "PEP0001"  # the incident stays where it was
    assert world.rest_calls("PUT", f"/incidents/{incident_id}") == []


def test_a_move_in_pagerduty_sets_the_ticket_group_and_the_ticket_webhook_does_not_move_it_again(
    world: World,
) -> None:
    incident_id = paged(world)
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")  # Central Ops moves it to the DB on-call
    world.settle()

    assert world.desk.tickets["10001"].assignment_group == "Network"  # PEP0002 → Network (reverse map)
    moved = [c for c in world.desk.comments["10001"] if "moved to escalation policy PEP0002 by Jane Doe" in c]
    assert len(moved) == 1 and set(world.desk.marked("10001").values()) == {1}
    # the ticket webhook of our own group change came back: no PUT, no note on the incident
    assert world.rest_calls("PUT") == [] and world.pd_markers() == {}
    assert policy(world, incident_id) == "PEP0002"
    skipped = [
        e
        for d in world.decisions()
        for e in d["detail"].get("incident_updates", [])
        if any("was written by ticketpager from a move in PagerDuty (its echo)" in w for w in e["why"])
    ]
    assert len(skipped) == 1 and skipped[0]["queued"] == []


def test_two_groups_on_one_policy_never_bounce_servicenows_feedback_loop(world: World) -> None:
    """ServiceNow's documented loop: a business rule moves group A to B, both on one policy, and each delegate
    webhook moves the ticket back to A. Here: neither side moves anything."""
    incident_id = paged(world, group="Network")
    assert world.rest_calls("PUT") == []  # paged straight on the service's policy; nothing to reassign yet
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.settle()
    world.desk.edit("10001", assignment_group="Network Ops")  # the "business rule": same policy
    world.settle()
    world.pd.delegate(incident_id, "PEP0002", by="PUSER02")  # moved again to the policy it is on
    world.settle()

    assert world.desk.tickets["10001"].assignment_group == "Network Ops"  # not bounced back to Network
    assert world.rest_calls("PUT") == [] and world.pd_markers() == {}
    assert policy(world, incident_id) == "PEP0002"


def test_a_quick_move_and_back_before_the_echo_ends_on_the_first_policy(world: World) -> None:
    incident_id = paged(world)
    world.desk.edit("10001", assignment_group="Network")
    world.desk.edit("10001", assignment_group="Service Desk")  # both reach us before PagerDuty's echo
    world.settle()

    assert policy(world, incident_id) == "PEP0001"
    puts = world.rest_calls("PUT", f"/incidents/{incident_id}")
    assert [p.body["incident"]["escalation_policy"]["id"] for p in puts] == ["PEP0002", "PEP0001"]
    assert world.desk.tickets["10001"].assignment_group == "Service Desk"


def group_edits(world: World) -> list[dict[str, Any]]:
    """What the reverse worker queued for a person's group edit after older news (decision log)."""
    return [d for d in world.decisions() if "group_edit" in d["detail"]]


@pytest.mark.parametrize(("world", "mode"), [("reassign",) * 2, ("add_responders",) * 2], indirect=["world"])
def test_a_move_delivered_after_a_newer_group_edit_keeps_the_edit_and_pagerduty_follows_it(
    world: World, mode: str
) -> None:
    """The late-webhook gap: a person moves the incident in PagerDuty, its webhook is delayed, and an agent then
    picks the ticket's group of the policy the incident was on. The agent's edit is the newer word: the late move
    must not set the group back, and PagerDuty must get what the edit asked for."""
    incident_id = paged(world, group="Network")  # on the service's policy PEP0001
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    delayed, world.pd.outbox = world.pd.outbox, []  # PagerDuty's webhook of that move is late
    world.desk.edit("10001", assignment_group="Service Desk")  # later: the agent picks PEP0001's group
    world.settle()
    assert world.rest_calls("PUT") == [] and world.pd.state.responder_requests.get(incident_id) is None
    for hook in delayed:
        world.pagerduty_webhook(hook)
    world.settle()

    assert world.desk.tickets["10001"].assignment_group == "Service Desk"  # the agent's edit stands
    moved = [c for c in world.desk.comments["10001"] if "moved to escalation policy PEP0002 by Jane Doe" in c]
    assert len(moved) == 1  # the move is history on the ticket, written once
    puts = [p.body["incident"]["escalation_policy"]["id"] for p in world.rest_calls("PUT", f"/incidents/{incident_id}")]
    if mode == "reassign":
        assert puts == ["PEP0001"] and policy(world, incident_id) == "PEP0001"
    else:  # add_responders: PEP0001 is asked to help; the incident stays where the person put it
        [request] = world.pd.state.responder_requests[incident_id]
        targets = [t["responder_request_target"]["id"] for t in request["responder_request_targets"]]
        assert targets == ["PEP0001"] and puts == [] and policy(world, incident_id) == "PEP0002"
    assert set(world.pd_markers().values()) == {1}  # one note, once
    [decided] = group_edits(world)
    assert "before a person's group change on the ticket" in decided["detail"]["group_edit"][0]
    assert any("the group stays" in why for why in decided["detail"]["why"])
    assert world.outbox_counts().keys() == {"sent"} and world.pd.spec_errors == []
    with world.svc.store.engine.connect() as conn:  # named for what it asks, as the engine names its own
        actions = conn.execute(select(outbox.c.action).where(outbox.c.kind == IncidentUpdate.KIND)).scalars().all()
    assert actions == [mode]


def test_a_move_newer_than_the_group_edit_sets_the_group(world: World) -> None:
    """The edit asked for PEP0001, where the incident was; a person then moves it to PEP0002 in PagerDuty. The
    person's move is the newer word: the ticket follows it, and nothing moves the incident back."""
    incident_id = paged(world, group="Network")
    world.desk.edit("10001", assignment_group="Service Desk")  # PEP0001: the incident is there already
    world.settle()
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.settle()

    assert world.desk.tickets["10001"].assignment_group == "Network"
    assert policy(world, incident_id) == "PEP0002" and world.rest_calls("PUT") == []
    assert group_edits(world) == []


def test_our_own_group_write_does_not_hold_back_a_persons_second_move(world: World) -> None:
    """A person moves the incident to PEP0002 and quickly back to PEP0001; the second move's webhook arrives after
    the ticket webhook of the group we wrote for the first. That write mirrors PagerDuty, it is not a person's
    edit: the second move still sets the group, and nothing is sent to PagerDuty."""
    incident_id = paged(world)  # Service Desk, PEP0001
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    first, world.pd.outbox = world.pd.outbox, []
    world.pd.delegate(incident_id, "PEP0001", by="PUSER02")
    second, world.pd.outbox = world.pd.outbox, []
    for hook in first:
        world.pagerduty_webhook(hook)
    world.settle()  # the ticket is moved to Network, and its webhook comes back
    assert world.desk.tickets["10001"].assignment_group == "Network"
    for hook in second:
        world.pagerduty_webhook(hook)
    world.settle()

    assert world.desk.tickets["10001"].assignment_group == "Service Desk"
    assert policy(world, incident_id) == "PEP0001" and world.rest_calls("PUT") == []
    assert world.pd.state.responder_requests.get(incident_id) is None and group_edits(world) == []


MAPPED = {"Service Desk": "PEP0001", "Network": "PEP0002", "Network Ops": "PEP0002"}


def puts(world: World, incident_id: str) -> list[str]:
    return [p.body["incident"]["escalation_policy"]["id"] for p in world.rest_calls("PUT", f"/incidents/{incident_id}")]


def agree(world: World, incident_id: str) -> bool:
    """The ticket's group maps to the escalation policy the incident is on."""
    return MAPPED[world.desk.tickets["10001"].assignment_group] == policy(world, incident_id)


def deliver(world: World, hooks: list[Delivery]) -> None:
    for hook in hooks:
        world.pagerduty_webhook(hook)
    world.settle()


@pytest.mark.parametrize(("world", "mode"), [("reassign",) * 2, ("add_responders",) * 2], indirect=["world"])
@pytest.mark.parametrize("ours", [False, True], ids=["their-ack", "our-ack"])
def test_an_acknowledge_after_the_edit_arriving_before_the_late_move_does_not_cancel_the_edit(
    world: World, mode: str, ours: bool
) -> None:
    """PagerDuty keeps no order across event types: an acknowledge made after the agent's edit (by the on-call, or
    ours when the agent starts work) arrives before the older move. It is no move: the edit still stands."""
    incident_id = paged(world, group="Network")  # PEP0001
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    late, world.pd.outbox = world.pd.outbox, []
    world.desk.edit("10001", assignment_group="Service Desk")
    if ours:
        world.desk.edit("10001", status_category=StatusCategory.IN_PROGRESS)
        world.settle()
    else:
        world.settle()
        world.pd.acknowledge(incident_id, by="PUSER02")
        world.settle()
    assert world.pd.state.incidents[incident_id]["status"] == "acknowledged"
    deliver(world, late)

    assert world.desk.tickets["10001"].assignment_group == "Service Desk"
    if mode == "reassign":
        assert puts(world, incident_id) == ["PEP0001"] and agree(world, incident_id)
    else:
        [request] = world.pd.state.responder_requests[incident_id]
        assert [t["responder_request_target"]["id"] for t in request["responder_request_targets"]] == ["PEP0001"]


@pytest.mark.parametrize("then", [["PEP0001", "PEP0002"], ["PEP0003"]], ids=["back-and-forth", "elsewhere"])
def test_a_persons_moves_after_the_edit_win_when_all_of_pagerdutys_webhooks_are_late(
    world: World, then: list[str]
) -> None:
    """Our endpoint was down: PagerDuty delivers the move from before the agent's edit and the person's moves
    after it together, in order. The person's last move is the newest word: nothing is reassigned behind it."""
    world.pd.add_policy("PEP0003", "Payments on-call", "PUSER02")
    incident_id = paged(world, group="Network")
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    late, world.pd.outbox = world.pd.outbox, []
    world.desk.edit("10001", assignment_group="Service Desk")
    world.settle()
    for target in then:
        world.pd.delegate(incident_id, target, by="PUSER02")
    late, world.pd.outbox = late + world.pd.outbox, []
    deliver(world, late)

    assert puts(world, incident_id) == [] and policy(world, incident_id) == then[-1]
    if then[-1] in MAPPED.values():
        assert world.desk.tickets["10001"].assignment_group == "Network" and agree(world, incident_id)


def test_a_late_move_after_an_edit_within_one_policy_sets_the_group(world: World) -> None:
    """An edit between two groups of one policy asks PagerDuty for nothing: the late move still sets the group,
    so the ticket and the incident agree."""
    incident_id = paged(world)
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.settle()
    world.pd.delegate(incident_id, "PEP0001", by="PUSER02")
    late, world.pd.outbox = world.pd.outbox, []
    world.desk.edit("10001", assignment_group="Network Ops")  # PEP0002, as Network
    world.settle()
    deliver(world, late)

    assert world.desk.tickets["10001"].assignment_group == "Service Desk" and agree(world, incident_id)
    assert puts(world, incident_id) == []


def test_nothing_is_sent_to_a_resolved_incident_for_an_edit_before_the_ticket_was_done(world: World) -> None:
    incident_id = paged(world, group="Network")
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    late, world.pd.outbox = world.pd.outbox, []
    world.desk.edit("10001", assignment_group="Service Desk")
    world.desk.edit("10001", status_category=StatusCategory.DONE)
    for change in world.desk.webhooks:
        world.ticket_webhook(change)
    world.desk.webhooks = []
    world.run()  # resolved through the Events API; its webhook comes after the late move
    assert world.pd.state.incidents[incident_id]["status"] == "resolved"
    late, world.pd.outbox = late + world.pd.outbox, []
    deliver(world, late)

    assert puts(world, incident_id) == [] and world.pd_markers() == {}
    assert world.pd.state.responder_requests.get(incident_id) is None


@pytest.mark.parametrize("echoes", ["together", "one-by-one"])
def test_two_quick_moves_in_pagerduty_end_on_the_second_and_send_nothing(world: World, echoes: str) -> None:
    """Both moves' webhooks arrive before the ticket webhook of the group we wrote for the first: the second
    move compares with that group, and neither write comes back as a reassignment."""
    incident_id = paged(world)  # Service Desk, PEP0001
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.pd.delegate(incident_id, "PEP0001", by="PUSER02")
    if echoes == "one-by-one":
        for hook in world.pd.outbox:
            world.pagerduty_webhook(hook)
        world.pd.outbox = []
        world.run()  # both group writes go out
        writes, world.desk.webhooks = world.desk.webhooks, []
        for change in writes:
            world.ticket_webhook(change)
            world.run()
    world.settle()

    assert puts(world, incident_id) == [] and policy(world, incident_id) == "PEP0001"
    assert world.desk.tickets["10001"].assignment_group == "Service Desk"
    moved = [c for c in world.desk.comments["10001"] if "moved to escalation policy" in c]
    assert len(moved) == 2  # both moves are told on the ticket, once each


@pytest.mark.parametrize("then", ["nothing", "resolve"])
def test_a_note_after_the_late_move_does_not_hold_up_the_edits_update(world: World, then: str) -> None:
    """The person moves the incident and adds a note; both webhooks are late. The move makes the edit's update due
    while the note still waits; the note, the last news, sends it. A resolve an hour later sends nothing more."""
    incident_id = paged(world, group="Network")
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.pd.add_note(incident_id, "moving this to the DB team", by="PUSER01")
    late, world.pd.outbox = world.pd.outbox, []
    world.desk.edit("10001", assignment_group="Service Desk")
    world.settle()
    deliver(world, late)
    assert world.desk.tickets["10001"].assignment_group == "Service Desk" and agree(world, incident_id)
    if then == "resolve":
        world.pd.resolve(incident_id, by="PUSER02")
        world.settle()
    assert puts(world, incident_id) == ["PEP0001"] and set(world.pd_markers().values()) == {1}


def test_a_group_write_that_failed_for_good_stops_counting_as_ours_after_the_retry_budget(
    world: World, clock: FakeClock
) -> None:
    """Our write of Network is refused for good (a dead letter); the person moves the incident back. Within the
    write-back's retry budget (an hour) an agent's move of the ticket to Network would be taken for its echo;
    after it, the agent's move is theirs and reassigns."""
    incident_id = paged(world)
    real = world.desk.update_ticket

    def refuse_network(update: TicketUpdate) -> None:
        if update.group == "Network":
            raise PermanentError("400 Bad Request: group not editable", status=400, vendor="Jira")
        real(update)

    world.desk.update_ticket = refuse_network  # type: ignore[method-assign]
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.settle()
    world.desk.update_ticket = real  # type: ignore[method-assign]
    world.pd.delegate(incident_id, "PEP0001", by="PUSER02")
    world.settle()
    clock.advance(MIRROR_SECONDS + 1)
    world.desk.edit("10001", assignment_group="Network")
    world.settle()
    assert puts(world, incident_id) == ["PEP0002"] and agree(world, incident_id)


@pytest.fixture
def world_without_user_id(
    db_url: str, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """Only FROM_EMAIL configured (no TICKETPAGER_PAGERDUTY__FROM_USER_ID)."""
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        w = build(db_url, rules_dir(tmp_path), clock, pd, events, from_user_id="")
        yield w
        w.svc.store.dispose()


def test_without_from_user_id_the_user_is_found_by_email_and_a_quick_move_and_back_does_not_loop(
    world_without_user_id: World,
) -> None:
    world = world_without_user_id
    incident_id = paged(world)
    world.desk.edit("10001", assignment_group="Network")
    world.desk.edit("10001", assignment_group="Service Desk")
    world.settle()

    puts = world.rest_calls("PUT", f"/incidents/{incident_id}")
    assert [p.body["incident"]["escalation_policy"]["id"] for p in puts] == ["PEP0002", "PEP0001"]  # not 3
    assert world.desk.tickets["10001"].assignment_group == "Service Desk"  # not flipped back by our own echo
    assert policy(world, incident_id) == "PEP0001"
    [lookup] = world.rest_calls("GET", "/users")  # once, at the first run
    assert lookup.query == {"query": ["ticketpager-bot@acme.example"], "limit": ["100"], "offset": ["0"]}
    assert world.svc.reverse.own_user is not None and world.svc.reverse.own_user.user_id == "PBOT001"
    assert "pagerduty" not in world.svc.readiness() and world.pd.spec_errors == []


def test_an_unresolved_from_user_makes_readiness_degraded_and_the_reverse_worker_write_nothing(
    world_without_user_id: World, clock: FakeClock
) -> None:
    world = world_without_user_id
    world.pd.fail_next(1, 403, body={"error": {"message": "Access Denied", "code": 2010}})  # the first GET /users
    world.desk.put(ticket("10001", attributes={"project": "OPS"}, assignment_group="Service Desk"))
    world.settle()  # paged; PagerDuty's webhooks wait: our own writes could not be told from a person's
    report = world.svc.readiness()
    assert report["degraded"] is True and report["ready"] is True
    assert "TICKETPAGER_PAGERDUTY__FROM_EMAIL" in report["pagerduty"]["from_user"]
    assert "Access Denied" in report["pagerduty"]["from_user"]
    assert world.svc.readiness(detail=False)["pagerduty"] == {"from_user": "unresolved"}
    assert world.svc.reverse.blocked
    assert world.svc.status_report()["pagerduty_inbox"]["pending"] == 1  # kept, not lost
    assert not any("Paged in PagerDuty" in c for c in world.desk.comments.get("10001", []))

    clock.advance(61)  # tried again a minute later: found, and the waiting webhook is handled
    world.settle()
    assert "pagerduty" not in world.svc.readiness()
    assert world.svc.status_report()["pagerduty_inbox"]["pending"] == 0
    assert sum("Paged in PagerDuty" in c for c in world.desk.comments["10001"]) == 1


def test_unreadable_group_bookkeeping_counts_as_none_and_stops_nothing(world: World) -> None:
    """Only ticketpager writes these columns; a hand edit that left something else there must not stop the
    incident's webhooks or the ticket's changes from being handled."""
    incident_id = paged(world)
    with world.svc.store.engine.begin() as conn:
        conn.execute(
            update(incidents).values(mirrored_group='{"not": "a list"}', group_edit_update="[1, 2")
        )
    world.pd.delegate(incident_id, "PEP0002", by="PUSER01")
    world.settle()
    assert world.desk.tickets["10001"].assignment_group == "Network"
    world.desk.edit("10001", assignment_group="Service Desk")
    world.settle()
    assert puts(world, incident_id) == ["PEP0001"] and agree(world, incident_id)
    assert world.outbox_counts().keys() == {"sent"}
