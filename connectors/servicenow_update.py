"""ServiceNow: carry out a :class:`~kernel.model.TicketUpdate` — what PagerDuty's side did — on a record, once, with
one Table API ``PATCH``.

The PATCH is sent as built here (``{"work_notes" or "comments": …, "state": …, "close_code": …,
"close_notes": …, "assignment_group": <sys_id>}``) through the connector's Table API on its session, not
through ``GlideRecord.update``, which silently drops a field the record read did not return
(``shared/notes/pagerduty-two-way.md`` §4.3). ServiceNow has no optimistic locking; each attempt re-reads:

1. the journal (``sys_journal_field``, work notes and comments): an entry carrying ``update.marker`` means
   the update is done (note, state and group go in the same PATCH);
2. the record's ``state`` and ``assignment_group``: what is already so is not sent again.

States: ``Transition.status`` is a state value (``6``) or a label (``Resolved``); a category maps to the
first value of ``TICKETPAGER_SERVICENOW__STATE_MAP`` in that category, else to the stock values (done →
``6`` Resolved: closing, ``7``, needs the ``itil_admin`` role). Resolving and closing require ``close_code``
and ``close_notes`` (from ``Transition.fields``; missing ones are a clear :class:`PermanentError`).
Assignment groups are looked up by name in ``sys_user_group`` (cached for :data:`GROUP_CACHE_SECONDS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import requests

from connectors.servicenow_normalize import DEFAULT_STATE_MAP, DEFAULT_STATE_NAMES
from connectors.settings import ServiceNowSettings
from kernel.clock import Clock
from kernel.errors import PermanentError, SkippableError
from kernel.model import StatusCategory, TicketUpdate, Transition

VENDOR = "servicenow"
#: States whose move requires close_code and close_notes (ServiceNowDocs resolve-and-close-an-incident.md)
CLOSING_STATES = ("6", "7")
CLOSE_FIELDS = ("close_code", "close_notes")
#: The stock state a category moves to (resolve rather than close: closing needs itil_admin)
CATEGORY_STATE = {StatusCategory.NEW: "1", StatusCategory.IN_PROGRESS: "2", StatusCategory.DONE: "6"}
GROUP_CACHE_SECONDS = 600.0
JOURNAL_ELEMENTS = ("work_notes", "comments")


def target_state(move: Transition, state_map: Mapping[str, str]) -> str:
    """The state value ``move`` asks for (a value, a stock label, or the first value of a category)."""
    if move.status:
        given = move.status.strip()
        if given.isdigit():
            return given
        by_label = {label.casefold(): value for value, label in DEFAULT_STATE_NAMES.items()}
        if given.casefold() in by_label:
            return by_label[given.casefold()]
        raise PermanentError(
            f"servicenow: unknown state '{move.status}' (give a state value, or one of "
            f"{', '.join(DEFAULT_STATE_NAMES.values())})",
            vendor=VENDOR,
        )
    if move.category is None:
        raise PermanentError("servicenow: a transition needs a status or a category", vendor=VENDOR)
    for value, category in state_map.items():
        if category == move.category.value:
            return value
    return CATEGORY_STATE.get(move.category) or next(
        value for value, category in DEFAULT_STATE_MAP.items() if category is move.category
    )


def note_text(update: TicketUpdate, prefix: str) -> str:
    """Our prefix first (echo detection), the text, the incident link, and the marker last (idempotency)."""
    text = (update.comment or "").strip()
    if prefix and not text.startswith(prefix):
        text = f"{prefix} {text}".strip()
    if update.incident_url and update.incident_url not in text:
        number = f" #{update.incident_number}" if update.incident_number is not None else ""
        text += f"\nPagerDuty incident{number}: {update.incident_url}"
    return f"{text}\n[{update.marker}]"  # bracketed: a copy into PagerDuty is never mirrored back


class ServiceNowUpdater:
    """Ticket updates through the connector's Table API. ``send(request)`` sends one request on the connector's
    session and classifies the answer (raising per its status table); ``call(fn)`` runs ``fn`` under the
    connector's retry policy."""

    def __init__(
        self,
        settings: ServiceNowSettings,
        instance: Callable[[], str],
        send: Callable[[requests.Request], requests.Response],
        call: Callable[[Callable[[], Any]], Any],
        clock: Clock,
    ) -> None:
        self.settings = settings
        self._instance = instance
        self._send = send
        self._call = call
        self._clock = clock
        self._groups: dict[str, tuple[float, str]] = {}

    def apply(self, table: str, sys_id: str, key: str, update: TicketUpdate) -> None:
        state = target_state(update.transition, self.settings.state_map) if update.transition else None
        given = dict(update.transition.fields) if update.transition else {}
        if state in CLOSING_STATES:
            missing = [name for name in CLOSE_FIELDS if not given.get(name)]
            if missing:
                raise PermanentError(
                    f"servicenow: moving {key} to state {state} requires {' and '.join(missing)}; give them in "
                    "the rule's transition fields (e.g. close_code: Solution provided)",
                    vendor=VENDOR,
                )
        self._call(lambda: self._once(table, sys_id, key, update, state, given))

    def _once(
        self, table: str, sys_id: str, key: str, update: TicketUpdate, state: str | None, given: Mapping[str, str]
    ) -> None:
        if self._has_entry(sys_id, update.marker):
            return
        current = self._record(table, sys_id, key)
        body: dict[str, str] = {"comments" if update.public else "work_notes": note_text(update, self._prefix())}
        if state is not None and current.get("state") != state:
            body.update({name: str(value) for name, value in given.items()})
            body["state"] = state
        if update.group:
            group = self.group_id(update.group)
            if _value(current.get("assignment_group")) != group:
                body["assignment_group"] = group
        url = f"{self._base(table)}/{quote(sys_id, safe='')}"
        self._send(requests.Request("PATCH", url, json=body, params={"sysparm_display_value": "false"}))

    def _prefix(self) -> str:
        return self.settings.work_note_prefix

    def _base(self, table: str) -> str:
        return f"{self._instance().rstrip('/')}/api/now/table/{quote(table, safe='')}"

    def _rows(self, table: str, query: str, fields: str) -> list[Mapping[str, Any]]:
        params = {
            "sysparm_query": query,
            "sysparm_fields": fields,
            "sysparm_limit": "1",
            "sysparm_display_value": "false",
        }
        try:
            response = self._send(requests.Request("GET", self._base(table), params=params))
        except SkippableError as exc:
            if exc.status == 404:  # API v1: an empty list is a 404
                return []
            raise
        try:
            rows = response.json()["result"]
        except (ValueError, KeyError, TypeError):
            raise PermanentError(f"servicenow answered a non-Table-API body for {table}", vendor=VENDOR) from None
        return [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []

    def _has_entry(self, sys_id: str, marker: str) -> bool:
        """Whether a work note or comment carrying ``marker`` exists (journal entries live in sys_journal_field)."""
        elements = "^OR".join(f"element={e}" for e in JOURNAL_ELEMENTS)
        query = f"element_id={sys_id}^{elements}^valueLIKE{marker.replace('^', '^^')}"
        return bool(self._rows("sys_journal_field", query, "sys_id"))

    def _record(self, table: str, sys_id: str, key: str) -> Mapping[str, Any]:
        params = {"sysparm_fields": "sys_id,state,assignment_group", "sysparm_display_value": "false"}
        try:
            response = self._send(
                requests.Request("GET", f"{self._base(table)}/{quote(sys_id, safe='')}", params=params)
            )
        except SkippableError as exc:
            raise SkippableError(
                f"servicenow record {key} no longer exists", status=exc.status, vendor=VENDOR
            ) from None
        try:
            record = response.json()["result"]
        except (ValueError, KeyError, TypeError):
            record = None
        if not isinstance(record, Mapping):
            raise PermanentError(f"servicenow answered a non-Table-API body for {key}", vendor=VENDOR)
        return record

    def group_id(self, name: str) -> str:
        """The sys_id of the assignment group called ``name`` (``sys_user_group``), cached."""
        now = self._clock.monotonic()
        cached = self._groups.get(name)
        if cached is not None and now - cached[0] < GROUP_CACHE_SECONDS:
            return cached[1]
        rows = self._rows("sys_user_group", f"name={name.replace('^', '^^')}", "sys_id,name")
        sys_id = _value(rows[0].get("sys_id")) if rows else None
        if not sys_id:
            raise PermanentError(
                f"servicenow has no assignment group named '{name}' (sys_user_group), or the integration user "
                "cannot read it",
                vendor=VENDOR,
            )
        self._groups[name] = (now, sys_id)
        return sys_id


def _value(value: Any) -> str | None:
    """A raw reference value: the sys_id string (or ``{"value": …}`` when links are included)."""
    if isinstance(value, Mapping):
        value = value.get("value")
    return str(value) if value not in (None, "") else None
