"""ServiceNow record → :class:`~kernel.model.Ticket`: values, labels, state categories, UTC dates.

Records are read in raw mode (``sysparm_display_value=false``): every value is the stored value, and
dates are ``YYYY-MM-DD HH:MM:SS`` in UTC without an offset. The names humans use for reference fields
(assignment group, assigned to, caller, configuration item, company) come from dot-walked fields
(``assignment_group.name`` …) requested in the same call, so one request gives raw values and names.
The webhook body sent by ``deploy/servicenow/ticketpager_business_rule.js`` carries the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kernel.errors import ConfigError
from kernel.fields import SERVICENOW_PRIORITY_LABELS, RawPayload
from kernel.model import StatusCategory, Ticket

#: the ``ticket.attributes`` this connector fills: the names rules with ``source: servicenow`` may use
ATTRIBUTES: frozenset[str] = frozenset(
    {
        "number",  # INC0010001 (also the key)
        "impact",  # 1..3 as int
        "urgency",  # 1..3 as int
        "priority_number",  # 1..5 as int (priority holds the label, e.g. "1 - Critical")
        "state",  # raw state value as text, e.g. "2"
        "category",
        "subcategory",
        "configuration_item",  # display name of cmdb_ci
        "caller",  # display name of caller_id
        "company",
        "table",
    }
)

SOURCE = "servicenow"

# Raw date/time format of the Table API with sysparm_display_value=false (always UTC, no offset):
# https://www.servicenow.com/docs/bundle/zurich-api-reference/page/integrate/inbound-rest/concept/c_TableAPI.html
SN_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Incident state values (ServiceNowDocs, c_IncidentManagementStateModel.md); instances customise them,
# hence ``settings.state_map`` overrides the category and this table only names the defaults.
DEFAULT_STATE_NAMES: dict[str, str] = {
    "1": "New",
    "2": "In Progress",
    "3": "On Hold",
    "6": "Resolved",
    "7": "Closed",
    "8": "Canceled",
}
DEFAULT_STATE_MAP: dict[str, StatusCategory] = {
    "1": StatusCategory.NEW,
    "2": StatusCategory.IN_PROGRESS,
    "3": StatusCategory.IN_PROGRESS,
    "6": StatusCategory.DONE,
    "7": StatusCategory.DONE,
    "8": StatusCategory.DONE,
}
DEFAULT_PRIORITY_LABELS = SERVICENOW_PRIORITY_LABELS  # a stock instance's labels (kernel.fields)

# Reference fields whose *name* rules need: requested as "<field>.name" next to the raw sys_id.
REFERENCE_NAMES: dict[str, str] = {
    "assignment_group": "assignment_group.name",
    "assigned_to": "assigned_to.name",
    "caller_id": "caller_id.name",
    "cmdb_ci": "cmdb_ci.name",
    "company": "company.name",
}
#: Fields without which polling cannot work: a table lacking one is a configuration error.
REQUIRED_FIELDS: tuple[str, ...] = ("sys_id", "sys_updated_on", "number", "state")
#: Everything else we read; a table may lack some (e.g. ``caller_id`` on ``sn_customerservice_case``).
OPTIONAL_FIELDS: tuple[str, ...] = (
    "short_description",
    "description",
    "priority",
    "impact",
    "urgency",
    "category",
    "subcategory",
    "active",
    "opened_at",
    "sys_created_on",
    "sys_updated_by",
    "sys_mod_count",
    *REFERENCE_NAMES,
    *REFERENCE_NAMES.values(),
)
ALL_FIELDS: tuple[str, ...] = REQUIRED_FIELDS + OPTIONAL_FIELDS
#: ``ticket.raw`` is the record: the fields polling requests (``sysparm_fields``) and the business rule in
#: deploy/servicenow sends, the names of reference fields as flat keys (``assignment_group.name``); an instance's
#: own ``u_`` fields (and scoped apps' ``x_``) when the business rule is extended to send them
RAW_PAYLOAD = RawPayload(
    keys=frozenset(ALL_FIELDS),
    described="the ServiceNow record",
    custom_prefixes=("u_", "x_"),
    wrappers=frozenset({"record"}),
    not_there={
        key: f"'{key}' is part of the business rule's webhook message, not of the record that rules read"
        for key in ("event", "table", "delivery_id", "sent_at", "instance", "last_work_note")
    },
)


def build_state_map(overrides: Mapping[str, str]) -> dict[str, StatusCategory]:
    """The default state → category map with the admin's overrides; a bad category is a ConfigError."""
    out = dict(DEFAULT_STATE_MAP)
    for value, category in overrides.items():
        try:
            out[str(value)] = StatusCategory(category)
        except ValueError:
            allowed = ", ".join(c.value for c in StatusCategory)
            raise ConfigError(
                f"servicenow.state_map[{value!r}] = {category!r} is not a status category ({allowed})"
            ) from None
    return out


def parse_sn_datetime(value: Any) -> datetime | None:
    """A raw ServiceNow date/time (UTC, no offset) as an aware datetime; ``None`` when empty."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a date string, got {type(value).__name__}")
    return datetime.strptime(value, SN_DATETIME_FORMAT).replace(tzinfo=UTC)


def format_sn_datetime(value: datetime) -> str:
    """An aware datetime as the UTC literal ServiceNow reads in encoded queries."""
    return value.astimezone(UTC).strftime(SN_DATETIME_FORMAT)


def _text(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if isinstance(value, Mapping):  # display_value=all / reference links: take the raw value
        value = value.get("value")
    if value is None:
        return None
    text = str(value)
    return text if text != "" else None


def _int(record: Mapping[str, Any], name: str) -> int | None:
    text = _text(record, name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _name(record: Mapping[str, Any], field: str) -> str | None:
    """The display name of a reference field (dot-walked ``.name``), else its raw sys_id, else None."""
    return _text(record, REFERENCE_NAMES[field]) or _text(record, field)


class Normalizer:
    """Turns raw records of one table into Tickets, with the admin's state map and priority labels."""

    def __init__(
        self,
        *,
        instance_url: str,
        table: str,
        state_map: Mapping[str, str],
        priority_labels: Mapping[str, str],
    ) -> None:
        self.instance_url = instance_url.rstrip("/")
        self.table = table
        self.state_map = build_state_map(state_map)
        self.priority_labels = {**DEFAULT_PRIORITY_LABELS, **{str(k): v for k, v in priority_labels.items()}}

    def record_url(self, sys_id: str) -> str | None:
        if not self.instance_url:
            return None
        return f"{self.instance_url}/nav_to.do?uri={self.table}.do?sys_id={sys_id}"

    def category(self, record: Mapping[str, Any]) -> StatusCategory:
        """From the state value (never its name); unknown states fall back to the ``active`` flag."""
        state = _text(record, "state")
        if state is not None and state in self.state_map:
            return self.state_map[state]
        if _text(record, "active") == "false":
            return StatusCategory.DONE
        return StatusCategory.IN_PROGRESS

    def ticket(self, record: Mapping[str, Any]) -> Ticket:
        """One raw record as a Ticket. Raises ``ValueError`` when sys_id / sys_updated_on are unusable."""
        sys_id = _text(record, "sys_id")
        if not sys_id:
            raise ValueError("record has no sys_id")
        updated = parse_sn_datetime(_text(record, "sys_updated_on"))
        if updated is None:
            raise ValueError(f"record {sys_id} has no sys_updated_on")
        created = parse_sn_datetime(_text(record, "opened_at") or _text(record, "sys_created_on"))
        number = _text(record, "number") or sys_id
        state = _text(record, "state")
        priority_number = _int(record, "priority")
        priority = None
        if priority_number is not None:
            priority = self.priority_labels.get(str(priority_number), str(priority_number))
        group = _name(record, "assignment_group")
        caller = _name(record, "caller_id")
        attributes: dict[str, Any] = {
            "number": number,
            "impact": _int(record, "impact"),
            "urgency": _int(record, "urgency"),
            "priority_number": priority_number,
            "state": state,
            "category": _text(record, "category"),
            "subcategory": _text(record, "subcategory"),
            "configuration_item": _name(record, "cmdb_ci"),
            "caller": caller,
            "company": _name(record, "company"),
            "table": self.table,
        }
        return Ticket(
            source=SOURCE,
            id=sys_id,
            key=number,
            title=_text(record, "short_description") or "",
            status=DEFAULT_STATE_NAMES.get(state or "", state or ""),
            status_category=self.category(record),
            updated=updated,
            url=self.record_url(sys_id),
            description=_text(record, "description") or "",
            priority=priority,
            assignee=_name(record, "assigned_to"),
            assignment_group=group,
            requester=caller,
            organization=_name(record, "company"),
            attributes=attributes,
            created=created,
            raw=dict(record),
        )
