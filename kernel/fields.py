"""The field names rules may use, per source: the contract between connectors and the rules engine.

A rule's ``when`` key resolves, in order, to: a :data:`TICKET_FIELDS` attribute of the normalized
ticket; ``custom.<name>`` (a custom field by display name or id); a connector attribute listed in
:data:`SOURCE_ATTRIBUTES` (``ticket.attributes[name]``); or, when it contains a dot, a path into the raw
vendor payload (``fields.customfield_10010.value``). Any other bare name is a rule-file error, so a typo
can never silently stop a rule from matching. Connectors must fill exactly these attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TICKET_FIELDS: frozenset[str] = frozenset(
    {
        "source",
        "connection",
        "id",
        "key",
        "url",
        "title",
        "description",
        "status",
        "status_category",
        "priority",
        "assignee",
        "assignment_group",
        "requester",
        "organization",
        "labels",
        "created",
        "updated",
    }
)

SOURCE_ATTRIBUTES: dict[str, frozenset[str]] = {}
"""source name -> the attributes its connector fills, one entry per system registered in
:mod:`connectors.registry` (which declares them here through :func:`declare_source` when it is imported)."""


def declare_source(name: str, attributes: frozenset[str]) -> None:
    """Record that source ``name`` exists and which ``ticket.attributes`` its connector fills."""
    SOURCE_ATTRIBUTES[name] = frozenset(attributes)


CONNECTIONS: dict[str, str] = {}
"""connection name -> its system, for the connections the application configured beyond the default ones
(each system's default connection is named after it and always exists); rule validation reads it."""


@dataclass(frozen=True, slots=True)
class ConnectionVocabulary:
    """What one connection's settings say its tickets hold, beyond its system's stock vocabulary.

    ``custom_field_names``: the names its ``custom.<name>`` fields carry (Zendesk's ``custom_field_names``);
    empty means not configured, so any name is accepted. ``status_categories``: the categories its tickets
    can have (a ServiceNow ``state_map`` may leave a stock category unused); None means all of them."""

    custom_field_names: frozenset[str] = frozenset()
    status_categories: frozenset[str] | None = None


VOCABULARIES: dict[str, ConnectionVocabulary] = {}
"""connection name (default ones included) -> its :class:`ConnectionVocabulary`; absent: nothing known."""


def declare_connections(
    connections: dict[str, str], vocabularies: Mapping[str, ConnectionVocabulary] | None = None
) -> None:
    """Record the configured connections (name -> system) and what each one's settings say its tickets
    hold, replacing any earlier declaration."""
    CONNECTIONS.clear()
    CONNECTIONS.update(connections)
    VOCABULARIES.clear()
    VOCABULARIES.update(vocabularies or {})


def connection_vocabulary(name: str) -> ConnectionVocabulary:
    """What connection ``name``'s settings declared (nothing, if it declared nothing)."""
    return VOCABULARIES.get(name, _NOTHING_KNOWN)


_NOTHING_KNOWN = ConnectionVocabulary()


def connection_systems() -> dict[str, str]:
    """Every known connection -> its system: the default ones (one per declared source) and the declared."""
    return {name: name for name in SOURCE_ATTRIBUTES} | CONNECTIONS


def all_attributes() -> frozenset[str]:
    """Every attribute of every declared source (what a rule with ``source: any`` may read)."""
    return frozenset().union(*SOURCE_ATTRIBUTES.values())


# ServiceNow priority is computed from impact × urgency; 1..5 with these labels on a stock instance
# (https://www.servicenow.com/docs/bundle/zurich-it-service-management/page/product/incident-management/reference/r_PrioritizationOfIncidents.html).
SERVICENOW_PRIORITY_LABELS: dict[str, str] = {
    "1": "1 - Critical",
    "2": "2 - High",
    "3": "3 - Moderate",
    "4": "4 - Low",
    "5": "5 - Planning",
}
