"""The JSON Schema of rule files (``ticketpager rules schema``; ``rules/schema.json`` is generated from it).

Editors use it for completion and early red squiggles (``# yaml-language-server: $schema=...``). It is
derived from the operator registry so it never drifts; ``load_rules`` remains the authority (it also
checks field names, regexes, templates, calendars and environment references, which a schema cannot).
Regenerate with ``ticketpager rules schema > rules/schema.json`` (a test fails when it is stale); the
sources it lists come from the registry of systems (:mod:`connectors.registry`).
"""

from __future__ import annotations

import json
from typing import Any

from kernel.model import SEVERITIES
from rules.operators import MODIFIERS, REGISTRY
from rules.twoway import KINDS, ON_GROUP_CHANGE
from rules.twoway_validation import POLICY_ID, TRANSITION_CATEGORIES, VISIBILITY
from rules.validation import CALENDAR_KEYS, TRIGGER_KEYS, rule_sources

SCHEMA_ID = "https://ticketpager.dev/schemas/rules-v1.json"


def build_schema() -> dict[str, Any]:
    scalar = {"type": ["string", "number", "boolean", "null"]}
    operators: dict[str, Any] = {
        name: {**dict(op.arg_schema), "description": op.doc}
        for name, op in REGISTRY.items()
        if name not in ("during", "outside")
    }
    operators["during"] = {"type": "string", "description": REGISTRY["during"].doc}
    operators["outside"] = {"type": "string", "description": REGISTRY["outside"].doc}
    for modifier in MODIFIERS:
        operators[modifier] = {"type": "boolean", "description": "compare case-insensitively"}
    severity = {"enum": list(SEVERITIES)}
    template = {"type": "string", "description": "sandboxed Jinja2 template"}
    trigger_props: dict[str, Any] = {key: template for key in TRIGGER_KEYS}
    trigger_props["routing_key"] = {
        "type": "string",
        "description": "PagerDuty integration key, or ${ENV_VAR} / ${ENV_VAR:-default}",
    }
    trigger_props["severity"] = {
        "anyOf": [
            severity,
            {
                "type": "object",
                "required": ["from", "map", "default"],
                "additionalProperties": False,
                "properties": {
                    "from": {"type": "string"},
                    "map": {"type": "object", "additionalProperties": severity},
                    "default": severity,
                },
            },
        ]
    }
    trigger_props["custom_details"] = {"type": "object"}
    trigger_props["links"] = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["href"],
            "additionalProperties": False,
            "properties": {"href": template, "text": template},
        },
    }
    trigger_props["images"] = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["src"],
            "additionalProperties": False,
            "properties": {"src": template, "href": template, "alt": template},
        },
    }
    hours = {"type": "string", "pattern": r"^\s*\d{1,2}:\d{2}\s*-\s*\d{1,2}:\d{2}\s*$"}
    policy_id = {"type": "string", "pattern": POLICY_ID.pattern, "description": "escalation policy id, e.g. PNET001"}
    visibility = {"enum": list(VISIBILITY), "description": "internal note / work note, or a public comment"}
    transition = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "description": "target status name"},
            "category": {"enum": list(TRANSITION_CATEGORIES)},
            "fields": {"type": "object", "additionalProperties": template},
        },
        "oneOf": [{"required": ["status"]}, {"required": ["category"]}],
    }
    reaction = {
        "anyOf": [
            {"type": "boolean"},
            {**template, "description": "the comment (sandboxed Jinja2 template)"},
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "comment": {"anyOf": [{"type": "boolean"}, template]},
                    "visibility": visibility,
                    "transition": transition,
                    "set_group": {"type": "boolean", "description": "delegated only: the group of the new policy"},
                },
            },
        ]
    }
    sync_back = {
        "type": "object",
        "description": "what a person's action in PagerDuty writes onto the ticket (absent: nothing)",
        "additionalProperties": False,
        "properties": {"visibility": visibility, **{kind: {"$ref": "#/$defs/sync_reaction"} for kind in KINDS}},
    }
    escalation_policies = {
        "type": "object",
        "description": "ticket group <-> PagerDuty escalation policy",
        "additionalProperties": False,
        "properties": {
            "field": {"type": "string", "description": "the ticket's group field (default assignment_group)"},
            "groups": {"type": "object", "additionalProperties": policy_id},
            "on_group_change": {"enum": list(ON_GROUP_CHANGE)},
            "reverse": {
                "type": "object",
                "propertyNames": policy_id,
                "additionalProperties": {"type": "string"},
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "ticketpager rule file",
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {
            "version": {"const": 1},
            "calendars": {"type": "object", "additionalProperties": {"$ref": "#/$defs/calendar"}},
            "groups": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "string"},
                "description": "your assignment group names: escalation_policies maps are checked against them",
            },
            "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}},
        },
        "$defs": {
            "calendar": {
                "type": "object",
                "required": ["timezone"],
                "additionalProperties": False,
                "properties": {
                    "timezone": {"type": "string", "description": "IANA zone, e.g. Europe/Berlin"},
                    "days": {"type": "array", "items": {"enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}},
                    "hours": {"anyOf": [hours, {"type": "array", "items": hours}]},
                    "holidays": {"type": "array", "items": {"type": "string", "format": "date"}},
                },
                "propertyNames": {"enum": list(CALENDAR_KEYS)},
            },
            "sync_reaction": reaction,
            "conditions": {
                "type": "object",
                "minProperties": 1,
                "properties": {
                    "all": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/conditions"}},
                    "any": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/conditions"}},
                    "not": {"$ref": "#/$defs/conditions"},
                    "during": {"type": "string", "description": "now is inside this calendar"},
                    "outside": {"type": "string", "description": "now is outside this calendar"},
                },
                "additionalProperties": {
                    "anyOf": [
                        scalar,
                        {"type": "array", "items": scalar, "minItems": 1},
                        {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": False,
                            "properties": operators,
                        },
                    ]
                },
            },
            "rule": {
                "type": "object",
                "required": ["name", "when", "trigger"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"},
                    "description": {"type": "string"},
                    "source": {"enum": list(rule_sources())},
                    "when": {"$ref": "#/$defs/conditions"},
                    "acknowledge_when": {"$ref": "#/$defs/conditions"},
                    "resolve_when": {"$ref": "#/$defs/conditions"},
                    "on_unmatch": {"enum": ["keep", "resolve"]},
                    "continue": {"type": "boolean"},
                    "sync_back": sync_back,
                    "escalation_policies": escalation_policies,
                    "trigger": {
                        "type": "object",
                        "required": ["routing_key", "severity", "summary"],
                        "additionalProperties": False,
                        "properties": trigger_props,
                    },
                },
            },
        },
    }


def schema_text() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
