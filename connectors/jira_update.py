"""Jira (Cloud and Data Center, REST v2): carry out a :class:`~kernel.model.TicketUpdate` — what PagerDuty's side
did — on an issue, once.

One send, in an order that makes every retry safe (each step checks before it writes):

1. the marker: a comment carrying ``update.marker`` means the whole update is done (it is written last);
2. the transition, chosen from ``GET …/transitions?expand=transitions.fields`` by the target status's name or
   its status category (``to.statusCategory.key``; never by the transition's own name, which is what
   the ``jira`` client matches), with its required fields (``resolution`` …) filled from
   ``Transition.fields``; skipped when the issue is already there. No direct transition, or a required field
   without a value, is a :class:`~kernel.errors.PermanentError` naming what the workflow offers
   (``shared/notes/pagerduty-two-way.md`` §4.1; PagerDuty's own app fails silently there);
3. the assignment group, into ``TICKETPAGER_JIRA__GROUP_FIELD`` (``components``, or a select-list custom
   field), skipped when already set;
4. on the first update of an incident (it carries the incident number), a remote link to the incident with
   ``globalId = pagerduty:incident:<id>``: Jira updates the link with that global id instead of adding a
   second one (a 403, no *Link issues* permission, is logged and skipped);
5. the comment (public, or internal: JSM's ``sd.public.comment`` property, plus a project-role restriction
   when ``TICKETPAGER_JIRA__INTERNAL_COMMENT_ROLE`` is set), ending with the marker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from jira import JIRA

from connectors.jira_normalize import adf_text
from connectors.settings import JiraSettings
from kernel.errors import PermanentError
from kernel.model import StatusCategory, TicketUpdate, Transition

log = logging.getLogger(__name__)

VENDOR = "jira"
MARKER_LABEL = "ticketpager-marker"  # the same label as the notes (connectors.jira): echo detection knows it
COMMENT_SCAN = 100  # newest comments searched for a marker (a retried update is recent)

# https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issues/#api-rest-api-2-issue-issueidorkey-transitions-get
DOC_TRANSITIONS = (
    "https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issues/"
    "#api-rest-api-2-issue-issueidorkey-transitions-get"
)
# https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issue-remote-links/
DOC_REMOTE_LINKS = "https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issue-remote-links/"
#: The global id of an incident's remote link: one link per incident, updated (not duplicated) on a repost.
GLOBAL_ID = "pagerduty:incident:{id}"
GLOBAL_ID_MAX = 255
#: Our status categories as Jira's ``statusCategory.key``.
JIRA_CATEGORY = {
    StatusCategory.NEW: "new",
    StatusCategory.IN_PROGRESS: "indeterminate",
    StatusCategory.DONE: "done",
}


@dataclass(frozen=True, slots=True)
class Choice:
    """The transition to perform and the fields it is sent with."""

    id: str
    name: str
    to: str
    fields: dict[str, Any]


def comment_text(update: TicketUpdate, prefix: str) -> str:
    """The comment: our prefix (echo detection), the text, the incident link, and the marker last."""
    lines = [f"{prefix} {update.comment or ''}".strip()]
    if update.incident_url and update.incident_url not in (update.comment or ""):
        number = f" #{update.incident_number}" if update.incident_number is not None else ""
        lines.append(f"PagerDuty incident{number}: {update.incident_url}")
    lines.append(f"{MARKER_LABEL}: [{update.marker}]")  # bracketed: a copy into PagerDuty is never mirrored back
    return "\n".join(lines)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def choose_transition(issue: str, transitions: Any, move: Transition) -> Choice | None:
    """The transition towards ``move`` among ``transitions`` (the GET answer with ``transitions.fields``), or
    ``None`` if the issue is already in the target status. Raises :class:`PermanentError` listing what exists
    when no transition goes there directly or one of its required fields has no value."""
    offered = [t for t in transitions if isinstance(t, Mapping)] if isinstance(transitions, list) else []
    target = _describe(move)

    def goes_there(t: Mapping[str, Any]) -> bool:
        to = _map(t.get("to"))
        if move.status:
            return str(to.get("name") or "").casefold() == move.status.casefold()
        category = _map(to.get("statusCategory"))
        return move.category is not None and category.get("key") == JIRA_CATEGORY.get(move.category)

    candidates = [t for t in offered if goes_there(t) and t.get("isAvailable") is not False]
    if not candidates:
        listing = ", ".join(f"{t.get('name')} → {_to_name(t)}" for t in offered) or "none (does the API user "
        if not offered:
            listing += "have the Transition issues permission?)"
        raise PermanentError(
            f"jira: no direct transition from the current status of {issue} to {target}; "
            f"available: {listing}. Add a transition to the workflow or change the rule's transition",
            vendor=VENDOR,
        )
    given = {k.casefold(): v for k, v in move.fields}
    problems: list[str] = []
    for t in candidates:
        fields, missing = _fill(t, given)
        if not missing:
            return Choice(str(t.get("id")), str(t.get("name") or ""), _to_name(t), fields)
        problems.append(f"{t.get('name')} needs {', '.join(missing)}")
    raise PermanentError(
        f"jira: the transition of {issue} to {target} requires fields without a value ({'; '.join(problems)}); "
        "give them in the rule's transition fields (e.g. resolution: Done)",
        vendor=VENDOR,
    )


def _fill(transition: Mapping[str, Any], given: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The fields to send (every given value the transition's screen has, required or not) and the names of
    required fields that have neither a value nor a default."""
    fields = _map(transition.get("fields"))
    out: dict[str, Any] = {}
    missing: list[str] = []
    for field_id, meta in fields.items():
        meta = _map(meta)
        name = str(meta.get("name") or field_id)
        value = given.get(str(field_id).casefold(), given.get(name.casefold()))
        if value is not None:
            out[str(field_id)] = _field_value(meta, value)
        elif meta.get("required") and not meta.get("hasDefaultValue"):
            missing.append(name)
    return out, missing


def _field_value(meta: Mapping[str, Any], value: str) -> Any:
    """A value in the shape its field takes: ``{"name": …}`` for resolution and other named choices,
    ``{"value": …}`` for custom select lists, the text otherwise."""
    allowed = meta.get("allowedValues")
    if isinstance(allowed, list) and allowed:
        first = allowed[0] if isinstance(allowed[0], Mapping) else {}
        return {"value": value} if "value" in first and "name" not in first else {"name": value}
    return value


def _to_name(transition: Mapping[str, Any]) -> str:
    to = transition.get("to")
    return str(to.get("name") or "?") if isinstance(to, Mapping) else "?"


def _describe(move: Transition) -> str:
    if move.status:
        return f"status '{move.status}'"
    return f"status category '{move.category.value if move.category else '?'}'"


def _status(issue: Mapping[str, Any]) -> tuple[str, str]:
    """(status name, status category key) of an issue's JSON."""
    fields = _map(issue.get("fields"))
    status = _map(fields.get("status"))
    category = _map(status.get("statusCategory"))
    return str(status.get("name") or ""), str(category.get("key") or "")


def _already_there(issue: Mapping[str, Any], move: Transition) -> bool:
    name, category = _status(issue)
    if move.status:
        return name.casefold() == move.status.casefold()
    return move.category is not None and category == JIRA_CATEGORY.get(move.category)


class JiraUpdater:
    """Carries out ticket updates with the connector's client. ``call(fn, retry=True)`` runs ``fn`` under the
    connector's retry policy, translating the client's errors through its status table (``retry=False``: one
    attempt, errors translated)."""

    def __init__(self, settings: JiraSettings, call: Callable[..., Any]) -> None:
        self.settings = settings
        self._call = call

    def apply(self, client: JIRA, update: TicketUpdate) -> None:
        issue = update.ticket.id or update.ticket.key
        self._call(lambda: self._once(client, issue, update))

    def _once(self, client: JIRA, issue: str, update: TicketUpdate) -> None:
        """One attempt, every step checked before it writes (a retried attempt redoes nothing)."""
        existing = client.comments(issue, order_by="-created", max_results=COMMENT_SCAN)
        if any(update.marker in adf_text(getattr(c, "body", "")) for c in existing):
            return
        if update.transition is not None or update.group:
            current = client._get_json(f"issue/{quote(issue, safe='')}", params={"fields": self._read_fields()})
            current = _map(current)
            if update.transition is not None and not _already_there(current, update.transition):
                self._transition(client, issue, update.transition)
            if update.group:
                self._set_group(client, issue, current, update.group)
        if update.incident_number is not None and update.incident_id and update.incident_url:
            self._remote_link(client, issue, update)
        self._comment(client, issue, update)

    def _read_fields(self) -> str:
        return ",".join(["status", *([self.settings.group_field] if self.settings.group_field else [])])

    def _transition(self, client: JIRA, issue: str, move: Transition) -> None:
        listed = client.transitions(issue, expand="transitions.fields")
        choice = choose_transition(issue, listed, move)
        if choice is None:
            return
        client.transition_issue(issue, choice.id, fields=choice.fields)
        log.info("jira: %s moved to %s by transition %s", issue, choice.to, choice.name)

    def _set_group(self, client: JIRA, issue: str, current: Mapping[str, Any], group: str) -> None:
        name = self.settings.group_field
        if not name:
            raise PermanentError(
                "jira: the rule sets an assignment group but TICKETPAGER_JIRA__GROUP_FIELD is not configured "
                "(components, or a select-list custom field id such as customfield_10050)",
                vendor=VENDOR,
            )
        fields = _map(current.get("fields"))
        now = fields.get(name)
        if name == "components":
            if isinstance(now, list) and [c.get("name") for c in now if isinstance(c, Mapping)] == [group]:
                return
            value: Any = [{"name": group}]
        else:
            if isinstance(now, Mapping) and now.get("value") == group:
                return
            value = {"value": group}
        url = client._get_url(f"issue/{quote(issue, safe='')}")
        client._session.put(url, data=json.dumps({"fields": {name: value}}))

    def _remote_link(self, client: JIRA, issue: str, update: TicketUpdate) -> None:
        """POST a remote link with our global id: Jira creates it once and updates it afterwards (200)."""
        number = f" #{update.incident_number}" if update.incident_number is not None else ""
        body = {
            "globalId": GLOBAL_ID.format(id=update.incident_id)[:GLOBAL_ID_MAX],
            "application": {"type": "com.pagerduty", "name": "PagerDuty"},
            "relationship": "paged in",
            "object": {"url": update.incident_url, "title": f"PagerDuty incident{number}"},
        }
        url = client._get_url(f"issue/{quote(issue, safe='')}/remotelink")
        try:
            self._call(lambda: client._session.post(url, data=json.dumps(body)), retry=False)  # errors translated
        except PermanentError as exc:
            if exc.status != 403:
                raise
            log.warning("jira: no remote link on %s (the API user lacks Link issues): %s", issue, exc)

    def _comment(self, client: JIRA, issue: str, update: TicketUpdate) -> None:
        text = comment_text(update, self.settings.comment_prefix)
        role = self.settings.internal_comment_role
        if update.public:
            client.add_comment(issue, text)
        else:
            visibility = {"type": "role", "value": role} if role else None
            client.add_comment(issue, text, visibility=visibility, is_internal=True)
