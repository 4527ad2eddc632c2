"""Jira issue JSON → :class:`~kernel.model.Ticket`, changelog → :class:`~kernel.model.FieldChange`, JQL dates.

Pure functions (no I/O), shared by the webhook and the polling paths of :mod:`connectors.jira`, so an
issue reads the same whichever way it reached us.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kernel.fields import RawPayload
from kernel.model import FieldChange, StatusCategory, Ticket

#: the ``ticket.attributes`` this connector fills: the names rules with ``source: jira`` may use
ATTRIBUTES: frozenset[str] = frozenset(
    {
        "project",  # project key, e.g. OPS
        "project_name",
        "issue_type",  # e.g. Bug, Incident
        "components",  # list of component names
        "resolution",  # resolution name or None
        "status_id",
        "priority_id",
        "reporter",  # display name (also in requester)
    }
)

SOURCE = "jira"

_EXPANDED = ("renderedFields", "names", "schema", "transitions", "operations", "editmeta", "versionedRepresentations")
_CHANGES = (
    "an update's changes are read with changed / changed_to / changed_from (e.g. priority: {changed_to: Highest})"
)
#: ``ticket.raw`` is the issue itself (``issue_to_ticket``: a webhook's ``issue``, a search result's issue): the
#: keys Jira's REST API gives an issue without ``expand`` (https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issues/#api-rest-api-2-issue-issueidorkey-get)
RAW_PAYLOAD = RawPayload(
    keys=frozenset({"id", "key", "self", "fields", "expand"}),
    described="the Jira issue",
    wrappers=frozenset({"issue"}),
    not_there={
        # the webhook's envelope around the issue (https://developer.atlassian.com/server/jira/platform/webhooks/)
        "user": "'user' is part of Jira's webhook message around the issue, not of the issue that rules read",
        "issue_event_type_name": "'issue_event_type_name' is part of Jira's webhook message, not of the issue that "
        f"rules read; {_CHANGES}",
        "webhookEvent": "'webhookEvent' is part of Jira's webhook message, not of the issue that rules read",
        "timestamp": "'timestamp' is part of Jira's webhook message, not of the issue: use the field 'updated'",
        "comment": "'comment' is part of Jira's webhook message, not of the issue that rules read",
        "changelog": f"Jira's changelog is not part of the issue that rules read: {_CHANGES}",
        # parts of an issue Jira sends only when asked (?expand=…), which ticketpager does not ask for
        **{
            key: f"Jira sends '{key}' only when asked (expand={key}), and ticketpager does not ask: read fields.<id>"
            for key in _EXPANDED
        },
    },
)

# statusCategory.key values: new / indeterminate / done (and "undefined" for a broken workflow).
# https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-workflow-status-categories/
STATUS_CATEGORIES: dict[str, StatusCategory] = {
    "new": StatusCategory.NEW,
    "indeterminate": StatusCategory.IN_PROGRESS,
    "done": StatusCategory.DONE,
}

# JQL date literal: minute resolution, read in the API user's profile time zone.
# https://support.atlassian.com/jira-software-cloud/docs/jql-fields/#Updated
JQL_DATE_FORMAT = "%Y/%m/%d %H:%M"

# Used when /myself has no usable timeZone: shifting the literal back by the widest UTC offset that
# exists means the query can only re-read (deduped), never skip. https://en.wikipedia.org/wiki/UTC−12:00
WIDEST_OFFSET = timedelta(hours=14)

# Changelog item ``field`` (or ``fieldId``) → the normalized name rules use.
# https://developer.atlassian.com/cloud/jira/platform/webhooks/#example-callback-for-an-issue-related-event
CHANGELOG_FIELDS: dict[str, str] = {
    "summary": "title",
    "description": "description",
    "status": "status",
    "priority": "priority",
    "assignee": "assignee",
    "reporter": "reporter",
    "labels": "labels",
    "component": "components",
    "components": "components",
    "issuetype": "issue_type",
    "resolution": "resolution",
    "project": "project",
    "key": "key",
}

CUSTOM_FIELD_ID = re.compile(r"customfield_\d+")  # a custom field named by id needs no name lookup


def display_name_fields(names: Iterable[str]) -> list[str]:
    """The custom fields among ``names`` that are Jira display names, not ids: only Jira's API can tell
    which field they are (sorted, for a stable message)."""
    return sorted(n for n in names if not CUSTOM_FIELD_ID.fullmatch(n))


def parse_jira_time(value: Any) -> datetime | None:
    """``2026-09-27T10:03:11.123+0200`` (offset without colon) → aware datetime; ``None`` if absent/bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def user_zone(name: str | None) -> ZoneInfo | None:
    """The API user's profile zone from ``/myself`` (``None`` when missing or unknown to tzdata)."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def jql_literal(when: datetime, zone: ZoneInfo | None) -> str:
    """``when`` as a quoted JQL date literal in ``zone``, floored to the minute (so ``>=`` never skips)."""
    if zone is None:
        local = (when.astimezone(UTC) - WIDEST_OFFSET).replace(tzinfo=None)
    else:
        local = when.astimezone(zone).replace(tzinfo=None)
    return '"' + local.replace(second=0, microsecond=0).strftime(JQL_DATE_FORMAT) + '"'


# Parsed JSON objects are always ``dict``: the checks below use ``dict``, not the ``Mapping`` ABC, because
# an ABC isinstance costs several times more and this runs for every field of every webhook.


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _name(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("name", "displayName", "value", "key"):
            if isinstance(value.get(key), str):
                return str(value[key])
        return None
    return value if isinstance(value, str) else None


def _user(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("displayName", "emailAddress", "name", "accountId"):
            if isinstance(value.get(key), str) and value[key]:
                return str(value[key])
    return None


def adf_text(node: Any) -> str:
    """Plain text of an Atlassian Document Format node (REST v3 / some webhooks); strings pass through."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        if node.get("type") == "text" and isinstance(node.get("text"), str):
            return str(node["text"])
        parts = [adf_text(child) for child in node.get("content") or [] if child is not None]
        sep = "\n" if node.get("type") in ("doc", "bulletList", "orderedList") else ""
        return sep.join(p for p in parts if p)
    return ""


def custom_value(value: Any) -> Any:
    """A custom field's value as rules expect it: option → its value, user → name, lists element-wise."""
    if isinstance(value, list):
        return [custom_value(v) for v in value]
    if isinstance(value, dict):
        if "value" in value and "child" in value:
            return [value.get("value"), custom_value(value["child"])]
        named = _name(value)
        if named is not None:
            return named
        return dict(value)
    return value


def status_category(fields: Mapping[str, Any]) -> StatusCategory:
    """From ``status.statusCategory.key`` only; unknown or missing categories count as new (never by name)."""
    status = fields.get("status")
    category = status.get("statusCategory") if isinstance(status, dict) else None
    key = category.get("key") if isinstance(category, dict) else None
    return STATUS_CATEGORIES.get(str(key), StatusCategory.NEW)


def issue_to_ticket(
    issue: dict[str, Any],
    *,
    base_url: str,
    field_names: Mapping[str, str],
    deleted: bool = False,
) -> Ticket:
    """One Jira issue JSON (REST v2 or webhook ``issue``) as a :class:`Ticket`.

    Raises ``ValueError`` with a short reason when the issue lacks what a ticket needs (id, key,
    fields, a parsable ``updated``). ``field_names`` maps custom field ids to display names.
    """
    if not isinstance(issue, dict):  # parsed JSON (webhook body, REST json_result): see the note on _obj
        raise ValueError("issue is not an object")
    issue_id, key, fields = issue.get("id"), issue.get("key"), issue.get("fields")
    if not isinstance(issue_id, str | int) or not str(issue_id):
        raise ValueError("issue has no id")
    if not isinstance(key, str) or not key:
        raise ValueError("issue has no key")
    if not isinstance(fields, dict):
        raise ValueError("issue has no fields")
    updated = parse_jira_time(fields.get("updated"))
    if updated is None:
        raise ValueError("issue has no parsable fields.updated")
    created = parse_jira_time(fields.get("created"))

    project, status, priority = _obj(fields.get("project")), _obj(fields.get("status")), _obj(fields.get("priority"))
    labels, components = _list(fields.get("labels")), _list(fields.get("components"))
    reporter = _user(fields.get("reporter"))

    custom: dict[str, Any] = {}
    for field_id, value in fields.items():
        if not str(field_id).startswith("customfield_"):
            continue
        normalized = custom_value(value)
        custom[field_id] = normalized
        display = field_names.get(field_id)
        if display and display not in custom:
            custom[display] = normalized

    attributes: dict[str, Any] = {
        "project": project.get("key") if isinstance(project.get("key"), str) else None,
        "project_name": project.get("name") if isinstance(project.get("name"), str) else None,
        "issue_type": _name(fields.get("issuetype")),
        "components": [n for n in (_name(c) for c in components) if n],
        "resolution": _name(fields.get("resolution")),
        "status_id": str(status["id"]) if status.get("id") is not None else None,
        "priority_id": str(priority["id"]) if priority.get("id") is not None else None,
        "reporter": reporter,
    }
    base = base_url.rstrip("/") or _base_from_self(issue.get("self"))
    return Ticket(
        source=SOURCE,
        id=str(issue_id),
        key=key,
        title=str(fields.get("summary") or ""),
        status=_name(status) or "",
        status_category=StatusCategory.DELETED if deleted else status_category(fields),
        updated=updated,
        url=f"{base}/browse/{key}" if base else None,
        description=adf_text(fields.get("description")),
        priority=_name(priority),
        assignee=_user(fields.get("assignee")),
        requester=reporter,
        labels=tuple(str(label) for label in labels),
        custom_fields=custom,
        attributes=attributes,
        created=created,
        raw=dict(issue),
    )


def _base_from_self(self_url: Any) -> str:
    """``https://x.atlassian.net/rest/api/2/issue/10042`` → ``https://x.atlassian.net``."""
    if isinstance(self_url, str) and "/rest/" in self_url:
        return self_url.split("/rest/", 1)[0]
    return ""


def changelog_changes(changelog: Any, field_names: Mapping[str, str]) -> tuple[FieldChange, ...]:
    """``changelog.items`` as normalized :class:`FieldChange` s (what this update changed).

    Status changes carry the status names; the category is not in the changelog, so a category change
    comes from the engine's diff against the stored version (:func:`kernel.model.merge_changes`). Custom
    fields are listed by id and by display name. Unknown system fields are dropped.
    """
    if not isinstance(changelog, Mapping):
        return ()
    items = changelog.get("items")
    if not isinstance(items, list):
        return ()
    out: list[FieldChange] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        field_id = str(item.get("fieldId") or item.get("field") or "")
        field = str(item.get("field") or field_id)
        old, new = item.get("fromString"), item.get("toString")
        if field_id.startswith("customfield_"):  # under both names, as Ticket.custom_fields has them
            display = field_names.get(field_id) or field
            out.append(FieldChange(f"custom.{field_id}", old, new))
            if display != field_id:
                out.append(FieldChange(f"custom.{display}", old, new))
            continue
        name = CHANGELOG_FIELDS.get(field_id.lower()) or CHANGELOG_FIELDS.get(field.lower())
        if name is None:
            continue  # e.g. "Rank", "Attachment": nothing rules can name
        if name == "labels":
            out.append(FieldChange(name, (old or "").split(), (new or "").split()))
        else:
            out.append(FieldChange(name, old, new))
    return tuple(out)
