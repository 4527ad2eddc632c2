"""The one small interface every ticketing connector implements (dispatch / route / notify split).

A connector does four jobs and nothing else:

* ``verify_webhook`` + ``parse_webhook``: check a request's signature over the raw body, then turn the
  body into :class:`~kernel.model.TicketChange` s (or say why it is ignored);
* ``poll``: read changes incrementally from a stored cursor, one :class:`PollPage` at a time; the caller
  stores a page's changes *and* its cursor in one transaction, so the cursor never runs ahead of data;
* ``write_back``: leave a note on the ticket (idempotent: the note carries a marker, written once);
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
from kernel.model import Action, EventAction, Outbound, Outcome, Rendered, TicketChange, TicketNote, TicketRef
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


class NoteDestination:
    """A ticketing system's write-back as a destination: :class:`TicketNote` actions, rendered as the JSON the
    outbox has always stored for notes, sent through the connector's ``write_back`` (several vendor calls:
    no single timeout, so the delivery worker renews the claim first; no rate limit of ours)."""

    timeout = None
    limiter = None

    def __init__(self, name: str, connector: Callable[[], Connector[Any]], label: str | None = None) -> None:
        self.name = name
        self.label = label or name
        self._connector = connector  # built on first use: a source without credentials never writes back

    def __repr__(self) -> str:
        return f"<NoteDestination {self.name}>"

    def render(self, action: Action) -> Rendered:
        if not isinstance(action, TicketNote):
            raise TypeError(f"{self.name} write-back takes ticket notes, not {type(action).__name__}")
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

    def send(self, item: Outbound, *, timeout: float | None = None) -> Outcome:
        note = self.note(item.body)
        if note.ticket.connection != self.name:  # never on another instance's ticket of the same id
            raise PermanentError(
                f"a note for a ticket of connection {note.ticket.connection!r} reached the write-back of {self.name!r}"
            )
        self._connector().write_back(note)
        return Outcome()

    def preview(self, item: Outbound) -> str:
        note = self.note(item.body)
        return f"note on {note.ticket.key}: {note.text}"
