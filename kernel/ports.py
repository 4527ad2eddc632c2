"""The typed seams through which the pipeline (``sync/``) talks to rules and connectors without importing them.

The application (``ticketpager/``) wires the real implementations in: the rule set of ``rules/`` satisfies
:class:`RuleSet`, a connector of ``connectors/`` satisfies :class:`Source`. Outbound, the pipeline talks to a
:class:`kernel.model.Destination` (PagerDuty Events v2, a ticketing system's notes). Each Protocol names only
what the pipeline uses, so a test fake or another system fits without subclassing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

from kernel.incidents import IncidentEvent, IncidentStatus
from kernel.model import FieldChange, IncidentUpdate, LinkState, Ticket, TicketChange, TicketUpdate, TriggerSpec


class EvalContext(NamedTuple):
    """What one evaluation sees: the ticket, its previous version, what this update changed, and now.

    (Immutable; a named tuple rather than a frozen dataclass because one is built per evaluation and a
    frozen dataclass's ``__init__`` costs several times more.)
    """

    ticket: Ticket
    previous: Ticket | None
    changes: tuple[FieldChange, ...]
    now: datetime


class Verdict(Protocol):
    """One rule's verdict on one ticket version (``rules.RuleResult``): what the lifecycle plans from and the
    decision log records."""

    @property
    def rule(self) -> str: ...
    @property
    def applies(self) -> bool: ...  # False: the rule is for another source (never matched, never planned)
    @property
    def matched(self) -> bool: ...
    @property
    def explanation(self) -> tuple[str, ...]: ...
    @property
    def acknowledge(self) -> bool: ...
    @property
    def resolve(self) -> bool: ...
    @property
    def on_unmatch(self) -> str: ...
    @property
    def trigger(self) -> TriggerSpec | None: ...  # rendered on first access
    @property
    def rendered(self) -> bool: ...
    @property
    def problems(self) -> tuple[str, ...]: ...
    def to_json(self) -> dict[str, Any]:
        """The verdict as the decision log stores it: ``rule``, ``why``, and only the flags that differ from
        :data:`VERDICT_DEFAULTS` (plus ``template_problems`` of a rendered trigger). Shared: not to be changed."""
        ...


#: what a stored verdict (:meth:`Verdict.to_json`) is unless it says otherwise: most verdicts are rules that did
#: not match, stored as their name and why only (a change's decision of 100 rules was 13 KB with every flag,
#: written with every change: issue 19); readers fill these back in
VERDICT_DEFAULTS: Mapping[str, Any] = {"matched": False, "applies": True, "acknowledge": False, "resolve": False}


class RuleSet(Protocol):
    """A compiled, immutable rule set (``rules.RuleSet``)."""

    @property
    def digest(self) -> str: ...
    @property
    def has_time_rules(self) -> bool: ...

    def evaluate(self, ctx: EvalContext) -> Sequence[Verdict]: ...
    def encode(self, verdicts: Sequence[Verdict]) -> bytes:
        """The decision log's JSON array of ``verdicts`` (what :meth:`evaluate` returned): each one's
        :meth:`Verdict.to_json`, encoded once per verdict (most are shared by every ticket their rule rejects)."""
        ...


class IncidentContext(NamedTuple):
    """What one reverse decision sees: a person's action in PagerDuty (echoes of our own writes never get
    here), the ticket whose rule paged that incident (its last stored version) and that rule's link.
    ``pending_group``: the group ticketpager last wrote onto the ticket from a move in PagerDuty whose ticket
    webhook has not come back yet (the stored version does not show it): the ticket's group, as far as a
    ``set_group`` is concerned."""

    event: IncidentEvent
    ticket: Ticket
    link: LinkState
    now: datetime
    pending_group: str | None = None


class SyncPlan(Protocol):
    """One rule's two-way decision: the ticket updates / incident updates to queue, and why (decision log,
    ``rules test``). ``actions`` is empty when the rule configures nothing for this event.

    ``changed_group`` (``on_ticket_change`` only): the ticket's group after this change when the change moved it
    (values joined by ", "; "" when emptied), else None. The engine records when it moved, so PagerDuty news
    older than that edit, delivered late, does not set the group back (see ``docs/two-way.md``)."""

    @property
    def rule(self) -> str: ...
    @property
    def actions(self) -> tuple[TicketUpdate | IncidentUpdate, ...]: ...
    @property
    def explanation(self) -> tuple[str, ...]: ...
    @property
    def changed_group(self) -> str | None: ...


@runtime_checkable
class TwoWayRules(Protocol):
    """The reverse direction of a rule set (``rules.RuleSet`` satisfies it too). Pure, no I/O.

    ``on_incident``: what the rule that paged ``ctx.link`` writes onto the ticket for a PagerDuty event.
    ``on_ticket_change``: what a ticket change does to that rule's open incident ``incident_id`` (a new
    assignment group → reassign to the mapped escalation policy, or add it as responders).

    Runtime-checkable: the engine asks ``isinstance(ruleset, TwoWayRules)`` to know whether a rule set has the
    reverse half at all (a one-way rule set, or a test's, has not)."""

    def on_incident(self, ctx: IncidentContext) -> SyncPlan: ...

    def on_ticket_change(self, ctx: EvalContext, link: LinkState, incident_id: str) -> SyncPlan: ...


class IncidentStatusReader(Protocol):
    """What the incident check asks PagerDuty's REST API: an incident's status now (``GET /incidents/{id}``).
    Raises a :mod:`kernel.errors` kind on failure."""

    def incident_status(self, incident_id: str) -> IncidentStatus: ...


class IncidentLookup(Protocol):
    """What the reverse worker asks PagerDuty when it meets an incident it has not correlated yet: the
    ``alert_key`` of each of its alerts (one of them is our ``dedup_key`` for an incident we paged). The
    application wires the REST client in when ``TICKETPAGER_PAGERDUTY__API_TOKEN`` is set; raises a
    :mod:`kernel.errors` kind on failure."""

    def alert_keys(self, incident_id: str) -> Sequence[str]: ...


class SilenceMatcher(Protocol):
    """A silence's stored matchers, compiled by the rules language (``rules.silence_match``): whether a ticket,
    as it is now, is muted by it. Pure; evaluated only when a rule is about to trigger."""

    def matches(self, ticket: Ticket) -> bool: ...


class SilenceMatchers(Protocol):
    """Compiles stored matchers (a rule's ``when`` mapping, as JSON) into a :class:`SilenceMatcher`; raises
    :class:`kernel.errors.ConfigError` for matchers the current rules language no longer accepts."""

    def __call__(self, matchers: Mapping[str, Any]) -> SilenceMatcher: ...


class SourceSettings(Protocol):
    """The part of a connector's settings the poll loop reads."""

    @property
    def lookback_seconds(self) -> float: ...  # the first poll (no stored cursor yet) reads this far back


class Source(Protocol):
    """What the poll loop needs of a ticketing system's connector (``connectors.base.Connector``)."""

    @property
    def name(self) -> str: ...  # the system (jira, zendesk, …)
    @property
    def connection(self) -> str: ...  # the named instance of it: cursors, errors and tickets are keyed by it
    @property
    def settings(self) -> SourceSettings: ...

    def start_cursor(self, since: datetime) -> Mapping[str, Any]: ...
    def poll(self, cursor: Mapping[str, Any] | None) -> Iterator[PollPage]: ...


class PollPage(Protocol):
    """One page of a poll: the changes it read and the cursor to store with them."""

    @property
    def changes(self) -> Sequence[TicketChange]: ...
    @property
    def cursor(self) -> Mapping[str, Any]: ...
    @property
    def malformed(self) -> int: ...  # rows that are not a ticket we can read (each logged by the connector)


__all__ = [
    "EvalContext",
    "IncidentContext",
    "IncidentLookup",
    "IncidentStatusReader",
    "PollPage",
    "RuleSet",
    "SilenceMatcher",
    "SilenceMatchers",
    "Source",
    "SourceSettings",
    "SyncPlan",
    "TwoWayRules",
    "Verdict",
]
