"""What PagerDuty says happened to an incident (webhooks v3, or REST re-reads), as plain typed data.

The ground floor for the reverse direction (PagerDuty back to the tickets): :mod:`connectors.pagerduty_webhooks`
parses webhook bodies into these types, :mod:`connectors.pagerduty_rest` reads incidents into them, and the
pipeline and rules act on them without importing any connector.

Payload shape: https://developer.pagerduty.com/docs/webhooks/v3-overview/ (no JSON Schema is published).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

DOC_OVERVIEW = "https://developer.pagerduty.com/docs/webhooks/v3-overview/"
DOC_BEHAVIOR = "https://developer.pagerduty.com/docs/webhooks/webhook-behavior/"
#: the agent of an action taken through an Events API integration: ours, for the incidents we page
INTEGRATION_AGENT = "inbound_integration_reference"
#: the id prefix of the events ticketpager's own check writes into the inbox, from PagerDuty's REST API, for a
#: status change no webhook told (:mod:`sync.reconcile`); never the prefix of a PagerDuty event id
RECONCILED_EVENT_PREFIX = "tp-check-"


class EventType(StrEnum):
    """The v3 event types issue 16 acts on (DOC_OVERVIEW, "Event Types")."""

    TRIGGERED = "incident.triggered"
    ACKNOWLEDGED = "incident.acknowledged"
    UNACKNOWLEDGED = "incident.unacknowledged"
    RESOLVED = "incident.resolved"
    REOPENED = "incident.reopened"
    REASSIGNED = "incident.reassigned"  # another user
    DELEGATED = "incident.delegated"  # another escalation policy
    ESCALATED = "incident.escalated"  # another user at the same level
    ANNOTATED = "incident.annotated"  # a note was added
    RESPONDER_ADDED = "incident.responder.added"
    PRIORITY_UPDATED = "incident.priority_updated"


@dataclass(frozen=True, slots=True)
class Reference:
    """A PagerDuty ``*_reference`` object: enough to name and link it."""

    id: str
    type: str
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Agent(Reference):
    """Who acted: a user (person or our ``From`` bot user) or an integration (an Events API action)."""

    @property
    def is_integration(self) -> bool:
        return self.type == INTEGRATION_AGENT


@dataclass(frozen=True, slots=True)
class Incident:
    """The incident as an ``incident``-typed event carries it (a hint: re-read it through REST for truth).

    ``incident_key`` is null for Events-API incidents (the key lives on the alert, §0.1 of the notes)."""

    id: str
    number: int | None
    html_url: str
    status: str
    title: str
    service_id: str | None
    escalation_policy_id: str | None
    priority: str | None  # the priority's summary, e.g. "P2"
    assignees: tuple[Reference, ...]
    incident_key: str | None


@dataclass(frozen=True, slots=True)
class Note:
    """``incident.annotated``: ``trimmed`` means the content was cut; read it with ``GET …/notes``."""

    id: str
    content: str
    trimmed: bool


@dataclass(frozen=True, slots=True)
class Responder:
    """``incident.responder.added``: the user or escalation policy asked to help, and the request's message."""

    state: str
    message: str
    user: Reference | None
    escalation_policy: Reference | None


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One handled webhook event. ``incident`` is set for ``incident``-typed data; notes and responders carry
    only the incident's id (and its summary in ``incident_summary``)."""

    event_id: str
    event_type: EventType
    occurred_at: datetime
    incident_id: str
    incident_summary: str
    agent: Agent | None  # None: automation or a timeout (DOC_OVERVIEW)
    incident: Incident | None = None
    note: Note | None = None
    responder: Responder | None = None

    def is_echo(self, own_user_ids: Iterable[str] = (), own_integration_ids: Iterable[str] | None = None) -> bool:
        """Our own action coming back: the agent is our ``From`` bot user, or an Events API integration (one
        of ``own_integration_ids`` when they are known; any integration otherwise, as for an incident we paged
        an integration's action can only be ours)."""
        agent = self.agent
        if agent is None:
            return False
        if agent.id in set(own_user_ids):
            return True
        if not agent.is_integration:
            return False
        return own_integration_ids is None or agent.id in set(own_integration_ids)


@dataclass(frozen=True, slots=True)
class IncidentStatus:
    """An incident's status as PagerDuty's REST API has it now (``GET /incidents/{id}``): the truth a lost
    webhook left out. ``changed_at`` / ``changed_by``: ``last_status_change_at`` / ``_by`` (for an incident
    that is triggered, PagerDuty gives its ``updated_at``)."""

    incident: Incident
    changed_at: datetime | None
    changed_by: Reference | None


def is_reconciled(event_id: str) -> bool:
    """The event is one ticketpager's check wrote from PagerDuty's REST API (:data:`RECONCILED_EVENT_PREFIX`)."""
    return event_id.startswith(RECONCILED_EVENT_PREFIX)


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A valid event of a type the sync does not act on (``pagey.ping`` included): answered 2xx and counted,
    as a 4xx would count towards disabling the subscription (DOC_BEHAVIOR)."""

    event_id: str
    event_type: str


ParsedEvent = IncidentEvent | IgnoredEvent
