"""The one small interface every ticketing connector implements (dispatch / route / notify split).

A connector does four jobs and nothing else:

* ``verify_webhook`` + ``parse_webhook``: check a request's signature over the raw body, then turn the
  body into :class:`~kernel.model.TicketChange` s (or say why it is ignored);
* ``poll``: read changes incrementally from a stored cursor, one :class:`PollPage` at a time; the caller
  stores a page's changes *and* its cursor in one transaction, so the cursor never runs ahead of data;
* ``write_back``: leave a note on the ticket (idempotent: the note carries a marker, written once);
* ``update_ticket``: carry out a :class:`~kernel.model.TicketUpdate` (what PagerDuty's side did: a comment,
  optionally a transition and a new assignment group), idempotent on its marker too;
* ``check``: prove the credentials work (readiness).

Failures are raised as :mod:`kernel.errors` kinds; HTTP statuses are classified through the connector's own
status table. Connectors never retry by themselves beyond what :func:`kernel.retry.call` decides, and build
vendor clients with the client's own retries switched off.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

import requests
import urllib3

from connectors.settings import ConnectorSettings
from kernel import jsonutil
from kernel.clock import Clock, SystemClock
from kernel.errors import PermanentError, WebhookRejected
from kernel.model import (
    Action,
    EventAction,
    Outbound,
    Outcome,
    Rendered,
    StatusCategory,
    TicketChange,
    TicketNote,
    TicketRef,
    TicketUpdate,
    Transition,
)
from kernel.retry import RetryPolicy

Headers = Mapping[str, str]  # lower-cased header names


def webhook_json(body: bytes) -> Any:
    """A webhook body parsed as JSON, or :class:`WebhookRejected` 400 with the reason (a lone surrogate or
    nesting past the limit is named; anything else is "not valid JSON")."""
    try:
        return jsonutil.loads(body)
    except jsonutil.BadJSON as exc:
        raise WebhookRejected(400, f"body is not valid JSON: {exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected(400, "body is not valid JSON") from None


def webhook_json_object(body: bytes) -> dict[str, Any]:
    """A webhook body that must be a JSON object, or :class:`WebhookRejected` 400."""
    payload = webhook_json(body)
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "body is not a JSON object")
    return payload


def timed_out_after_sending(exc: requests.RequestException) -> bool:
    """A read timeout (the request went out; the answer did not come), as requests raises it while waiting
    for the headers (``ReadTimeout``) or while reading the body (a ``ConnectionError`` around urllib3's): the
    vendor may have acted on the request, so the outcome is unknown."""
    if isinstance(exc, requests.ReadTimeout):
        return True
    return isinstance(exc, requests.ConnectionError) and isinstance(
        exc.args[0] if exc.args else None, urllib3.exceptions.ReadTimeoutError
    )


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What one webhook request carried: changes to store, or why it was ignored (answered 202 anyway)."""

    changes: list[TicketChange] = field(default_factory=list)
    ignored_reason: str | None = None  # a short, bounded label (used as a metric label)


@dataclass(frozen=True, slots=True)
class PollPage:
    """One page of a poll: store ``changes`` and then ``cursor`` (JSON-able) in the same transaction."""

    changes: list[TicketChange]
    cursor: Mapping[str, Any]
    skipped: int = 0  # rows seen but dropped (duplicates of the overlap window, filtered out, echoes, malformed)
    malformed: int = 0  # of those, rows that are not a ticket we can read (each logged with its reason)


#: A note for the ticket about what ticketpager did at the incident destination (the kernel's action).
WriteBack = TicketNote


SettingsT = TypeVar("SettingsT", bound=ConnectorSettings)


class Connector(ABC, Generic[SettingsT]):
    """Base class of the Jira, Zendesk and ServiceNow connectors (``Connector[JiraSettings]`` …): the
    common attributes are set here, a connector's own state in :meth:`_setup`."""

    name: ClassVar[str]

    def __init__(
        self,
        settings: SettingsT,
        *,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        insecure: bool = False,
        rule_custom_fields: Callable[[], Collection[str]] | None = None,
        connection: str | None = None,
    ) -> None:
        self.settings = settings
        # the named connection this instance serves (docs/architecture.md, "Connections"): its cursor, lease
        # and poll errors are keyed by it, and the tickets it reads carry it; the default one is the system's name
        self.connection: str = connection or self.name
        self.clock = clock or SystemClock()
        self.session = session or requests.Session()
        self.retry = retry or RetryPolicy()
        self.insecure = insecure  # accept unsigned webhooks when no secret is configured
        # the custom.<name> fields the current rules read for this source (the service passes the rule
        # store's; a connector that cannot always name custom fields refuses a webhook it would get wrong)
        self.rule_custom_fields: Callable[[], Collection[str]] = rule_custom_fields or frozenset
        self._setup()

    def _setup(self) -> None:
        """The connector's own state (clients built lazily, caches, locks); ``self.settings`` is set."""

    def __repr__(self) -> str:  # never show settings (secrets) in logs
        if self.connection != self.name:
            return f"<{type(self).__name__} {self.connection}>"
        return f"<{type(self).__name__}>"

    # -- webhooks ---------------------------------------------------------------------------------
    @abstractmethod
    def verify_webhook(self, headers: Headers, body: bytes) -> None:
        """Raise :class:`~kernel.errors.WebhookRejected` (401) unless the request is authentic and fresh."""

    @abstractmethod
    def parse_webhook(self, headers: Headers, body: bytes) -> WebhookResult:
        """Turn a verified body into changes; raise ``WebhookRejected(400, reason)`` for malformed input."""

    # -- polling ----------------------------------------------------------------------------------
    @abstractmethod
    def start_cursor(self, since: datetime) -> Mapping[str, Any]:
        """A cursor that polls everything updated at or after ``since`` (first run, backtests)."""

    @abstractmethod
    def poll(self, cursor: Mapping[str, Any] | None) -> Iterator[PollPage]:
        """Changes since ``cursor`` (``None``: the connector's default look-back), page by page."""

    # -- write-back and health --------------------------------------------------------------------
    @abstractmethod
    def write_back(self, note: WriteBack) -> None:
        """Leave ``note`` on the ticket once (idempotent on ``note.marker``)."""

    def update_ticket(self, update: TicketUpdate) -> None:
        """Carry out ``update`` once (idempotent on ``update.marker``). Systems without ticket updates refuse."""
        raise PermanentError(f"{self.name} does not support ticket updates from PagerDuty", vendor=self.name)

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`~kernel.errors.PermanentError` with a clear message if credentials/config are wrong."""

    @property
    def parse_may_block(self) -> bool:
        """True when ``parse_webhook`` may call the vendor API: the app then runs it off the event loop."""
        return False

    @property
    def can_poll(self) -> bool:
        """Whether credentials for the vendor API are configured (polling, write-back, canonical fetches)."""
        return False


def ticket_update_to_json(update: TicketUpdate) -> dict[str, Any]:
    """A :class:`TicketUpdate` as the outbox stores it (plain JSON; :func:`ticket_update_from_json` reads it)."""
    t, move = update.ticket, update.transition
    return {
        "ticket": {"source": t.source, "id": t.id, "key": t.key, "url": t.url}
        | ({"connection": t.connection} if t.connection != t.source else {}),
        "marker": update.marker,
        "comment": update.comment,
        "public": update.public,
        "transition": None
        if move is None
        else {
            "status": move.status,
            "category": move.category.value if move.category else None,
            "fields": [list(pair) for pair in move.fields],
        },
        "group": update.group,
        "incident_id": update.incident_id,
        "incident_url": update.incident_url,
        "incident_number": update.incident_number,
    }


def ticket_update_from_json(data: Mapping[str, Any]) -> TicketUpdate:
    move = data.get("transition")
    return TicketUpdate(
        ticket=TicketRef(**data["ticket"]),
        marker=data["marker"],
        comment=data.get("comment"),
        public=bool(data.get("public")),
        transition=None
        if not move
        else Transition(
            status=move.get("status"),
            category=StatusCategory(move["category"]) if move.get("category") else None,
            fields=tuple((str(k), str(v)) for k, v in move.get("fields") or ()),
        ),
        group=data.get("group"),
        incident_id=data.get("incident_id") or "",
        incident_url=data.get("incident_url") or "",
        incident_number=data.get("incident_number"),
    )


class NoteDestination:
    """A ticketing system as a destination (named after the source): :class:`TicketNote` actions (outbox kind
    ``writeback``), rendered as the JSON the outbox has always stored for notes and sent through the
    connector's ``write_back``; and :class:`TicketUpdate` actions (kind ``ticket_update``), sent through its
    ``update_ticket``. Several vendor calls per send: no single timeout, so the delivery worker renews the
    claim first; no rate limit of ours."""

    timeout = None
    limiter = None

    def __init__(self, name: str, connector: Callable[[], Connector[Any]], label: str | None = None) -> None:
        self.name = name
        self.label = label or name
        self._connector = connector  # built on first use: a source without credentials never writes back

    def __repr__(self) -> str:
        return f"<NoteDestination {self.name}>"

    def render(self, action: Action) -> Rendered:
        if isinstance(action, TicketUpdate):
            return Rendered(jsonutil.dumps(ticket_update_to_json(action)))
        if not isinstance(action, TicketNote):
            raise TypeError(f"{self.name} takes ticket notes and ticket updates, not {type(action).__name__}")
        t = action.ticket
        body = {
            # the connection only when not the default one: a default connection's body is as before
            "ticket": {"source": t.source, "id": t.id, "key": t.key, "url": t.url}
            | ({"connection": t.connection} if t.connection != t.source else {}),
            "action": action.action.value,
            "dedup_key": action.dedup_key,
            "rule": action.rule,
            "marker": action.marker,
            "text": action.text,
        }
        return Rendered(jsonutil.dumps(body))

    @staticmethod
    def note(body: str) -> TicketNote:
        data = jsonutil.loads(body)
        return TicketNote(
            ticket=TicketRef(**data["ticket"]),
            action=EventAction(data["action"]),
            dedup_key=data["dedup_key"],
            rule=data["rule"],
            marker=data["marker"],
            text=data["text"],
        )

    @staticmethod
    def update(body: str) -> TicketUpdate:
        return ticket_update_from_json(jsonutil.loads(body))

    def send(self, item: Outbound, *, timeout: float | None = None) -> Outcome:
        if item.kind == TicketUpdate.KIND:
            update = self.update(item.body)
            self._same_connection(update.ticket)
            self._connector().update_ticket(update)
        else:
            note = self.note(item.body)
            self._same_connection(note.ticket)
            self._connector().write_back(note)
        return Outcome()

    def _same_connection(self, ticket: TicketRef) -> None:
        """Never write on another instance's ticket of the same id (issue 17: the outbox row names the
        connection; a row reaching the wrong connection's destination is a bug, not a retry)."""
        if ticket.connection != self.name:
            raise PermanentError(
                f"a write for a ticket of connection {ticket.connection!r} reached the write-back of {self.name!r}"
            )

    def preview(self, item: Outbound) -> str:
        if item.kind == TicketUpdate.KIND:
            update = self.update(item.body)
            parts = (
                [f"comment ({'public' if update.public else 'internal'}): {update.comment}"] if update.comment else []
            )
            if update.transition is not None:
                move = update.transition
                parts.append(f"transition to {move.status or (move.category.value if move.category else '?')}")
            if update.group:
                parts.append(f"group {update.group}")
            return f"update of {update.ticket.key}: {'; '.join(parts) or 'nothing'}"
        note = self.note(item.body)
        return f"note on {note.ticket.key}: {note.text}"


#: The same class under the name of what it now carries (notes and updates of a ticketing system).
TicketDestination = NoteDestination
