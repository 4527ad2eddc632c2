"""The normalized data every part of ticketpager speaks: tickets, changes, incident links, planned events.

Connectors turn vendor payloads into :class:`Ticket` / :class:`TicketChange`; the rules engine reads them;
the engine turns rule verdicts into :class:`PlannedEvent` rows of the outbox. Everything here is plain,
immutable data that round-trips through JSON (``to_json`` / ``from_json``) so it can be stored durably.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from kernel import jsonutil


class StatusCategory(StrEnum):
    """Where a ticket is in its life, whatever the vendor calls its statuses."""

    NEW = "new"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    DELETED = "deleted"


class Origin(StrEnum):
    """How a change reached us."""

    WEBHOOK = "webhook"
    POLL = "poll"
    RECHECK = "recheck"  # time-rule re-evaluation of a stored ticket, no vendor input


class EventAction(StrEnum):
    """What is done to an incident (an :class:`IncidentAction`); a destination renders it in its own terms."""

    TRIGGER = "trigger"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


class IncidentState(StrEnum):
    """What we last told the incident destination about one (ticket, rule) link."""

    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"

    @property
    def is_open(self) -> bool:
        return self is not IncidentState.RESOLVED


SEVERITIES = ("critical", "error", "warning", "info")  # the severities a rule may give an incident
SUMMARY_MAX = 1024  # the longest incident summary a rule renders (characters; a destination may cut further)


#: the instants a ticket may carry: every one of them can be shown in any time zone (±1 day of the limits of
#: ``datetime``), so no conversion downstream (storage in UTC, a JQL literal in the API user's zone) overflows
EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


def check_instant(value: datetime, name: str) -> None:
    """Refuse (``ValueError``) a timezone-aware ``value`` that cannot be converted to UTC and back safely,
    e.g. ``0001-01-01T00:00:00+01:00`` (a vendor field or signed input, never our clock)."""
    if 1 < value.year < 9999:  # the hot path: an offset is under a day, only the first and last year can fail
        return
    try:
        inside = EARLIEST <= value <= LATEST
    except OverflowError:
        inside = False
    if not inside:
        raise ValueError(f"{name} {value.isoformat()} is out of range")


#: the only schemes a ticket's URL may have: it becomes a link (the console, PagerDuty's ``client_url`` and
#: ``links``), where ``javascript:`` or ``data:`` would run in whoever clicks it
WEB_SCHEMES = ("http", "https")


def web_url(value: object) -> str | None:
    """``value`` if it is an absolute http(s) URL with a host, else ``None``. Ticket URLs come from vendor
    payloads (signed, but built from fields a vendor's user or admin may set: Jira's ``issue.self``), so every
    :class:`Ticket` and :class:`TicketRef` keeps only such a URL, and whatever renders a link checks it again."""
    if not isinstance(value, str):
        return None
    scheme, _, rest = value.partition(":")
    if scheme.lower() not in WEB_SCHEMES or not rest.startswith("//"):
        return None
    try:
        host = urlsplit(value).hostname
    except ValueError:  # e.g. an unbalanced [ in the host
        return None
    return value if host else None


def _dt_to_json(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _dt_from_json(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Ticket:
    """One ticket, normalized across Jira, Zendesk and ServiceNow.

    ``id`` is the vendor's durable id (Jira ``issue.id``, Zendesk ticket id, ServiceNow ``sys_id``);
    ``key`` is what humans see (``OPS-12``, ``#4711``, ``INC0010001``). ``attributes`` carries the
    connector-specific normalized fields rules may name directly (``project``, ``issue_type``,
    ``components``, ``brand``, ``channel``, ``impact``, ``urgency``, ``configuration_item`` …).
    ``custom_fields`` holds custom fields by display name *and* by id. ``raw`` is the vendor payload,
    reachable from rules by a dotted path. Timestamps are timezone-aware.
    """

    source: str
    id: str
    key: str
    title: str
    status: str
    status_category: StatusCategory
    updated: datetime
    url: str | None = None
    description: str = ""
    priority: str | None = None
    assignee: str | None = None
    assignment_group: str | None = None
    requester: str | None = None
    organization: str | None = None
    labels: tuple[str, ...] = ()
    custom_fields: Mapping[str, Any] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    created: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: the named connection (instance of ``source``) the ticket came from; "" means the default connection,
    #: which is named after the system (see docs/architecture.md, "Connections")
    connection: str = ""

    def __post_init__(self) -> None:
        if not self.connection:
            object.__setattr__(self, "connection", self.source)
        if self.url is not None:
            object.__setattr__(self, "url", web_url(self.url))  # only http(s) ever becomes a link
        if self.updated.tzinfo is None:
            raise ValueError("Ticket.updated must be timezone-aware")
        if self.created is not None and self.created.tzinfo is None:
            raise ValueError("Ticket.created must be timezone-aware")
        check_instant(self.updated, "updated")
        if self.created is not None:
            check_instant(self.created, "created")

    @property
    def ref(self) -> TicketRef:
        return TicketRef(self.source, self.id, self.key, self.url, self.connection)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, one key per field (spelled out: this runs once per stored change, on the
        webhook path, and a generic walk over ``fields()`` cost more than the rest of the serialization)."""
        return {
            "source": self.source,
            "id": self.id,
            "key": self.key,
            "title": self.title,
            "status": self.status,
            "status_category": self.status_category.value,
            "updated": _dt_to_json(self.updated),
            "url": self.url,
            "description": self.description,
            "priority": self.priority,
            "assignee": self.assignee,
            "assignment_group": self.assignment_group,
            "requester": self.requester,
            "organization": self.organization,
            "labels": list(self.labels),
            "custom_fields": dict(self.custom_fields),
            "attributes": dict(self.attributes),
            "created": _dt_to_json(self.created),
            "raw": dict(self.raw),
        } | ({"connection": self.connection} if self.connection != self.source else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ticket:
        kwargs = dict(data)
        kwargs["status_category"] = StatusCategory(kwargs["status_category"])
        kwargs["updated"] = _dt_from_json(kwargs["updated"])
        kwargs["created"] = _dt_from_json(kwargs.get("created"))
        kwargs["labels"] = tuple(kwargs.get("labels") or ())
        return cls(**kwargs)

    def version_hash(self) -> str:
        """A digest of everything rules can see except ``raw``: equal hashes mean nothing changed."""
        body = self.to_json()
        body.pop("raw", None)
        text = jsonutil.dumps(body, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class TicketRef:
    """Just enough to address a ticket for write-back and logs: (``source``, ``connection``, ``id``) is its
    identity; ``connection`` defaults to the system's default connection (named after it), as in
    :class:`Ticket`. Write-back goes to the instance ``connection`` names."""

    source: str
    id: str
    key: str
    url: str | None = None
    connection: str = ""

    def __post_init__(self) -> None:
        if not self.connection:
            object.__setattr__(self, "connection", self.source)
        if self.url is not None:
            object.__setattr__(self, "url", web_url(self.url))


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field this update changed (from Jira's changelog, Zendesk's previous values, or a diff)."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class TicketChange:
    """A ticket as it is now, plus where that news came from.

    ``changes`` is ``None`` when the source did not say what changed (polls); the engine then diffs
    against the last processed version. ``delivery_id`` dedupes: the vendor's webhook id, or
    ``poll:<id>:<updated>`` for polls. ``actor`` is who made the change when the vendor says so (used to
    drop ticketpager's own write-backs). ``sent_at`` is set only when the vendor's version has minute
    resolution (a Zendesk trigger body's ``updated_at``): the vendor's signed send time, which orders two
    changes of one ticket whose ``updated`` is equal (see :meth:`sync.engine.Engine._staleness`).
    """

    ticket: Ticket
    origin: Origin
    delivery_id: str
    received_at: datetime
    changes: tuple[FieldChange, ...] | None = None
    actor: str | None = None
    event_type: str | None = None
    sent_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ticket": self.ticket.to_json(),
            "origin": self.origin.value,
            "delivery_id": self.delivery_id,
            "received_at": _dt_to_json(self.received_at),
            "changes": None
            if self.changes is None
            else [{"field": c.field, "old": c.old, "new": c.new} for c in self.changes],
            "actor": self.actor,
            "event_type": self.event_type,
            "sent_at": _dt_to_json(self.sent_at),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TicketChange:
        raw_changes = data.get("changes")
        received = _dt_from_json(data["received_at"])
        assert received is not None
        return cls(
            ticket=Ticket.from_json(data["ticket"]),
            origin=Origin(data["origin"]),
            delivery_id=data["delivery_id"],
            received_at=received,
            changes=None
            if raw_changes is None
            else tuple(FieldChange(c["field"], c.get("old"), c.get("new")) for c in raw_changes),
            actor=data.get("actor"),
            event_type=data.get("event_type"),
            sent_at=_dt_from_json(data.get("sent_at")),
        )

    def with_changes(self, changes: tuple[FieldChange, ...]) -> TicketChange:
        return replace(self, changes=changes)

    @property
    def connection(self) -> str:
        """The named connection this change came through (its ticket's)."""
        return self.ticket.connection

    def in_connection(self, connection: str) -> TicketChange:
        """This change as received through ``connection`` (itself when it already says so)."""
        if self.ticket.connection == connection:
            return self
        return replace(self, ticket=replace(self.ticket, connection=connection))


def diff_tickets(old: Ticket | None, new: Ticket) -> tuple[FieldChange, ...]:
    """What changed between two versions of a ticket, on the fields rules can name (``raw`` excluded)."""
    if old is None:
        return ()
    a, b = old.to_json(), new.to_json()
    out: list[FieldChange] = []
    for name in b:
        if name in ("raw", "updated"):
            continue
        if name in ("custom_fields", "attributes"):
            keys = sorted(set(a.get(name, {})) | set(b.get(name, {})))
            prefix = "custom" if name == "custom_fields" else None
            for k in keys:
                ov, nv = a.get(name, {}).get(k), b.get(name, {}).get(k)
                if ov != nv:
                    out.append(FieldChange(f"{prefix}.{k}" if prefix else k, ov, nv))
            continue
        if a.get(name) != b.get(name):
            out.append(FieldChange(name, a.get(name), b.get(name)))
    return tuple(out)


def merge_changes(reported: tuple[FieldChange, ...] | None, diffed: tuple[FieldChange, ...]) -> tuple[FieldChange, ...]:
    """What an update changed: the vendor's own change list (a Jira changelog knows this very update's
    old values, even when an earlier webhook was lost), plus what the diff against the last processed
    version sees on fields that list does not name — derived fields such as ``status_category``, or a
    custom field the changelog names differently. Checks read the last entry of a field, so the vendor's
    entries go last and win where both speak of the same field."""
    if reported is None:
        return diffed
    named = {c.field for c in reported}
    return tuple(c for c in diffed if c.field not in named) + reported


@dataclass(frozen=True, slots=True)
class LinkState:
    """ticket ↔ rule ↔ incident: what we last sent and under which dedup key.

    ``generation`` grows on every new incident for the same (ticket, rule): a reopened ticket pages
    again under a new ``dedup_key``.
    """

    rule: str
    dedup_key: str
    routing_key: str = field(repr=False)
    state: IncidentState
    generation: int
    #: set when a person resolved the incident in PagerDuty while the ticket still matched: the ticket's
    #: :func:`kernel.lifecycle.content_digest` then. No new incident while the ticket still has that digest.
    hold_version: str | None = None


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """The rendered trigger of a matching rule (what the incident destination will show)."""

    routing_key: str = field(repr=False)
    severity: str
    summary: str
    source: str
    component: str | None = None
    group: str | None = None
    class_: str | None = None
    custom_details: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[Mapping[str, str], ...] = ()
    images: tuple[Mapping[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One incident action the engine decided on: an outbox row before its destination renders it."""

    rule: str
    action: EventAction
    dedup_key: str
    routing_key: str = field(repr=False)
    generation: int
    reason: str
    trigger: TriggerSpec | None = None  # only for TRIGGER


#: column sizes of the state store (sync/schema.py): a change whose identifiers do not fit cannot be stored
ID_LIMITS = {"source": 32, "ticket id": 255, "ticket key": 255}
DELIVERY_ID_LIMIT = 255  # the changes.delivery_id column


def stored_delivery_id(delivery_id: str) -> str:
    """``delivery_id`` as the ``changes`` table stores it: unchanged up to :data:`DELIVERY_ID_LIMIT`
    characters; a longer one keeps its first 190 and replaces the rest by the SHA-256 of the whole, so two
    long ids that share a prefix stay two deliveries (a plain cut made the second a "duplicate")."""
    if len(delivery_id) <= DELIVERY_ID_LIMIT:
        return delivery_id
    digest = hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{delivery_id[:190]}~{digest}"


def unstorable_reason(change: TicketChange) -> str | None:
    """Why ``change`` cannot be stored (an identifier too long or containing NUL), else ``None``.

    PostgreSQL rejects NUL in text and the id columns are bounded; such input is a 400 for a webhook and a
    skipped row for a poll, never a database error that would fail a whole batch.
    """
    t = change.ticket
    for label, value in (("source", t.source), ("ticket id", t.id), ("ticket key", t.key)):
        if not value:
            return f"empty {label}"
        if len(value) > ID_LIMITS[label]:
            return f"{label} longer than {ID_LIMITS[label]} characters"
        if "\x00" in value:
            return f"{label} contains a NUL character"
    if "\x00" in change.delivery_id:
        return "delivery id contains a NUL character"
    return None


def unencodable_reason(change: TicketChange) -> str | None:
    """Why ``change`` cannot be written as stored JSON text (a lone surrogate in any string), else ``None``.

    Costs one serialization: the poller asks it of every change, because vendor clients parse API pages with
    the stdlib (which lets ``"\\ud800"`` through) and one such ticket must not fail its whole page forever.
    Webhook bodies are refused earlier, by :func:`kernel.jsonutil.loads`.
    """
    try:
        jsonutil.dumps(change.to_json())
    except jsonutil.BadJSON as exc:
        return str(exc)
    return None


# -- outbound actions as data, destinations as plug-ins ---------------------------------------------------
# The engine decides *what* to do (an action below); a destination (PagerDuty Events v2, a ticketing system's
# notes, …) renders it once, when it is queued (the outbox stores the rendered body, sent as is), and sends it.


@dataclass(frozen=True, slots=True)
class IncidentAction:
    """Trigger, acknowledge or resolve the incident of ``event`` (outbox kind ``event``)."""

    KIND: ClassVar[str] = "event"
    event: PlannedEvent
    ticket: Ticket | None = None


@dataclass(frozen=True, slots=True)
class TicketNote:
    """Add a note to a ticket about an incident action that was sent (outbox kind ``writeback``).

    ``marker`` is unique per (dedup_key, action, generation); connectors embed it in the note and skip
    the write when a note with that marker already exists, so a retried step writes the note once.
    """

    KIND: ClassVar[str] = "writeback"
    ticket: TicketRef
    action: EventAction
    dedup_key: str
    rule: str
    marker: str
    text: str


@dataclass(frozen=True, slots=True)
class Transition:
    """Move a ticket to a status: by the target status's name (``status``) or by its category (the first
    status of that category the workflow offers); ``fields`` fills what the move requires (Jira
    ``resolution``, ServiceNow ``close_code`` / ``close_notes``). A connector explains clearly when the
    ticket's workflow has no direct way there."""

    status: str | None = None
    category: StatusCategory | None = None
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TicketUpdate:
    """What PagerDuty's side did, written onto the ticket (outbox kind ``ticket_update``): a comment (public,
    or an internal note / work note), optionally a transition and a new assignment group.

    ``marker`` is unique per (incident, webhook event, rule); connectors embed it in the comment and skip a
    write whose marker is already on the ticket (a retried step writes once), and the ticket webhook that
    echoes our own write is recognised by it. ``incident_url`` is linked from the comment (and, on the
    first update, a Jira remote link idempotent by global id)."""

    KIND: ClassVar[str] = "ticket_update"
    ticket: TicketRef
    marker: str
    comment: str | None = None
    public: bool = False
    transition: Transition | None = None
    group: str | None = None
    incident_id: str = ""
    incident_url: str = ""
    incident_number: int | None = None


@dataclass(frozen=True, slots=True)
class IncidentUpdate:
    """A change made to an open incident through PagerDuty's REST API (outbox kind ``incident_update``):
    reassign it to an escalation policy (never to a user, which stops escalation), ask an escalation
    policy's responders to help, or add a note. ``marker`` makes the step idempotent and its echo
    recognisable."""

    KIND: ClassVar[str] = "incident_update"
    incident_id: str
    dedup_key: str
    marker: str
    reassign_to_policy: str | None = None
    responder_policies: tuple[str, ...] = ()
    note: str | None = None

    @property
    def action(self) -> str:
        """What it asks of PagerDuty, as the outbox and the decision log name it."""
        return "reassign" if self.reassign_to_policy else "add_responders"

    def without_moves_to(self, current: str | None) -> IncidentUpdate | None:
        """This update without the moves the incident has made already (``current``: the escalation policy it
        is on; None: not known); None when nothing is left. This keeps a move made in PagerDuty, written onto
        the ticket's group by ``set_group``, from coming back as a reassignment (and a note)."""
        if current is None:
            return self
        reassign = self.reassign_to_policy if self.reassign_to_policy != current else None
        responders = tuple(p for p in self.responder_policies if p != current)
        if reassign is None and not responders:
            return None
        return replace(self, reassign_to_policy=reassign, responder_policies=responders)


#: Every action a destination may be asked to carry out.
Action = IncidentAction | TicketNote | TicketUpdate | IncidentUpdate

NOTE_TEXT = {
    EventAction.TRIGGER: "{label} incident triggered by rule '{rule}'",
    EventAction.ACKNOWLEDGE: "{label} incident acknowledged (rule '{rule}')",
    EventAction.RESOLVE: "{label} incident resolved (rule '{rule}')",
}


def incident_note(
    label: str, ticket: TicketRef, action: EventAction, dedup_key: str, rule: str, row: int
) -> TicketNote:
    """The note left on ``ticket`` once incident action ``action`` (outbox row ``row``) went out to the
    destination called ``label`` (e.g. "PagerDuty")."""
    marker = f"tp:{dedup_key}:{action.value}:{row}"
    text = NOTE_TEXT[action].format(label=label, rule=rule) + f". dedup_key: {dedup_key}. [{marker}]"
    return TicketNote(ticket=ticket, action=action, dedup_key=dedup_key, rule=rule, marker=marker, text=text)


@dataclass(frozen=True, slots=True)
class Rendered:
    """An action as its destination will send it: ``body`` is stored in the outbox and sent as is;
    ``limit_key`` is what the destination's rate limit counts by (PagerDuty: the routing key), a secret:
    stored in the outbox's ``routing_key`` column and redacted from every stored error text."""

    body: str
    limit_key: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Outbound:
    """One outbox row handed to its destination to send."""

    id: int
    destination: str
    kind: str
    action: str
    body: str = field(repr=False)
    limit_key: str = field(repr=False)
    ticket_key: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """A send the destination accepted (a failure is raised as a :mod:`kernel.errors` kind instead)."""

    status: int | None = None
    detail: str = ""


class SendSlot(Protocol):
    """A send a rate limiter counts; :meth:`finished` when the send is over, whatever its outcome."""

    def finished(self) -> None: ...


class SendLimiter(Protocol):
    """A destination's rate limit: how long a send for ``key`` must wait (0 = go, with its slot)."""

    def reserve(self, key: str) -> tuple[float, SendSlot | None]: ...

    def slots(self, key: str, n: int) -> list[datetime]:
        """When each of the next ``n`` sends for ``key`` could go, earliest first (the first: when ``reserve``
        would let one go); a held backlog is rescheduled to these times in one go."""
        ...

    def first_hold(self, event: object) -> bool: ...

    def sent(self, event: object) -> None: ...


class Destination(Protocol):
    """Where actions go. ``render`` is pure (``rules test`` shows its exact body); ``send`` is one attempt
    (the delivery worker owns retries), classifies the answer through the destination's own status table and
    raises ``RetryableError`` / ``PermanentError`` / ``UnknownOutcome``.

    ``timeout``: seconds one send may wait for its answer (a retry may wait longer, see
    :func:`sync.delivery.send_timeout`); ``None``: a send is several calls, its claim is renewed first.
    ``label`` names the destination to people (ticket notes, logs).
    """

    name: str
    label: str

    @property
    def timeout(self) -> float | None: ...

    @property
    def limiter(self) -> SendLimiter | None: ...

    def render(self, action: Action) -> Rendered: ...

    def send(self, item: Outbound, *, timeout: float | None) -> Outcome: ...

    def preview(self, item: Outbound) -> str:
        """The body as a dry run logs it, secrets masked."""
        ...
