"""The field names rules may use, per source: the contract between connectors and the rules engine.

A rule's ``when`` key resolves, in order, to: a :data:`TICKET_FIELDS` attribute of the normalized
ticket; ``custom.<name>`` (a custom field by display name or id); a connector attribute listed in
:data:`SOURCE_ATTRIBUTES` (``ticket.attributes[name]``); or, when it contains a dot, a path into the raw
vendor payload (``fields.customfield_10010.value``). Any other bare name is a rule-file error, so a typo
can never silently stop a rule from matching. Connectors must fill exactly these attributes.
"""

from __future__ import annotations

TICKET_FIELDS: frozenset[str] = frozenset(
    {
        "source",
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

SOURCE_ATTRIBUTES: dict[str, frozenset[str]] = {
    "jira": frozenset(
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
    ),
    "zendesk": frozenset(
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
    ),
    "servicenow": frozenset(
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
    ),
}

ALL_ATTRIBUTES: frozenset[str] = frozenset().union(*SOURCE_ATTRIBUTES.values())
