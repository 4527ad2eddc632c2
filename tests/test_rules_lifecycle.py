"""Lifecycle tables: rule verdicts → sync.engine.plan → events (trigger → ack → resolve → reopen → trigger)."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kernel.lifecycle import next_state
from kernel.model import EventAction, LinkState, StatusCategory, Ticket, diff_tickets
from rules import EvalContext, RuleSet, load_rules
from sync.engine import plan

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
KEY = "0123456789abcdef0123456789abcdef"
RULES = textwrap.dedent(
    """\
    version: 1
    rules:
      - name: p1
        source: jira
        when: {priority: [Highest, P1]}
        acknowledge_when: {status_category: in_progress}
        trigger: {routing_key: "${PD_KEY}", severity: critical, summary: "{{ ticket.key }}"}
        on_unmatch: {on_unmatch}
    """
)
NEW, WIP, DONE, GONE = (StatusCategory.NEW, StatusCategory.IN_PROGRESS, StatusCategory.DONE, StatusCategory.DELETED)


class Incidents:
    """What the core keeps per (ticket, rule): the link state after each sent event."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.links: dict[str, LinkState] = {}
        self.previous: Ticket | None = None
        self.clock = T0

    def step(self, **changes: Any) -> list[tuple[str, str, int]]:
        self.clock += timedelta(minutes=5)
        base = self.previous or Ticket(
            source="jira",
            id="1",
            key="OPS-1",
            title="t",
            status="Open",
            status_category=NEW,
            updated=self.clock,
            priority="P1",
        )
        ticket = replace(base, updated=self.clock, **changes)
        results = self.ruleset.evaluate(
            EvalContext(ticket, self.previous, diff_tickets(self.previous, ticket), self.clock)
        )
        events = plan(results, self.links, ticket)
        for event in events:
            old = self.links.get(event.rule)
            self.links[event.rule] = (
                LinkState(
                    rule=event.rule,
                    dedup_key=event.dedup_key,
                    routing_key=event.routing_key,
                    state=next_state(event.action),
                    generation=event.generation,
                )
                if old is None or event.generation != old.generation
                else replace(old, state=next_state(event.action))
            )
            assert event.routing_key == KEY
        self.previous = ticket
        return [(e.action.value, e.dedup_key.rsplit("/", 1)[-1], e.generation) for e in events]


def _ruleset(tmp_path: Path, on_unmatch: str) -> RuleSet:
    path = tmp_path / "r.yaml"
    path.write_text(RULES.replace("{on_unmatch}", on_unmatch))
    return load_rules(path, env={"PD_KEY": KEY})


TRIGGER, ACK, RESOLVE = EventAction.TRIGGER.value, EventAction.ACKNOWLEDGE.value, EventAction.RESOLVE.value

# (change to the ticket, events expected as (action, dedup generation suffix, generation))
FULL_LIFE: list[tuple[dict[str, Any], list[tuple[str, str, int]]]] = [
    ({}, [(TRIGGER, "1", 1)]),  # new P1 → page
    ({"title": "t2"}, []),  # an update while open → nothing
    ({"status": "In Progress", "status_category": WIP}, [(ACK, "1", 1)]),  # in progress → acknowledge
    ({"title": "t3"}, []),  # already acknowledged
    ({"status": "Done", "status_category": DONE}, [(RESOLVE, "1", 1)]),  # done → resolve
    ({"title": "t4"}, []),  # done and resolved: quiet
    ({"status": "Reopened", "status_category": NEW}, [(TRIGGER, "2", 2)]),  # reopened → a NEW incident
    ({"status_category": GONE}, [(RESOLVE, "2", 2)]),  # deleted → resolve
]


def test_trigger_ack_resolve_reopen_trigger_delete(tmp_path: Path) -> None:
    incidents = Incidents(_ruleset(tmp_path, "keep"))
    for changes, expected in FULL_LIFE:
        assert incidents.step(**changes) == expected, changes


@pytest.mark.parametrize(
    ("on_unmatch", "expected"),
    [("keep", []), ("resolve", [(RESOLVE, "1", 1)])],
)
def test_lowering_the_priority_follows_on_unmatch(tmp_path: Path, on_unmatch: str, expected: list[Any]) -> None:
    incidents = Incidents(_ruleset(tmp_path, on_unmatch))
    assert incidents.step() == [(TRIGGER, "1", 1)]
    assert incidents.step(priority="P3") == expected
    # raising it again: with keep the incident is still open (nothing); with resolve it pages anew
    again = incidents.step(priority="P1")
    assert again == ([] if on_unmatch == "keep" else [(TRIGGER, "2", 2)])


def test_ticket_created_in_progress_triggers_and_acknowledges(tmp_path: Path) -> None:
    incidents = Incidents(_ruleset(tmp_path, "keep"))
    assert incidents.step(status_category=WIP) == [(TRIGGER, "1", 1), (ACK, "1", 1)]


def test_ticket_created_done_or_not_matching_never_pages(tmp_path: Path) -> None:
    assert Incidents(_ruleset(tmp_path, "keep")).step(status_category=DONE) == []
    assert Incidents(_ruleset(tmp_path, "keep")).step(priority="P4") == []
    assert Incidents(_ruleset(tmp_path, "keep")).step(status_category=GONE) == []


def test_duplicate_delivery_never_pages_twice(tmp_path: Path) -> None:
    incidents = Incidents(_ruleset(tmp_path, "keep"))
    assert incidents.step() == [(TRIGGER, "1", 1)]
    assert incidents.step() == []
    assert incidents.step(priority="Highest") == []
