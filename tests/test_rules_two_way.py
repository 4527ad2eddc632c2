"""The reverse direction of the rules (issue 16 items 3 and 5): what a person's action in PagerDuty writes onto
the ticket (``sync_back:``), what a ticket's group change does to its open incident (``escalation_policies:``),
both validated at load with ``file:line:col`` errors, and shown by ``rules test`` / checked by ``rules check
--online`` against the local PagerDuty REST fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.pagerduty_webhooks import parse_event
from kernel.incidents import IncidentEvent
from kernel.model import (
    FieldChange,
    IncidentState,
    IncidentUpdate,
    LinkState,
    StatusCategory,
    Ticket,
    TicketUpdate,
    Transition,
)
from kernel.ports import EvalContext, IncidentContext, SyncPlan, TwoWayRules
from rules import RuleFileErrors, RuleSet, load_rules
from tests.fakes.pagerduty_rest import TOKEN, FakePagerDutyRest

ROOT = Path(__file__).resolve().parent.parent
WEBHOOKS = ROOT / "tests" / "fixtures" / "pagerduty" / "webhooks"
NOW = datetime(2026, 9, 27, 10, 30, tzinfo=UTC)
INCIDENT_URL = "https://acme.pagerduty.com/incidents/Q1ABCDEF"

HEAD = """version: 1
groups: [Service Desk, Network, Database]
rules:
  - name: sn-p1
    source: servicenow
    when: {priority_number: 1}
    trigger: {routing_key: R0UT1NGKEY0000000000000000000001, severity: critical, summary: s}
"""
FULL = (
    HEAD
    + """    escalation_policies:
      groups: {Service Desk: PSVCDSK, Network: PNET001, Database: PEP0002}
    sync_back:
      acknowledged: true
      unacknowledged: true
      resolved:
        visibility: public
        transition: {status: Resolved, fields: {close_code: Solved (Permanently), close_notes: "By {{ agent.name }}"}}
      reopened: {transition: {category: in_progress}}
      reassigned: true
      delegated: {set_group: true}
      escalated: true
      annotated: true
      responder_added: true
      priority_updated: "Priority {{ incident.priority }} set by {{ agent.name }} on #{{ incident.number }}"
"""
)


def load(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return load_rules(path, env={})


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RuleFileErrors) as info:
        load_rules(path, env={})
    return [str(e).replace(str(path), "r.yaml") for e in info.value.errors]


def event(name: str, **changes: object) -> IncidentEvent:
    parsed = parse_event((WEBHOOKS / f"{name}.json").read_bytes())
    assert isinstance(parsed, IncidentEvent)
    return replace(parsed, **changes) if changes else parsed  # type: ignore[arg-type]


def ticket(**changes: object) -> Ticket:
    base = Ticket(
        source="servicenow",
        id="46d44a23",
        key="INC0010042",
        title="Checkout down",
        status="In Progress",
        status_category=StatusCategory.IN_PROGRESS,
        updated=datetime(2026, 9, 27, 10, 0, tzinfo=UTC),
        url="https://acme.service-now.com/incident.do?sys_id=46d44a23",
        priority="1 - Critical",
        assignment_group="Service Desk",
        attributes={"priority_number": 1},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def link(rule: str = "sn-p1", state: IncidentState = IncidentState.TRIGGERED) -> LinkState:
    return LinkState(rule, "ticketpager/servicenow/46d44a23/sn-p1/1", "R0UT1NGKEY0000000000000000000001", state, 1)


def write_back(rules: TwoWayRules, name: str, **kwargs: object) -> tuple[list[TicketUpdate], tuple[str, ...]]:
    plan = rules.on_incident(IncidentContext(event(name), ticket(**kwargs), link(), NOW))
    assert all(isinstance(a, TicketUpdate) for a in plan.actions)
    return [a for a in plan.actions if isinstance(a, TicketUpdate)], plan.explanation


# ------------------------------------------------------------------------------------------- write-back


def test_without_sync_back_nothing_is_written_back(tmp_path: Path) -> None:
    rules = load(tmp_path, HEAD)
    for name in ("acknowledged_by_user", "resolved_by_user", "annotated", "delegated_to_policy"):
        actions, why = write_back(rules, name)
        assert actions == [] and "the rule has no sync_back: nothing is written back" in why
    plan = rules.on_ticket_change(
        EvalContext(ticket(), None, (FieldChange("assignment_group", "Service Desk", "Network"),), NOW), link(), "Q1"
    )
    assert plan.actions == ()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("acknowledged_by_user", f"PagerDuty incident #812 acknowledged by Jane Doe — {INCIDENT_URL}"),
        ("unacknowledged_timeout", "is no longer acknowledged (by PagerDuty (automation or a timeout))"),
        ("reopened_by_user", "PagerDuty incident #812 reopened by Jane Doe"),
        ("reassigned_to_user", "PagerDuty incident #812 reassigned to Sam Roe by Jane Doe"),
        ("escalated", "PagerDuty incident #812 escalated to"),
        ("annotated", "Note from Jane Doe on PagerDuty incident Q1ABCDEF: [OPS-123] rolled back v2.14"),
        ("responder_added", 'Jane Doe asked Sam Roe / DB on-call to help on PagerDuty incident Q1ABCDEF: "Please'),
    ],
)
def test_default_comment_says_who_and_what_with_the_incident(tmp_path: Path, name: str, text: str) -> None:
    actions, _ = write_back(load(tmp_path, FULL), name)
    assert len(actions) == 1
    assert actions[0].comment is not None and text in actions[0].comment
    assert actions[0].public is False  # internal note / work note unless the rule says public
    assert actions[0].incident_id == "Q1ABCDEF"


def test_resolved_by_a_person_comments_publicly_and_transitions_with_the_required_fields(tmp_path: Path) -> None:
    actions, why = write_back(load(tmp_path, FULL), "resolved_by_user")
    [update] = actions
    assert update.public is True
    assert update.transition == Transition(
        status="Resolved", fields=(("close_code", "Solved (Permanently)"), ("close_notes", "By Jane Doe"))
    )
    assert (update.incident_url, update.incident_number) == (INCIDENT_URL, 812)
    assert "transition: 'In Progress' → status 'Resolved'" in why


def test_no_transition_when_the_ticket_is_already_there(tmp_path: Path) -> None:
    """Our own resolve's echo, or a ticket someone resolved first: the comment, but no second move."""
    actions, why = write_back(load(tmp_path, FULL), "resolved_by_user", status="resolved")
    assert actions[0].transition is None
    assert any("already at status 'Resolved'" in line for line in why)
    actions, _ = write_back(load(tmp_path, FULL), "reopened_by_user")  # in_progress already
    assert actions[0].transition is None


def test_comment_template_sees_the_incident_and_the_agent(tmp_path: Path) -> None:
    actions, _ = write_back(load(tmp_path, FULL), "priority_updated")
    assert actions[0].comment == "Priority P1 set by Jane Doe on #812"


def test_a_template_failing_at_runtime_writes_the_default_text_and_reports_it(tmp_path: Path) -> None:
    rules = load(tmp_path, HEAD + '    sync_back:\n      acknowledged: "Tier {{ ticket.custom.Tier.name }}"\n')
    plan = rules.on_incident(IncidentContext(event("acknowledged_by_user"), ticket(), link(), NOW))
    [update] = plan.actions
    assert isinstance(update, TicketUpdate) and update.comment is not None
    assert update.comment.startswith("PagerDuty incident #812 acknowledged by Jane Doe")
    assert plan.problems and "sync_back → acknowledged → comment" in plan.problems[0]


def test_markers_are_deterministic_per_event_and_rule(tmp_path: Path) -> None:
    rules = load(tmp_path, FULL)
    first, _ = write_back(rules, "acknowledged_by_user")
    again, _ = write_back(rules, "acknowledged_by_user")  # a redelivered webhook
    assert first[0].marker == again[0].marker == "tp:01EXAMPLE0ACKNOWLEDGED000:sn-p1"
    other, _ = write_back(rules, "annotated")
    assert other[0].marker != first[0].marker


def test_a_note_carrying_our_marker_is_never_mirrored_back(tmp_path: Path) -> None:
    rules = load(tmp_path, FULL)
    note = event("annotated")
    assert note.note is not None
    ours = replace(note, note=replace(note.note, content="INC0010042 moved to group 'Network' [tp:grp-0123:sn-p1]"))
    plan = rules.on_incident(IncidentContext(ours, ticket(), link(), NOW))
    assert plan.actions == () and any("ticketpager marker" in line for line in plan.explanation)


def test_an_event_kind_the_rule_does_not_list_writes_nothing(tmp_path: Path) -> None:
    rules = load(tmp_path, HEAD + "    sync_back: {acknowledged: true}\n")
    actions, why = write_back(rules, "resolved_by_user")
    assert actions == [] and "sync_back has no 'resolved': nothing is written back" in why


def test_a_rule_that_left_the_rule_set_writes_nothing(tmp_path: Path) -> None:
    plan = load(tmp_path, FULL).on_incident(IncidentContext(event("acknowledged_by_user"), ticket(), link("gone"), NOW))
    assert plan.actions == () and "no longer in the rule set" in plan.explanation[-1]


def test_delegated_sets_the_group_of_the_new_policy_from_the_reverse_map(tmp_path: Path) -> None:
    rules = load(tmp_path, FULL)
    actions, why = write_back(rules, "delegated_to_policy")  # to PEP0002 = Database
    assert actions[0].group == "Database" and "(group → Database)" in (actions[0].comment or "")
    actions, why = write_back(rules, "delegated_to_policy", assignment_group="Database")
    assert actions[0].group is None
    assert "set_group: the ticket is already in group 'Database' (policy PEP0002)" in why
    unmapped = event("delegated_to_policy")
    assert unmapped.incident is not None
    moved = replace(unmapped, incident=replace(unmapped.incident, escalation_policy_id="PZZZ999"))
    plan = rules.on_incident(IncidentContext(moved, ticket(), link(), NOW))
    assert isinstance(plan.actions[0], TicketUpdate) and plan.actions[0].group is None


def test_explicit_reverse_entries_say_which_group_a_shared_policy_means(tmp_path: Path) -> None:
    text = HEAD + (
        "    escalation_policies:\n"
        "      groups: {Service Desk: PNET001, Network: PNET001}\n"
        "      reverse: {PNET001: Network, PEP0002: Database}\n"
        "    sync_back: {delegated: {set_group: true, comment: false}}\n"
    )
    actions, _ = write_back(load(tmp_path, text), "delegated_to_policy")
    assert actions[0].group == "Database" and actions[0].comment is None


# -------------------------------------------------------------------------------------- ticket → incident


def group_change(
    rules: TwoWayRules, old: object, new: object, state: IncidentState = IncidentState.TRIGGERED
) -> SyncPlan:
    changes = (FieldChange("assignment_group", old, new),)
    return rules.on_ticket_change(
        EvalContext(ticket(assignment_group=new), None, changes, NOW), link(state=state), "Q1ABCDEF"
    )


def test_a_group_change_reassigns_the_open_incident_to_the_mapped_policy(tmp_path: Path) -> None:
    rules = load(tmp_path, FULL)
    plan = group_change(rules, "Service Desk", "Network")
    [update] = plan.actions
    assert isinstance(update, IncidentUpdate)
    assert (update.incident_id, update.reassign_to_policy, update.responder_policies) == ("Q1ABCDEF", "PNET001", ())
    assert update.dedup_key == link().dedup_key
    assert update.note is not None and "INC0010042" in update.note and "'Network'" in update.note
    assert update.marker.startswith("tp:grp-") and update.marker.endswith(":sn-p1")
    assert group_change(rules, "Service Desk", "Network").actions[0].marker == update.marker  # a replay: same marker
    assert "assignment_group → 'Network' (mapped to PNET001)" in plan.explanation


def test_add_responders_instead_of_reassigning(tmp_path: Path) -> None:
    rules = load(
        tmp_path, FULL.replace("Database: PEP0002}", "Database: PEP0002}\n      on_group_change: add_responders")
    )
    [update] = group_change(rules, "Service Desk", "Database").actions
    assert isinstance(update, IncidentUpdate)
    assert (update.reassign_to_policy, update.responder_policies) == (None, ("PEP0002",))


@pytest.mark.parametrize(
    ("old", "new", "state", "why"),
    [
        ("Service Desk", "Facilities", IncidentState.TRIGGERED, "no escalation policy mapped"),
        ("Network", "Network", IncidentState.ACKNOWLEDGED, "no escalation policy mapped"),
        ("Service Desk", "Network", IncidentState.RESOLVED, "the incident is resolved: nothing to reassign"),
    ],
)
def test_group_changes_that_do_nothing(tmp_path: Path, old: str, new: str, state: IncidentState, why: str) -> None:
    plan = group_change(load(tmp_path, FULL), old, new, state)
    assert plan.actions == () and why in plan.explanation[0]


def test_moving_between_two_groups_of_one_policy_does_not_reassign(tmp_path: Path) -> None:
    """The ServiceNow app's documented loop: groups A and B on one policy, each delegate moving the other back."""
    text = FULL.replace("Database: PEP0002}", "Database: PNET001}\n      reverse: {PNET001: Network}")
    plan = group_change(load(tmp_path, text), "Network", "Database")
    assert plan.actions == () and "same escalation policy PNET001 as before" in plan.explanation[0]


def test_unchanged_group_or_no_map_does_nothing(tmp_path: Path) -> None:
    rules = load(tmp_path, FULL)
    plan = rules.on_ticket_change(
        EvalContext(ticket(), None, (FieldChange("status", "New", "In Progress"),), NOW), link(), "Q1"
    )
    assert plan.actions == () and plan.explanation == ("assignment_group did not change",)
    off = load(tmp_path, FULL.replace("Database: PEP0002}", "Database: PEP0002}\n      on_group_change: none"))
    assert group_change(off, "Service Desk", "Network").actions == ()


def test_a_list_field_such_as_jira_components_maps_the_added_component(tmp_path: Path) -> None:
    text = """version: 1
rules:
  - name: ops
    source: jira
    when: {project: OPS}
    trigger: {routing_key: R0UT1NGKEY0000000000000000000001, severity: critical, summary: s}
    escalation_policies:
      field: components
      groups: {Payments: PPAY001, Database: PDBA001}
"""
    rules = load(tmp_path, text)
    changes = (FieldChange("components", ["Payments"], ["Payments", "Database"]),)
    plan = rules.on_ticket_change(EvalContext(ticket(source="jira"), None, changes, NOW), link("ops"), "Q1")
    [update] = plan.actions
    assert isinstance(update, IncidentUpdate) and update.reassign_to_policy == "PDBA001"


# ---------------------------------------------------------------------------------------------- validation


def test_valid_two_way_blocks_load(tmp_path: Path) -> None:
    rules = load(tmp_path, FULL)
    assert rules.two_way and rules.policy_positions()["PNET001"].line == 9
    assert not load(tmp_path, HEAD).two_way


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            "    sync_back:\n      note: true\n",
            "r.yaml:9:7: rule 'sn-p1' → sync_back: unknown PagerDuty event 'note' (did you mean 'annotated'?)",
        ),
        (
            "    sync_back:\n      acknowledge: true\n",
            "r.yaml:9:7: rule 'sn-p1' → sync_back: unknown PagerDuty event 'acknowledge' "
            "(did you mean 'acknowledged'?)",
        ),
        (
            "    escalation_policies:\n      groups: {Network: pnet001}\n",
            "r.yaml:9:25: rule 'sn-p1' → escalation_policies → groups → Network: escalation policy ids are upper "
            "case: did you mean 'PNET001'?",
        ),
        (
            "    escalation_policies:\n      groups: {Network: Network on-call}\n",
            "r.yaml:9:25: rule 'sn-p1' → escalation_policies → groups → Network: 'Network on-call' is not an "
            "escalation policy id",
        ),
        (
            "    escalation_policies:\n      groups: {Netwrok: PNET001}\n",
            "r.yaml:9:16: rule 'sn-p1' → escalation_policies → groups: unknown group 'Netwrok' (did you mean "
            "'Network'?) (groups: Service Desk, Network, Database)",
        ),
        (
            "    escalation_policies:\n      groups: {network: PNET001}\n",
            "r.yaml:9:16: rule 'sn-p1' → escalation_policies → groups: unknown group 'network' (did you mean "
            "'Network'? group names are matched exactly)",
        ),
        (
            "    escalation_policies:\n      groups: {Network: PNET001}\n      reverse: {PNET001: Databse}\n",
            "r.yaml:10:26: rule 'sn-p1' → escalation_policies → reverse → PNET001: unknown group 'Databse' (did you "
            "mean 'Database'?)",
        ),
        (
            "    escalation_policies:\n      groups: {Network: PNET001, Database: PNET001}\n"
            "    sync_back: {delegated: {set_group: true}}\n",
            "r.yaml:9:34: rule 'sn-p1' → escalation_policies → groups → Database: duplicate mapping: PNET001 is also "
            "the policy of 'Network' (line 9:16)",
        ),
        (
            "    escalation_policies:\n      groups: {Network: PNET001}\n      on_group_change: reasign\n",
            "r.yaml:10:24: rule 'sn-p1' → escalation_policies → on_group_change: must be reassign | add_responders "
            "| none, not 'reasign' (did you mean 'reassign'?)",
        ),
        (
            "    escalation_policies:\n      groups: {Network: PNET001}\n"
            "    sync_back: {resolved: {set_group: true}}\n",
            "r.yaml:10:39: rule 'sn-p1' → sync_back → resolved → set_group: set_group applies to 'delegated' only",
        ),
        (
            "    sync_back: {delegated: {set_group: true}}\n",
            "r.yaml:8:40: rule 'sn-p1' → sync_back → delegated → set_group: set_group needs the rule's "
            "escalation_policies:",
        ),
        (
            "    sync_back: {resolved: {transition: {status: Resolved, category: done}}}\n",
            "r.yaml:8:40: rule 'sn-p1' → sync_back → resolved → transition: needs exactly one of status",
        ),
        (
            "    sync_back: {resolved: {transition: {category: closed}}}\n",
            "r.yaml:8:51: rule 'sn-p1' → sync_back → resolved → transition → category: unknown status category "
            "'closed'",
        ),
        (
            '    sync_back: {acknowledged: "{{ agent.nam }}"}\n',
            "r.yaml:8:35: rule 'sn-p1' → sync_back → acknowledged: template uses unknown field 'agent.nam' (did you "
            "mean 'name'?)",
        ),
        (
            "    sync_back: {acknowledged: true, visibility: private}\n",
            "r.yaml:8:49: rule 'sn-p1' → sync_back → visibility: must be internal or public, not 'private'",
        ),
    ],
)
def test_two_way_mistakes_are_file_line_col_errors(tmp_path: Path, block: str, expected: str) -> None:
    found = errors(tmp_path, HEAD + block)
    assert any(e.startswith(expected) for e in found), found


def test_case_only_duplicates_and_a_duplicate_group_in_the_vocabulary(tmp_path: Path) -> None:
    text = HEAD.replace("groups: [Service Desk, Network, Database]", "groups: [Network, Database, Network]")
    found = errors(tmp_path, text)
    assert found == ["r.yaml:2:29: groups: duplicate group 'Network' (first listed at line 2:10)"]
    text = (
        "version: 1\nrules:\n"
        + HEAD.split("rules:\n", 1)[1]
        + ("    escalation_policies:\n      groups: {Network: PNET001, network: PNET002}\n")
    )
    assert errors(tmp_path, text) == [
        "r.yaml:8:34: rule 'sn-p1' → escalation_policies → groups: duplicate mapping: 'network' and 'Network' "
        "(line 8:16) differ only in case"
    ]


def test_without_a_groups_vocabulary_any_group_name_is_accepted(tmp_path: Path) -> None:
    text = (
        "version: 1\nrules:\n"
        + HEAD.split("rules:\n", 1)[1]
        + "    escalation_policies:\n      groups: {Anything: PNET001}\n"
    )
    assert set(load(tmp_path, text).policy_positions()) == {"PNET001"}


def test_zendesk_transition_status_is_checked_against_zendesk_statuses(tmp_path: Path) -> None:
    text = (
        "version: 1\nrules:\n  - name: zd\n    source: zendesk\n    when: {priority: urgent}\n"
        "    trigger: {routing_key: R0UT1NGKEY0000000000000000000001, severity: critical, summary: s}\n"
        "    sync_back: {resolved: {transition: {status: Solved}}}\n"
    )
    assert errors(tmp_path, text) == [
        "r.yaml:7:49: rule 'zd' → sync_back → resolved → transition → status: Zendesk statuses are lowercase: did "
        "you mean 'solved'? (or add ignore_case: true)"
    ]


# ------------------------------------------------------------------------------------------------------ CLI


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PD_", "TICKETPAGER_"))}
    return subprocess.run(
        [sys.executable, "-m", "ticketpager.cli", "rules", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**base, **(env or {})},
        timeout=60,
    )


@pytest.fixture
def rule_file(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(FULL)
    return path


@pytest.fixture
def ticket_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(ticket().to_json()))
    return path


def test_rules_test_shows_the_ticket_side_actions_for_a_pagerduty_event(rule_file: Path, ticket_file: Path) -> None:
    done = cli(
        "test",
        str(rule_file),
        "--ticket",
        str(ticket_file),
        "--pagerduty-event",
        str(WEBHOOKS / "resolved_by_user.json"),
    )
    assert done.returncode == 0, done.stderr
    assert "write-back (1):" in done.stdout
    assert "incident.resolved by Jane Doe on PagerDuty incident #812" in done.stdout
    assert '"close_code": "Solved (Permanently)"' in done.stdout
    done = cli(
        "test", str(rule_file), "--ticket", str(ticket_file), "--json",
        "--pagerduty-event", str(WEBHOOKS / "annotated.json"),
    )  # fmt: skip
    [action] = json.loads(done.stdout)["write_back"]
    assert action["kind"] == "ticket_update" and action["marker"] == "tp:01EXAMPLE0ANNOTATED000000:sn-p1"


def test_rules_test_shows_the_incident_update_of_a_group_change(rule_file: Path, tmp_path: Path) -> None:
    previous = tmp_path / "p.json"
    previous.write_text(json.dumps(ticket(updated=datetime(2026, 9, 27, 9, 0, tzinfo=UTC)).to_json()))
    current = tmp_path / "c.json"
    current.write_text(json.dumps(ticket(assignment_group="Network").to_json()))
    done = cli("test", str(rule_file), "--ticket", str(current), "--previous", str(previous), "--json")
    assert done.returncode == 0, done.stderr
    [action] = json.loads(done.stdout)["write_back"]
    assert action["kind"] == "incident_update" and action["reassign_to_policy"] == "PNET001"


def test_rules_test_refuses_an_event_the_service_ignores(rule_file: Path, ticket_file: Path) -> None:
    done = cli("test", str(rule_file), "--ticket", str(ticket_file), "--pagerduty-event", str(WEBHOOKS / "ping.json"))
    assert done.returncode == 2 and "accepted and ignored by the service" in done.stderr


@pytest.fixture
def pagerduty() -> Iterator[FakePagerDutyRest]:
    with FakePagerDutyRest() as fake:
        fake.add_policy("PNET001", "Network on-call", "PUSER01")
        fake.add_policy("PSVCDSK", "Service Desk", "PUSER02")
        yield fake


def test_rules_check_online_finds_every_policy_in_pagerduty(rule_file: Path, pagerduty: FakePagerDutyRest) -> None:
    env = {"TICKETPAGER_PAGERDUTY__API_TOKEN": TOKEN, "TICKETPAGER_PAGERDUTY__API_URL": pagerduty.url}
    done = cli("check", str(rule_file), "--online", env=env)
    assert done.returncode == 0, done.stderr
    assert "PEP0002 (DB on-call), PNET001 (Network on-call), PSVCDSK (Service Desk)" in done.stdout
    assert any(r.path.startswith("/escalation_policies") for r in pagerduty.requests)
    assert TOKEN not in done.stdout + done.stderr


def test_rules_check_online_points_at_a_policy_pagerduty_does_not_have(
    tmp_path: Path, pagerduty: FakePagerDutyRest
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(FULL.replace("Network: PNET001", "Network: PNET404"))
    env = {"TICKETPAGER_PAGERDUTY__API_TOKEN": TOKEN, "TICKETPAGER_PAGERDUTY__API_URL": pagerduty.url}
    done = cli("check", str(path), "--online", env=env)
    assert done.returncode == 1
    assert f"{path}:9:48: escalation policy PNET404 does not exist in PagerDuty" in done.stderr
    assert cli("check", str(path), env=env).returncode == 0  # offline, the id is well-formed


def test_rules_check_online_needs_a_token_and_never_shows_it(rule_file: Path, pagerduty: FakePagerDutyRest) -> None:
    done = cli("check", str(rule_file), "--online", env={"TICKETPAGER_PAGERDUTY__API_URL": pagerduty.url})
    assert done.returncode == 2 and "TICKETPAGER_PAGERDUTY__API_TOKEN" in done.stderr
    wrong = "wrong-token-0123456789abcdef"
    env = {"TICKETPAGER_PAGERDUTY__API_TOKEN": wrong, "TICKETPAGER_PAGERDUTY__API_URL": pagerduty.url}
    done = cli("check", str(rule_file), "--online", env=env)
    assert done.returncode == 1 and "PagerDuty" in done.stderr
    assert wrong not in done.stdout + done.stderr


def test_our_own_page_brings_the_first_write_back_by_default_and_triggered_false_turns_it_off(
    tmp_path: Path,
) -> None:
    """The page's ``incident.triggered`` (agent: our Events API integration) writes the incident's number and link
    for any rule with ``sync_back:``, though the block does not list ``triggered``."""
    actions, why = write_back(load(tmp_path, FULL), "triggered_events_api")
    [update] = actions
    page = event("triggered_events_api")
    assert page.incident is not None and page.agent is not None and page.agent.is_integration
    number, url = page.incident.number, page.incident.html_url
    assert update.comment == f"Paged in PagerDuty: PagerDuty incident #{number} — {url}"
    assert (update.incident_number, update.incident_url) == (page.incident.number, page.incident.html_url)
    assert update.marker == f"tp:{page.event_id}:sn-p1" and update.public is False
    assert any("first write-back" in w for w in why)

    off = FULL.replace("    sync_back:\n", "    sync_back:\n      triggered: false\n")
    actions, why = write_back(load(tmp_path, off), "triggered_events_api")
    assert actions == [] and "sync_back has no 'triggered' (triggered: false): nothing is written back" in why
    actions, why = write_back(load(tmp_path, HEAD), "triggered_events_api")  # no sync_back: nothing, as before
    assert actions == [] and "the rule has no sync_back: nothing is written back" in why

    # a block whose notes are public still writes the incident's number and link internally: turning the first
    # write-back on by default must not start mailing the requester (Zendesk) the internal incident's link
    public = FULL.replace("    sync_back:\n", "    sync_back:\n      visibility: public\n")
    [update], _ = write_back(load(tmp_path, public), "triggered_events_api")
    assert update.public is False
    explicit = FULL.replace(
        "    sync_back:\n", "    sync_back:\n      visibility: public\n      triggered: {comment: true}\n"
    )
    [update], _ = write_back(load(tmp_path, explicit), "triggered_events_api")
    assert update.public is True, "an explicit triggered: follows the block's visibility"
