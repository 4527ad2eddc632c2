"""Zendesk ticket JSON → :class:`kernel.model.Ticket`, for the three shapes Zendesk hands us.

* the API ticket (incremental export, ``GET /tickets/{id}.json``): integer ids, lower-case values;
* an event subscription's ``detail`` snapshot: ids as strings, status/priority possibly upper-case;
* the trigger template ticketpager publishes (the Zendesk section of README.md): display text for every value.

Malformed input raises :class:`BadTicket` (the webhook answers 400 with its message; a poll skips it).
``status_category`` always comes from Zendesk's status *category* (the ``status`` field holds the
category even when custom statuses are enabled), never from a custom status name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from kernel.fields import RawPayload
from kernel.model import StatusCategory, Ticket, check_instant

#: the ``ticket.attributes`` this connector fills: the names rules with ``source: zendesk`` may use
ATTRIBUTES: frozenset[str] = frozenset(
    {
        "brand",  # brand name when known, else id as text
        "brand_id",
        "group_id",
        "organization_id",
        "organization_tags",  # tags of the requester's organization (VIP rules), list
        "requester_id",
        "requester_email",
        "via_channel",  # web, email, api, …
        "ticket_type",  # problem, incident, question, task
        "custom_status_id",
    }
)

SOURCE = "zendesk"

#: ``ticket.raw``: the ticket as the API sends it (``from_api``,
#: https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#json-format), an event's ``detail``
#: (``from_event_detail``, https://developer.zendesk.com/api-reference/webhooks/event-types/ticket-events/), or
#: the body of the trigger template in README.md (``from_template``): the top-level keys of all three
RAW_PAYLOAD = RawPayload(
    keys=frozenset(
        {
            # the API's ticket
            "allow_attachments", "allow_channelback", "assignee_email", "assignee_id", "attribute_value_ids",
            "brand_id", "collaborator_ids", "collaborators", "comment", "comment_count", "created_at",
            "custom_fields", "custom_status_id", "description", "due_at", "email_cc_ids", "email_ccs",
            "encoded_id", "external_id", "fields", "follower_ids", "followers", "followup_ids", "forum_topic_id",
            "from_messaging_channel", "generated_timestamp", "group_id", "has_incidents", "id", "is_public",
            "macro_id", "macro_ids", "metadata", "organization_id", "priority", "problem_id", "raw_subject",
            "recipient", "requester", "requester_id", "safe_update", "satisfaction_rating",
            "sharing_agreement_ids", "status", "subject", "submitter_id", "tags", "ticket_form_id", "type",
            "updated_at", "updated_stamp", "url", "via", "via_followup_source_id", "via_id", "voice_comment",
            # an event's detail
            "actor_id", "custom_status", "form_id",
            # the trigger template's body
            "assignee", "brand", "current_user_email", "group", "organization", "organization_tags",
            "requester_email", "source", "ticket_id", "ticket_type",
        }
    ),
    described="the Zendesk ticket",
    wrappers=frozenset({"detail"}),
    not_there={
        "event": "'event' is part of Zendesk's event message, not of the ticket that rules read; an update's "
        "changes are read with changed / changed_to / changed_from",
        **{
            key: f"'{key}' is part of Zendesk's event message, not of the ticket that rules read"
            for key in ("account_id", "time", "zendesk_event_version")
        },
    },
)

# https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/ (status, priority values);
# "deleted" only appears in the incremental export:
# https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
STATUS_CATEGORIES: Mapping[str, StatusCategory] = {
    "new": StatusCategory.NEW,
    "open": StatusCategory.IN_PROGRESS,
    "pending": StatusCategory.IN_PROGRESS,
    "hold": StatusCategory.IN_PROGRESS,
    "solved": StatusCategory.DONE,
    "closed": StatusCategory.DONE,
    "deleted": StatusCategory.DELETED,
}
PRIORITIES = ("urgent", "high", "normal", "low")
# Placeholders render an empty priority as "-" in trigger bodies.
_EMPTY_DISPLAY = {"", "-", "none", "null"}


class BadTicket(ValueError):
    """The payload is not a ticket we can normalize (the message says which field and why)."""


@dataclass(frozen=True, slots=True)
class Organization:
    id: int
    name: str | None
    tags: tuple[str, ...]


@dataclass(slots=True)
class Lookups:
    """Names for ids: sideloaded users/groups/brands of the current page plus cached organizations."""

    users: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)
    brands: dict[int, str] = field(default_factory=dict)
    organizations: dict[int, Organization] = field(default_factory=dict)

    @classmethod
    def from_sideloads(cls, page: Mapping[str, Any]) -> Lookups:
        out = cls()
        for user in _dicts(page.get("users")):
            if (uid := as_id(user.get("id"))) is not None:
                out.users[uid] = user
        for group in _dicts(page.get("groups")):
            if (gid := as_id(group.get("id"))) is not None and isinstance(group.get("name"), str):
                out.groups[gid] = group["name"]
        for brand in _dicts(page.get("brands")):
            if (bid := as_id(brand.get("id"))) is not None and isinstance(brand.get("name"), str):
                out.brands[bid] = brand["name"]
        for org in _dicts(page.get("organizations")):
            if (parsed := organization_from_json(org)) is not None:
                out.organizations[parsed.id] = parsed
        return out


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def organization_from_json(data: Mapping[str, Any]) -> Organization | None:
    oid = as_id(data.get("id"))
    if oid is None:
        return None
    name = data.get("name") if isinstance(data.get("name"), str) else None
    return Organization(oid, name, tuple(str(t) for t in data.get("tags") or () if isinstance(t, str | int)))


def as_id(value: Any) -> int | None:
    """Zendesk ids are integers in the API and strings in event payloads; anything else is ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_time(value: Any, name: str) -> datetime:
    """An ISO 8601 timestamp with a zone (Zendesk sends UTC ``…Z``)."""
    if not isinstance(value, str) or not value.strip():
        raise BadTicket(f"{name} is missing")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadTicket(f"{name} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise BadTicket(f"{name} has no time zone")
    try:
        check_instant(parsed, name)
    except ValueError as exc:
        raise BadTicket(str(exc)) from None
    return parsed


def status_category(status: Any) -> tuple[str, StatusCategory]:
    text = status.strip().lower() if isinstance(status, str) else ""
    if text not in STATUS_CATEGORIES:
        raise BadTicket(f"unknown ticket status {str(status)[:40]!r}")
    return text, STATUS_CATEGORIES[text]


def priority_of(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    return None if text in _EMPTY_DISPLAY else text


def tags_of(value: Any) -> tuple[str, ...]:
    """A list (API, events) or the space-separated ``{{ticket.tags}}`` placeholder text."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(str(t) for t in value if isinstance(t, str | int))
    return ()


@dataclass(frozen=True, slots=True)
class Normalizer:
    """Builds tickets; ``base_url`` is the agent's Zendesk (``https://acme.zendesk.com``)."""

    base_url: str
    custom_field_names: Mapping[str, str] = field(default_factory=dict)

    def agent_url(self, ticket_id: int) -> str | None:
        # https://support.zendesk.com/hc/en-us/articles/4408886858138 (agent workspace ticket URLs)
        return f"{self.base_url}/agent/tickets/{ticket_id}" if self.base_url else None

    def from_api(self, data: Mapping[str, Any], lookups: Lookups) -> Ticket:
        """An API ticket (incremental export or show ticket) plus names from ``lookups``."""
        if not isinstance(data, Mapping):
            raise BadTicket("ticket is not a JSON object")
        tid = as_id(data.get("id"))
        if tid is None:
            raise BadTicket("ticket id is missing or not a number")
        status, category = status_category(data.get("status"))
        org_id = as_id(data.get("organization_id"))
        org = lookups.organizations.get(org_id) if org_id is not None else None
        requester_id = as_id(data.get("requester_id"))
        requester = lookups.users.get(requester_id) if requester_id is not None else None
        assignee_id = as_id(data.get("assignee_id"))
        assignee = lookups.users.get(assignee_id) if assignee_id is not None else None
        group_id = as_id(data.get("group_id"))
        brand_id = as_id(data.get("brand_id"))
        via = data.get("via")
        channel = via.get("channel") if isinstance(via, Mapping) else None
        created = data.get("created_at")
        return Ticket(
            source=SOURCE,
            id=str(tid),
            key=f"#{tid}",
            title=str(data.get("subject") or data.get("raw_subject") or ""),
            status=status,
            status_category=category,
            updated=parse_time(data.get("updated_at"), "updated_at"),
            created=parse_time(created, "created_at") if created else None,
            url=self.agent_url(tid),
            description=str(data.get("description") or ""),
            priority=priority_of(data.get("priority")),
            assignee=_person(assignee, assignee_id),
            assignment_group=lookups.groups.get(group_id, str(group_id)) if group_id is not None else None,
            requester=_person(requester, requester_id),
            organization=(org.name if org and org.name else str(org_id)) if org_id is not None else None,
            labels=tags_of(data.get("tags")),
            custom_fields=self._custom_fields(data.get("custom_fields")),
            attributes={
                "brand": lookups.brands.get(brand_id, str(brand_id)) if brand_id is not None else None,
                "brand_id": brand_id,
                "group_id": group_id,
                "organization_id": org_id,
                "organization_tags": list(org.tags) if org else None,
                "requester_id": requester_id,
                "requester_email": requester.get("email") if requester else None,
                "via_channel": str(channel).lower() if channel is not None else None,
                "ticket_type": priority_of(data.get("type")),
                "custom_status_id": as_id(data.get("custom_status_id")),
            },
            raw=dict(data),
        )

    def from_event_detail(self, detail: Mapping[str, Any], lookups: Lookups) -> Ticket:
        """An event subscription's ``detail`` (string ids, maybe upper-case values) as an API ticket."""
        if not isinstance(detail, Mapping):
            raise BadTicket("detail is not a JSON object")
        shaped = dict(detail)
        for key in ("status", "priority", "type"):
            if isinstance(shaped.get(key), str):
                shaped[key] = shaped[key].lower()
        if "custom_status" in shaped and "custom_status_id" not in shaped:
            shaped["custom_status_id"] = shaped["custom_status"]
        ticket = self.from_api(shaped, lookups)
        return _with_raw(ticket, detail)

    def from_template(self, body: Mapping[str, Any]) -> Ticket:
        """The recommended trigger template (display text): used when the ticket cannot be fetched.

        ``updated_at`` (``{{ticket.updated_at_with_timestamp}}``) is required: it is the only version of the
        ticket the (signed) body carries; a receive time would make any replay or late delivery "newest".
        """
        tid = as_id(body.get("ticket_id"))
        if tid is None:
            raise BadTicket("ticket_id is missing or not a number")
        status, category = status_category(body.get("status"))
        updated = parse_time(body.get("updated_at"), "updated_at")
        org_id = as_id(body.get("organization_id"))
        url = body.get("url") if isinstance(body.get("url"), str) else None
        if url and "://" not in url:
            url = "https://" + url  # {{ticket.link}} renders without a scheme
        return Ticket(
            source=SOURCE,
            id=str(tid),
            key=f"#{tid}",
            title=_text(body.get("subject")) or "",
            status=status,
            status_category=category,
            updated=updated,
            url=self.agent_url(tid) or url,
            priority=priority_of(body.get("priority")),
            assignee=_text(body.get("assignee")),
            assignment_group=_text(body.get("group")),
            requester=_text(body.get("requester")),
            organization=_text(body.get("organization")),
            labels=tags_of(body.get("tags")),
            attributes={
                "brand": _text(body.get("brand")),
                "brand_id": as_id(body.get("brand_id")),
                "group_id": as_id(body.get("group_id")),
                "organization_id": org_id,
                "organization_tags": list(tags_of(body["organization_tags"])) if "organization_tags" in body else None,
                "requester_id": as_id(body.get("requester_id")),
                "requester_email": _text(body.get("requester_email")),
                "via_channel": (_text(body.get("via")) or "").lower() or None,
                "ticket_type": priority_of(body.get("ticket_type")),
                "custom_status_id": None,
            },
            raw=dict(body),
        )

    def _custom_fields(self, value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in _dicts(value):
            fid = as_id(item.get("id"))
            if fid is None:
                continue
            out[str(fid)] = item.get("value")
            name = self.custom_field_names.get(str(fid))
            if name:
                out[name] = item.get("value")
        return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return None if text in _EMPTY_DISPLAY else text


def _person(user: Mapping[str, Any] | None, uid: int | None) -> str | None:
    if user:
        for key in ("name", "email"):
            if isinstance(user.get(key), str) and user[key]:
                return str(user[key])
    return str(uid) if uid is not None else None


def _with_raw(ticket: Ticket, raw: Mapping[str, Any]) -> Ticket:
    return replace(ticket, raw=dict(raw))


def apply_organization(ticket: Ticket, org: Organization | None) -> Ticket:
    """Fill organization name and tags from a looked-up organization (webhooks have only the id)."""
    if org is None:
        return ticket
    attributes = dict(ticket.attributes)
    attributes["organization_tags"] = list(org.tags)
    return replace(ticket, organization=org.name or ticket.organization, attributes=attributes)
