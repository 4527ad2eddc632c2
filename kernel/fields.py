"""The field names rules may use, per source: the contract between connectors and the rules engine.

A rule's ``when`` key resolves, in order, to: a :data:`TICKET_FIELDS` attribute of the normalized
ticket; ``custom.<name>`` (a custom field by display name or id); a connector attribute listed in
:data:`SOURCE_ATTRIBUTES` (``ticket.attributes[name]``); or, when it contains a dot, a path into the raw
vendor payload (``fields.customfield_10010.value``), whose first key must be one the source's payload has
(:data:`RAW_PAYLOADS`). Any other bare name is a rule-file error, so a typo can never silently stop a rule
from matching. Connectors must fill exactly these attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class RawPayload:
    """What a system's ``ticket.raw`` holds at its top level, so a rule's dotted path into it (``fields.x.value``)
    is checked at load: a path whose first key the payload never has would silently never match.

    ``keys``: the top-level keys its connector can put there (a key that itself holds dots, such as ServiceNow's
    flat ``assignment_group.name``, is accepted whole or by its first part). ``custom_prefixes``: the names of an
    instance's own fields (ServiceNow's ``u_`` columns), accepted too. ``not_there``: keys an admin may expect
    that are not in the payload (a webhook's envelope), with what to write instead. ``described``: what the
    payload is, for messages (``the Jira issue``). ``wrappers``: keys of an envelope around the payload
    (``issue``, ``record``): ``issue.fields.x`` is ``fields.x``."""

    keys: frozenset[str]
    described: str
    custom_prefixes: tuple[str, ...] = ()
    wrappers: frozenset[str] = frozenset()
    not_there: Mapping[str, str] = field(default_factory=dict)

    def has(self, parts: tuple[str, ...]) -> bool:
        """Whether a dotted path (split at its dots) starts with a key of the payload."""
        if parts[0].startswith(self.custom_prefixes) and self.custom_prefixes:
            return True
        return any(".".join(parts[:end]) in self.keys for end in range(1, len(parts) + 1))


RAW_PAYLOADS: dict[str, RawPayload] = {}
"""source name -> what its ``ticket.raw`` holds, for the systems that declare it (a plug-in that does not
declares nothing: any dotted path is accepted for it)."""


def declare_source(name: str, attributes: frozenset[str], raw: RawPayload | None = None) -> None:
    """Record that source ``name`` exists, which ``ticket.attributes`` its connector fills and, if known, what
    its raw payload holds."""
    SOURCE_ATTRIBUTES[name] = frozenset(attributes)
    if raw is not None:
        RAW_PAYLOADS[name] = raw
    else:
        RAW_PAYLOADS.pop(name, None)


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
