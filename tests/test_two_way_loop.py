"""The loop test (issue 16 item 4): both streams — ticket webhooks (people's edits, done, reopen, group changes,
and the echoes of our own comments, transitions and group writes) and PagerDuty webhooks (a person's
acknowledge, resolve, note, move to another escalation policy, and the echoes of our own Events-API and REST
actions) — delivered to the in-process service in shuffled orders and with duplicates, on a fake clock. Some
of PagerDuty's are dropped: the incident check tells what they said, and they arrive after all at the end.

Whatever the order, once everything has arrived: the outbox drains within a few rounds (no ping-pong), every
outbox row was sent, each (ticket, rule, generation) paged once, no note is written twice on either side, and
the link, the PagerDuty incident and the ticket agree (an open ticket whose incident a person resolved stays
unpaged only while it has not changed since: the hold rule)."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kernel.clock import FakeClock
from kernel.incidents import RECONCILED_EVENT_PREFIX
from kernel.lifecycle import content_digest
from kernel.model import StatusCategory
from rules.twoway import MARKER_PREFIX
from tests.factories import ROUTING_KEY, ticket
from tests.fakes.pagerduty_rest import FakePagerDutyRest
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.twoway_world import World, build, rules_dir

GROUPS = ["Service Desk", "Network", "Network Ops"]
TICKET_ACTS = ["title", "comment", "in_progress", "done", "reopen", *(f"group:{g}" for g in GROUPS)]
PD_ACTS = ["ack", "resolve", "annotate", "delegate:PEP0001", "delegate:PEP0002"]
#: rounds (deliver what is queued, run the workers) after which a drained world must be quiet
MAX_ROUNDS = 8
#: examples per run: 12 in CI (about 8 s per parametrization); a longer search for rare orders, e.g. before a release:
#: ``TICKETPAGER_LOOP_EXAMPLES=500 pytest --timeout 0 tests/test_two_way_loop.py`` (about 6 min per parametrization)
EXAMPLES = int(os.environ.get("TICKETPAGER_LOOP_EXAMPLES", "12"))

#: the incident check's quiet period (TICKETPAGER_PAGERDUTY__INCIDENT_CHECK_QUIET_SECONDS's default)
QUIET = 600

step = st.one_of(
    st.tuples(st.just("ticket"), st.sampled_from(TICKET_ACTS)),
    st.tuples(st.just("pd"), st.sampled_from(PD_ACTS)),
    st.tuples(st.just("deliver"), st.sampled_from(["ticket", "pd"]), st.integers(0, 40), st.booleans()),
    st.tuples(st.just("run")),
    # PagerDuty drops a webhook (a 4xx); it may arrive after all, after the incident check, at the end
    st.tuples(st.just("lose"), st.integers(0, 40)),
)


def person_in_ticket(world: World, act: str, titles: list[str]) -> None:
    desk = world.desk
    current = desk.tickets["10001"]
    if act == "title":
        titles.append(f"Checkout is down ({len(titles)})")
        desk.edit("10001", title=titles[-1])
    elif act == "comment":
        desk.edit("10001")  # a person's comment: only `updated` moves
    elif act == "in_progress" and current.status_category is StatusCategory.NEW:
        desk.edit("10001", status_category=StatusCategory.IN_PROGRESS)
    elif act == "done" and current.status_category is not StatusCategory.DONE:
        desk.edit("10001", status_category=StatusCategory.DONE)
    elif act == "reopen" and current.status_category is StatusCategory.DONE:
        desk.edit("10001", status_category=StatusCategory.NEW)
    elif act.startswith("group:"):
        desk.edit("10001", assignment_group=act.removeprefix("group:"))


def person_in_pagerduty(world: World, act: str, done: Counter[str]) -> None:
    """What a person does in PagerDuty's UI to the incident of the ticket's current link (if it exists yet)."""
    rows = world.link_rows()
    incident = world.incident_of(rows[0]["dedup_key"]) if rows else None
    if incident is None:
        return
    incident_id, status = str(incident["id"]), incident["status"]
    if act == "annotate":
        world.pd.add_note(incident_id, f"looking at it ({len(world.pd.state.notes[incident_id])})", by="PUSER02")
    elif status == "resolved":
        return  # PagerDuty offers no acknowledge, resolve or move on a resolved incident
    elif act == "ack" and status == "triggered":
        world.pd.acknowledge(incident_id, by="PUSER01")
        done["ack"] += 1
    elif act == "resolve":
        world.pd.resolve(incident_id, by="PUSER01")
        done["resolve"] += 1
    elif act.startswith("delegate:"):
        world.pd.delegate(incident_id, act.removeprefix("delegate:"), by="PUSER01")


def deliver(world: World, stream: str, index: int, again: bool, pending: dict[str, list[Any]]) -> None:
    """One webhook of ``stream``, picked by ``index`` (so out of order), kept for a redelivery if ``again``."""
    pending["ticket"] += world.desk.webhooks
    pending["pd"] += world.pd.outbox
    world.desk.webhooks, world.pd.outbox = [], []
    queue = pending[stream]
    if not queue:
        return
    item = queue[index % len(queue)] if again else queue.pop(index % len(queue))
    if stream == "ticket":
        world.ticket_webhook(item)
    else:
        world.pagerduty_webhook(item)


def lose(world: World, index: int, pending: dict[str, list[Any]], late: list[Any]) -> None:
    """PagerDuty drops one queued webhook (never the first news of an incident: without it nothing knows the
    incident's id, and nothing could ask about it)."""
    pending["pd"] += world.pd.outbox
    world.pd.outbox = []
    droppable = [d for d in pending["pd"] if json.loads(d.body)["event"]["event_type"] != "incident.triggered"]
    if droppable:
        gone = droppable[index % len(droppable)]
        pending["pd"].remove(gone)
        late.append(gone)


def play(
    world: World, clock: FakeClock, steps: list[tuple[Any, ...]], shuffle: random.Random, done: Counter[str]
) -> int:
    titles: list[str] = []
    pending: dict[str, list[Any]] = {"ticket": [], "pd": []}
    late: list[Any] = []
    world.desk.put(ticket("10001", attributes={"project": "OPS"}, assignment_group="Service Desk"))
    for kind, *args in steps:
        if kind == "ticket":
            person_in_ticket(world, args[0], titles)
        elif kind == "pd":
            person_in_pagerduty(world, args[0], done)
        elif kind == "deliver":
            deliver(world, args[0], args[1], args[2], pending)
        elif kind == "lose":
            lose(world, args[0], pending, late)
        else:
            world.run()
        clock.advance(5)
    # everything still on its way arrives, in a shuffled order, duplicates included
    rest = [("ticket", c) for c in pending["ticket"] + world.desk.webhooks] + [
        ("pd", d) for d in pending["pd"] + world.pd.outbox
    ]
    world.desk.webhooks, world.pd.outbox = [], []
    shuffle.shuffle(rest)
    for stream, item in rest:
        world.ticket_webhook(item) if stream == "ticket" else world.pagerduty_webhook(item)
    rounds = world.settle(rounds=MAX_ROUNDS)
    if not late:
        return rounds
    # quiet for a while: the incident check asks PagerDuty about what the dropped webhooks told
    clock.advance(QUIET + 1)
    world.svc.check_incidents()
    rounds = max(rounds, world.settle(rounds=MAX_ROUNDS))
    for hook in late:  # … and the dropped webhooks arrive after all (a replay): nothing is written twice
        world.pagerduty_webhook(hook)
    return max(rounds, world.settle(rounds=MAX_ROUNDS))


def check(world: World, done: Counter[str]) -> None:
    # the outbox drained: every action was sent, none is waiting or dead
    assert world.outbox_counts().keys() <= {"sent"}, world.outbox_counts()
    # one page per (ticket, rule, generation)
    assert set(world.triggers.values()) <= {1}, world.triggers
    # no note twice: on the ticket (what the agent sees, and what was even attempted), and on the incidents
    assert set(world.desk.marked("10001").values()) <= {1}
    assert set(world.desk.attempts.values()) <= {1}, [m for m, n in world.desk.attempts.items() if n > 1]
    assert set(world.pd_markers().values()) <= {1}
    # one comment per person's acknowledge and resolve, whether a webhook or the incident check told it
    comments = world.desk.comments.get("10001", [])
    assert sum("Resolved in PagerDuty by Jane Doe" in c for c in comments) <= done["resolve"]
    assert sum(" acknowledged by Jane Doe" in c for c in comments) <= done["ack"]
    # what the incident check told was a person's doing too, never our own action
    checked = [c for c in comments if f"[{MARKER_PREFIX}{RECONCILED_EVENT_PREFIX}" in c]
    assert all("Jane Doe" in c or "Sam Roe" in c for c in checked), checked
    # what reached the ticket from PagerDuty was a person's doing, never our own action coming back — except
    # the page's own first write-back (its number and link), once per incident
    from_pagerduty = [m.split(":")[1] for m in world.desk.marked("10001") if m.split(":")[1] in world.agents]
    pages = [e for e in from_pagerduty if world.kinds[e] == "incident.triggered"]
    assert {world.agents[e] for e in from_pagerduty if e not in pages} <= {"PUSER01", "PUSER02"}
    assert len(pages) <= len(world.pd.state.incidents)
    # link, incident and ticket agree
    links = world.link_rows()
    if not links:  # done before its first version was processed: never paged
        assert world.triggers == {} and world.pd.state.incidents == {}
        return
    [link] = links
    incident = world.incident_of(link["dedup_key"])
    assert incident is not None
    assert (link["state"] == "resolved") == (incident["status"] == "resolved"), (link, incident["status"])
    latest = world.desk.tickets["10001"]
    if latest.status_category is StatusCategory.DONE:
        assert link["state"] == "resolved"
    elif link["state"] == "resolved":  # the ticket still matches: only the hold keeps it from paging again
        assert link["hold_version"] == content_digest(latest)


@pytest.mark.parametrize("transition", [False, True], ids=["comment-only", "resolve-transitions"])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=30), shuffle=st.randoms(use_true_random=False))
# found by CI once (2026-12-03): a person's note delivered before their resolve made the resolve look stale (fails
# without the fix in the comment-only run; with resolve-transitions the ticket's done resolves the link anyway)
@example(
    steps=[
        ("deliver", "ticket", 0, False), ("run",), ("pd", "ack"), ("pd", "resolve"), ("pd", "annotate"),
        ("deliver", "pd", 0, False), ("deliver", "pd", 0, False), ("deliver", "pd", 1, False), ("run",),
    ],
    shuffle=random.Random(0),
)  # fmt: skip
def test_no_loop_no_repeat_under_any_order_of_the_two_streams(
    steps: list[tuple[Any, ...]], shuffle: random.Random, transition: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    with tempfile.TemporaryDirectory() as tmp, MockPagerDuty() as events, FakePagerDutyRest() as pd:
        rules = rules_dir(Path(tmp), resolved_transition=transition)
        clock = FakeClock()
        world = build(f"sqlite:///{tmp}/loop.db", rules, clock, pd, events)
        try:
            done: Counter[str] = Counter()  # what a person did in PagerDuty
            play(world, clock, steps, shuffle, done)  # raises when still busy after MAX_ROUNDS (measured: 2-3)
            check(world, done)
        finally:
            world.svc.store.dispose()


def test_a_person_resolving_while_the_ticket_stays_open_pages_again_only_after_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold rule, step by step: the note (and our comment's echo) does not page; the next real change does."""
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        rules = rules_dir(tmp_path, resolved_transition=False)  # the ticket stays open after the resolve
        world = build(f"sqlite:///{tmp_path}/hold.db", rules, FakeClock(), pd, events)
        world.desk.put(ticket("10001", attributes={"project": "OPS"}, assignment_group="Service Desk"))
        world.settle()
        [incident_id] = list(pd.state.incidents)
        pd.resolve(incident_id, by="PUSER01")
        world.settle()
        world.desk.edit("10001")  # someone comments: content unchanged
        world.settle()
        assert world.triggers == Counter({"ticketpager/jira/10001/ops-highest/1": 1})
        assert any("Resolved in PagerDuty by Jane Doe" in c for c in world.desk.comments["10001"])
        world.desk.edit("10001", title="Checkout is down again")
        world.settle()
        assert world.triggers == Counter(
            {"ticketpager/jira/10001/ops-highest/1": 1, "ticketpager/jira/10001/ops-highest/2": 1}
        )
        world.svc.store.dispose()
