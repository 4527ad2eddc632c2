"""The validated form of a rule set: what validation produces and the evaluator compiles.

Every value here is already checked (operators known, arguments prepared, templates compiled, routing
keys resolved); nothing in this module can fail at evaluation time except a template render.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from kernel.model import StatusCategory, Ticket
from rules.calendars import Calendar
from rules.loader import Pos
from rules.operators import Operator
from rules.templates import Template

Getter = Callable[[Ticket], Any]


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A field a rule names, and how to read it from a ticket."""

    name: str
    get: Getter = field(compare=False)
    is_list: bool = False


@dataclass(frozen=True, slots=True)
class Leaf:
    """``field: {op: arg}``; ``field`` None means "now" (top-level ``during`` / ``outside``)."""

    field: FieldRef | None
    op: Operator
    arg: Any  # prepared (compiled regex, folded values, timedelta, Calendar …)
    raw_arg: Any  # as written, for explanations
    ignore_case: bool = False

    def describe(self) -> str:
        name = self.field.name if self.field else "now"
        arg = self.raw_arg if not isinstance(self.raw_arg, list) else list(self.raw_arg)
        if isinstance(arg, bool):
            shown = "true" if arg else "false"
        elif isinstance(arg, date):  # an unquoted YAML timestamp or date: as written, not datetime.datetime(…)
            shown = arg.isoformat()
        else:
            shown = repr(arg)
        suffix = " (ignore_case)" if self.ignore_case else ""
        return f"{name} {self.op.name} {shown}{suffix}"


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Cond, ...]

    def describe(self) -> str:
        return "all of (" + "; ".join(i.describe() for i in self.items) + ")"


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Cond, ...]

    def describe(self) -> str:
        return "any of (" + "; ".join(i.describe() for i in self.items) + ")"


@dataclass(frozen=True, slots=True)
class NotOf:
    item: Cond

    def describe(self) -> str:
        return "not (" + self.item.describe() + ")"


Cond = Leaf | AllOf | AnyOf | NotOf


def has_time_condition(cond: Cond | None) -> bool:
    if cond is None:
        return False
    if isinstance(cond, Leaf):
        return cond.op.time
    if isinstance(cond, NotOf):
        return has_time_condition(cond.item)
    return any(has_time_condition(c) for c in cond.items)


def field_names(cond: Cond | None) -> set[str]:
    """Every field a condition reads (``priority``, ``custom.Tier``, ``fields.customfield_1.value`` …)."""
    if cond is None:
        return set()
    if isinstance(cond, Leaf):
        return {cond.field.name} if cond.field is not None else set()
    if isinstance(cond, NotOf):
        return field_names(cond.item)
    return set().union(*(field_names(c) for c in cond.items))


@dataclass(frozen=True, slots=True)
class SeveritySpec:
    """A literal severity, or ``{from: field, map: {...}, default: ...}``."""

    literal: str | None = None
    source: FieldRef | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)
    default: str = "error"


@dataclass(frozen=True, slots=True)
class TriggerTemplate:
    """A rule's trigger before rendering."""

    routing_key: str = field(repr=False)
    severity: SeveritySpec
    summary: Template
    source: Template | None = None
    component: Template | None = None
    group: Template | None = None
    class_: Template | None = None
    custom_details: Mapping[str, Any] = field(default_factory=dict)  # values: Template | scalar | nested
    links: tuple[Mapping[str, Template], ...] = ()
    images: tuple[Mapping[str, Template], ...] = ()


@dataclass(frozen=True, slots=True)
class TransitionSpec:
    """``transition:`` of a sync-back reaction: a target status by name, or a status category; ``fields``
    fills what the move requires (values are templates: ``close_notes: "Resolved by {{ agent.name }}"``)."""

    status: str | None
    category: StatusCategory | None
    fields: tuple[tuple[str, Template], ...] = ()


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a rule writes onto its ticket for one kind of PagerDuty event (``sync_back: <kind>:``).

    ``comment`` None: no comment; ``default_text``: the comment is the built-in text for the kind."""

    kind: str
    comment: Template | None
    default_text: bool
    public: bool
    transition: TransitionSpec | None = None
    set_group: bool = False


@dataclass(frozen=True, slots=True)
class SyncBackSpec:
    """A rule's ``sync_back:`` block: event kind → reaction (a kind not listed writes nothing)."""

    reactions: Mapping[str, Reaction]


@dataclass(frozen=True, slots=True)
class PolicyMapSpec:
    """A rule's ``escalation_policies:`` block (Central Ops): ticket group → escalation policy, what a group
    change does to the open incident, and policy → group for a move made in PagerDuty. ``positions``: where
    each policy id is written (``rules check --online`` points at it)."""

    group_field: FieldRef
    groups: Mapping[str, str]
    reverse: Mapping[str, str]
    on_group_change: str  # reassign | add_responders | none
    positions: Mapping[str, Pos] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One validated rule."""

    name: str
    description: str
    source: str  # jira | zendesk | servicenow | any
    when: Cond
    trigger: TriggerTemplate
    acknowledge_when: Cond | None
    resolve_when: Cond
    on_unmatch: str
    continue_: bool
    pos: Pos
    sync_back: SyncBackSpec | None = None  # None: nothing is written back (the default)
    policies: PolicyMapSpec | None = None

    @property
    def is_time_rule(self) -> bool:
        return any(has_time_condition(c) for c in (self.when, self.acknowledge_when, self.resolve_when))


@dataclass(frozen=True, slots=True)
class RuleSetSpec:
    rules: tuple[RuleSpec, ...]
    calendars: Mapping[str, Calendar]
    groups: tuple[str, ...] = ()  # the top-level ``groups:`` vocabulary (empty: not declared)
