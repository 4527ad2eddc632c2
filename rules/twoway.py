"""The reverse direction of a rule, evaluated: what a PagerDuty event writes onto the ticket (``sync_back:``) and
what a ticket's group change does to its open incident (``escalation_policies:``). Pure: no I/O, no clock.

Markers are deterministic, so a replayed webhook or ticket change queues the same action again and the
destination's marker check writes it once: ``tp:<webhook event id>:<rule>`` for a ticket update,
``tp:grp-<digest of incident key, ticket version and group>:<rule>`` for an incident update.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kernel.incidents import EventType, IncidentEvent
from kernel.model import FieldChange, IncidentUpdate, LinkState, Ticket, TicketUpdate, Transition
from kernel.ports import EvalContext, IncidentContext
from rules.spec import PolicyMapSpec, Reaction, RuleSpec, TransitionSpec
from rules.templates import (
    RULE_VARIABLES,
    TICKET_VARIABLES,
    Variables,
    render_safely,
    ticket_variables,
)

#: an event kind as a rule names it (``sync_back: acknowledged:``) → the v3 event type
#: (https://developer.pagerduty.com/docs/webhooks/v3-overview/, "Event Types")
KINDS: Mapping[str, EventType] = {t.value.removeprefix("incident.").replace(".", "_"): t for t in EventType}
KIND_OF: Mapping[EventType, str] = {t: k for k, t in KINDS.items()}
#: words admins write for a kind, and the kind they mean (an error suggests it; they are not accepted as is)
KIND_HINTS: Mapping[str, str] = {
    "note": "annotated",
    "notes": "annotated",
    "noted": "annotated",
    "note_added": "annotated",
    "ack": "acknowledged",
    "acked": "acknowledged",
    "responder": "responder_added",
    "responders": "responder_added",
    "add_responders": "responder_added",
    "priority": "priority_updated",
    "priority_changed": "priority_updated",
    "reassign": "reassigned",
    "assigned": "reassigned",
    "escalation_policy_changed": "delegated",
    "moved": "delegated",
}
#: the only kind that changes the incident's escalation policy, so the only one that may set the ticket's group
SET_GROUP_KIND = "delegated"
#: the page's own webhook (agent: our Events API integration): the first write-back, with the incident's number
#: and link (and Jira's remote link). On by default in every ``sync_back:`` block; ``triggered: false`` turns it off
FIRST_KIND = "triggered"
#: a ticket change on the group field → this is done to the open incident
ON_GROUP_CHANGE = ("reassign", "add_responders", "none")
MARKER_PREFIX = "tp:"
#: a note whose text carries one of our markers is our own: never mirrored back (connectors embed ``[tp:…]``)
OWN_MARKER = "[" + MARKER_PREFIX

INCIDENT_VARIABLES = frozenset(
    {"id", "number", "url", "title", "status", "priority", "escalation_policy", "escalation_policy_id", "assignees"}
)
SYNC_VARIABLES: Variables = {
    "ticket": TICKET_VARIABLES,
    "rule": RULE_VARIABLES,
    "now": None,
    "event": frozenset({"id", "type", "kind", "occurred_at"}),
    "incident": INCIDENT_VARIABLES,
    "agent": frozenset({"id", "name", "type"}),
    "note": frozenset({"content"}),
    "responder": frozenset({"name", "escalation_policy", "message", "state"}),
    "group": None,
}

#: the built-in comment of each kind: who did what, and the incident's link
DEFAULT_TEXT: Mapping[str, str] = {
    "triggered": "Paged in PagerDuty: {inc}{link}",
    "acknowledged": "{inc} acknowledged by {who}{link}",
    "unacknowledged": "{inc} is no longer acknowledged (by {who}){link}",
    "resolved": "{inc} resolved by {who}{link}",
    "reopened": "{inc} reopened by {who}{link}",
    "reassigned": "{inc} reassigned to {assignees} by {who}{link}",
    "delegated": "{inc} moved to escalation policy {policy} by {who}{link}",
    "escalated": "{inc} escalated to {assignees} by {who}{link}",
    "annotated": "Note from {who} on {inc}: {note}{link}",
    "responder_added": "{who} asked {responder} to help on {inc}{message}{link}",
    "priority_updated": "{inc} priority set to {priority} by {who}{link}",
}


@dataclass(frozen=True, slots=True)
class TwoWayPlan:
    """One rule's two-way decision (:class:`kernel.ports.SyncPlan`): the actions to queue and why.
    ``problems``: template errors (the default text was written instead). ``changed_group``: the ticket's
    group after a ticket change that moved it (``on_ticket_change`` only)."""

    rule: str
    actions: tuple[TicketUpdate | IncidentUpdate, ...] = ()
    explanation: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    changed_group: str | None = None


def kind_of(event: IncidentEvent) -> str:
    return KIND_OF[event.event_type]


def _who(event: IncidentEvent) -> str:
    agent = event.agent
    if agent is None:
        return "PagerDuty (automation or a timeout)"
    return agent.summary or agent.id


def _incident_name(event: IncidentEvent) -> str:
    number = event.incident.number if event.incident is not None else None
    return f"PagerDuty incident #{number}" if number is not None else f"PagerDuty incident {event.incident_id}"


def _url(event: IncidentEvent) -> str:
    return event.incident.html_url if event.incident is not None else ""


def default_comment(event: IncidentEvent, group: str | None = None) -> str:
    """The built-in text for ``event``: who did what, with the incident's link (and the group it sets)."""
    incident, responder = event.incident, event.responder
    url = _url(event)
    assignees = ", ".join(a.summary or a.id for a in incident.assignees) if incident is not None else ""
    policy = ""
    if incident is not None and incident.escalation_policy_id:
        policy = incident.escalation_policy_id
    target = ""
    if responder is not None:
        names = [r.summary or r.id for r in (responder.user, responder.escalation_policy) if r is not None]
        target = " / ".join(names)
    note = event.note.content if event.note is not None else ""
    if event.note is not None and event.note.trimmed:
        note += " […] (cut by PagerDuty: the whole note is in the incident)"
    message = f': "{responder.message}"' if responder is not None and responder.message else ""
    return DEFAULT_TEXT[kind_of(event)].format(
        inc=_incident_name(event),
        who=_who(event),
        link=f" — {url}" if url else "",
        assignees=assignees or "nobody",
        policy=policy or "another escalation policy",
        note=note,
        responder=target or "a responder",
        message=message,
        priority=(incident.priority if incident is not None else None) or "none",
    ) + (f" (group → {group})" if group else "")


def sync_context(
    rule: RuleSpec, event: IncidentEvent, ticket: Ticket, now: datetime, group: str | None
) -> dict[str, Any]:
    """What a sync-back template sees (:data:`SYNC_VARIABLES`)."""
    incident, agent, responder = event.incident, event.agent, event.responder
    return {
        "ticket": ticket_variables(ticket),
        "rule": {"name": rule.name, "description": rule.description},
        "now": now,
        "event": {
            "id": event.event_id,
            "type": event.event_type.value,
            "kind": kind_of(event),
            "occurred_at": event.occurred_at,
        },
        "incident": {
            "id": event.incident_id,
            "number": incident.number if incident is not None else None,
            "url": _url(event),
            "title": incident.title if incident is not None else event.incident_summary,
            "status": incident.status if incident is not None else None,
            "priority": incident.priority if incident is not None else None,
            "escalation_policy": incident.escalation_policy_id if incident is not None else None,
            "escalation_policy_id": incident.escalation_policy_id if incident is not None else None,
            "assignees": [a.summary or a.id for a in incident.assignees] if incident is not None else [],
        },
        "agent": {
            "id": agent.id if agent is not None else None,
            "name": _who(event),
            "type": agent.type if agent is not None else None,
        },
        "note": {"content": event.note.content if event.note is not None else ""},
        "responder": {
            "name": (responder.user.summary or responder.user.id) if responder and responder.user else None,
            "escalation_policy": (
                (responder.escalation_policy.summary or responder.escalation_policy.id)
                if responder and responder.escalation_policy
                else None
            ),
            "message": responder.message if responder is not None else "",
            "state": responder.state if responder is not None else "",
        },
        "group": group,
    }


def _already_there(transition: TransitionSpec, ticket: Ticket) -> bool:
    if transition.category is not None:
        return ticket.status_category is transition.category
    return transition.status is not None and ticket.status.casefold() == transition.status.casefold()


def _target(transition: TransitionSpec) -> str:
    if transition.category is not None:
        return f"status category {transition.category.value}"
    return f"status '{transition.status}'"


def _current_group(policies: PolicyMapSpec, ticket: Ticket) -> Any:
    return policies.group_field.get(ticket)


def on_incident(rule: RuleSpec | None, rule_name: str, ctx: IncidentContext) -> TwoWayPlan:
    """What ``rule`` (the rule that paged ``ctx.link``) writes onto the ticket for ``ctx.event``."""
    event, ticket = ctx.event, ctx.ticket
    kind = kind_of(event)
    who = _who(event)
    heard = f"{event.event_type.value} by {who} on {_incident_name(event)}"
    if rule is None:
        return TwoWayPlan(rule_name, explanation=(heard, f"rule '{rule_name}' is no longer in the rule set: nothing"))
    if rule.sync_back is None:
        return TwoWayPlan(rule.name, explanation=(heard, "the rule has no sync_back: nothing is written back"))
    reaction = rule.sync_back.reactions.get(kind)
    if reaction is None:
        off = " (triggered: false)" if kind == FIRST_KIND else ""
        return TwoWayPlan(rule.name, explanation=(heard, f"sync_back has no '{kind}'{off}: nothing is written back"))
    if kind == "annotated" and event.note is not None and OWN_MARKER in event.note.content:
        return TwoWayPlan(rule.name, explanation=(heard, "the note carries a ticketpager marker (ours): not mirrored"))
    why = [heard]
    problems: list[str] = []
    group = _reverse_group(rule, reaction, event, ticket, why, pending=ctx.pending_group)
    context = sync_context(rule, event, ticket, ctx.now, group)
    comment = None
    if reaction.comment is not None:
        fallback = default_comment(event, group)
        if reaction.default_text:
            comment = fallback
        else:
            comment, problem = render_safely(reaction.comment, context, fallback)
            if problem:
                problems.append(f"template error in sync_back → {kind} → comment: {problem} (default text written)")
            comment = comment.strip() or fallback
        why.append(f"sync_back → {kind}: {'public comment' if reaction.public else 'internal comment'}")
        if kind == FIRST_KIND:
            why.append("the page's first write-back: the incident's number and link (Jira: a remote link too)")
    transition = _transition(reaction.transition, ticket, context, kind, why, problems)
    if comment is None and transition is None and group is None:
        why.append("nothing to write")
        return TwoWayPlan(rule.name, explanation=tuple(why), problems=tuple(problems))
    marker = f"{MARKER_PREFIX}{event.event_id}:{rule.name}"
    update = TicketUpdate(
        ticket=ticket.ref,
        marker=marker,
        comment=comment,
        public=reaction.public,
        transition=transition,
        group=group,
        incident_id=event.incident_id,
        incident_url=_url(event),
        incident_number=event.incident.number if event.incident is not None else None,
    )
    why.append(f"ticket update {marker}")
    return TwoWayPlan(rule.name, (update,), tuple(why), tuple(problems))


def _reverse_group(
    rule: RuleSpec, reaction: Reaction, event: IncidentEvent, ticket: Ticket, why: list[str], *, pending: str | None
) -> str | None:
    """The group the ticket moves to (``set_group: true`` on ``delegated``), from the reverse map. ``pending``: a
    group we wrote that the stored ticket does not show yet (two quick moves: the second compares with the first's
    group, not with the group before both)."""
    if not reaction.set_group or rule.policies is None:
        return None
    policy = event.incident.escalation_policy_id if event.incident is not None else None
    if policy is None:
        why.append("set_group: the event names no escalation policy")
        return None
    group = rule.policies.reverse.get(policy)
    if group is None:
        why.append(f"set_group: escalation policy {policy} is not in the map: the group stays")
        return None
    current = pending if pending is not None else _current_group(rule.policies, ticket)
    if current == group or (isinstance(current, list | tuple) and group in current):
        why.append(f"set_group: the ticket is already in group '{group}' (policy {policy})")
        return None
    mapped_here = [g for g in _values(current) if rule.policies.groups.get(g) == policy]
    if mapped_here:  # two groups on one policy: moving the ticket to the other would be ServiceNow's loop
        why.append(f"set_group: the ticket's group '{mapped_here[0]}' already maps to policy {policy}: the group stays")
        return None
    why.append(f"set_group: {rule.policies.group_field.name} → '{group}' (policy {policy} in the map)")
    return group


def _transition(
    spec: TransitionSpec | None,
    ticket: Ticket,
    context: Mapping[str, Any],
    kind: str,
    why: list[str],
    problems: list[str],
) -> Transition | None:
    if spec is None:
        return None
    if _already_there(spec, ticket):
        why.append(f"transition: the ticket is already at {_target(spec)} ('{ticket.status}'): no move")
        return None
    values: list[tuple[str, str]] = []
    for name, template in spec.fields:
        text, problem = render_safely(template, context, template.source)
        if problem:
            problems.append(f"template error in sync_back → {kind} → transition → fields → {name}: {problem}")
        values.append((name, text))
    why.append(f"transition: '{ticket.status}' → {_target(spec)}")
    return Transition(status=spec.status, category=spec.category, fields=tuple(values))


# ------------------------------------------------------------------------------------- ticket → incident


def _change(changes: Sequence[FieldChange], name: str) -> FieldChange | None:
    for change in reversed(changes):
        if change.field == name:
            return change
    return None


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def group_marker(link: LinkState, ticket: Ticket, group: str, rule: str) -> str:
    digest = hashlib.sha256(f"{link.dedup_key}\0{ticket.updated.isoformat()}\0{group}".encode()).hexdigest()[:16]
    return f"{MARKER_PREFIX}grp-{digest}:{rule}"


def on_ticket_change(
    rule: RuleSpec | None, rule_name: str, ctx: EvalContext, link: LinkState, incident_id: str
) -> TwoWayPlan:
    """A group change of the ticket → reassign ``incident_id`` to the mapped escalation policy, or add it."""
    if rule is None:
        return TwoWayPlan(rule_name, explanation=(f"rule '{rule_name}' is no longer in the rule set: nothing",))
    policies = rule.policies
    if policies is None or policies.on_group_change == "none":
        return TwoWayPlan(rule.name, explanation=("the rule maps no group change to PagerDuty",))
    if not link.state.is_open:
        return TwoWayPlan(rule.name, explanation=("the incident is resolved: nothing to reassign",))
    name = policies.group_field.name
    change = _change(ctx.changes, name)
    if change is None:
        return TwoWayPlan(rule.name, explanation=(f"{name} did not change",))
    old, new = _values(change.old), _values(change.new)
    moved_to = ", ".join(new)
    added = [g for g in new if g not in old]
    mapped = [g for g in added if g in policies.groups]
    if not mapped:
        shown = ", ".join(repr(g) for g in added) or "none"
        return TwoWayPlan(
            rule.name,
            explanation=(f"{name} changed to {shown}: no escalation policy mapped",),
            changed_group=moved_to,
        )
    group = mapped[0]
    policy = policies.groups[group]
    before = {policies.groups[g] for g in old if g in policies.groups}
    if policy in before:
        return TwoWayPlan(
            rule.name,
            explanation=(f"{name} → '{group}': same escalation policy {policy} as before: nothing",),
            changed_group=moved_to,
        )
    marker = group_marker(link, ctx.ticket, group, rule.name)
    ticket = ctx.ticket
    where = f" ({ticket.url})" if ticket.url else ""
    if policies.on_group_change == "reassign":
        note = f"{ticket.key}{where} moved to group '{group}': reassigned to escalation policy {policy}"
        note += f" (rule '{rule.name}')"
        update = IncidentUpdate(incident_id, link.dedup_key, marker, reassign_to_policy=policy, note=note)
        what = f"reassign incident {incident_id} to escalation policy {policy}"
    else:
        note = f"{ticket.key}{where} moved to group '{group}': escalation policy {policy} asked to help"
        note += f" (rule '{rule.name}')"
        update = IncidentUpdate(incident_id, link.dedup_key, marker, responder_policies=(policy,), note=note)
        what = f"add escalation policy {policy} as responders on incident {incident_id}"
    why = (f"{name} → '{group}' (mapped to {policy})", what, f"incident update {marker}")
    return TwoWayPlan(rule.name, (update,), why, changed_group=moved_to)
