"""Strict validation of loaded rule files into :class:`rules.spec.RuleSetSpec`, collecting ALL errors.

Every problem becomes a :class:`RuleFileError` at the exact key or value, with a trail such as
``rule 'jira-p1' → when → priority: unknown operator 'equal' (did you mean 'equals'?)``. Unknown keys,
fields and operators, bad regexes, bad templates, severities outside PagerDuty's four, unset ``${ENV}``
references and duplicate names are all errors: a rule can never be silently wrong.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple

from kernel.fields import (
    RAW_PAYLOADS,
    SERVICENOW_PRIORITY_LABELS,
    SOURCE_ATTRIBUTES,
    TICKET_FIELDS,
    all_attributes,
    connection_systems,
    connection_vocabulary,
)
from kernel.model import SEVERITIES, StatusCategory, Ticket
from kernel.routing_keys import is_integration_key
from rules.calendars import Calendar, CalendarError, parse_days, parse_holiday, parse_hours, parse_timezone
from rules.loader import Pos, RuleFileError, YList, YMap
from rules.operators import (
    COMPARE_TIMESTAMPS,
    MODIFIERS,
    REGISTRY,
    OperatorArgError,
    PrepareContext,
    did_you_mean,
    show,
)
from rules.spec import (
    AllOf,
    AnyOf,
    Cond,
    FieldRef,
    Getter,
    Leaf,
    NotOf,
    RuleSetSpec,
    RuleSpec,
    SeveritySpec,
    TriggerTemplate,
)
from rules.templates import TRIGGER_VARIABLES, Template, TemplateProblem, Variables, compile_template
from rules.twoway_validation import TwoWayValidation, uses_set_group


def rule_sources() -> tuple[str, ...]:
    """A rule's valid ``source`` values: every registered system (:mod:`connectors.registry`), and ``any``."""
    return (*SOURCE_ATTRIBUTES, "any")


TOP_KEYS = ("version", "calendars", "groups", "rules")
RULE_KEYS = (
    "name",
    "description",
    "source",
    "when",
    "trigger",
    "acknowledge_when",
    "resolve_when",
    "on_unmatch",
    "continue",
    "sync_back",
    "escalation_policies",
)
TRIGGER_KEYS = (
    "routing_key",
    "severity",
    "summary",
    "source",
    "component",
    "group",
    "class",
    "custom_details",
    "links",
    "images",
)
CALENDAR_KEYS = ("timezone", "days", "hours", "holidays")
LINK_KEYS = {"links": (("href",), ("text",)), "images": (("src",), ("href", "alt"))}  # (required, optional)
GROUP_KEYS = ("all", "any", "not")
NOW_OPERATORS = ("during", "outside")
ON_UNMATCH = ("keep", "resolve")
LIST_FIELDS = frozenset({"labels", "components", "organization_tags"})
TIMESTAMP_FIELDS = frozenset({"created", "updated"})
EXACT_OPERATORS = frozenset({"equals", "not_equals", "in", "not_in"})  # an instant never equals its text
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
BARE_ENV_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")  # $NAME: a shell habit, not our syntax
ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?\}$", re.DOTALL)
DEFAULT_RESOLVE_WHEN = {"status_category": "done"}
MISSING_ENV_PLACEHOLDER = "missing-env:"  # routing key of an unset ${VAR} under --allow-missing-env
# Fields whose values come from a fixed, case-sensitive vocabulary: comparing them with anything else never
# matches. Zendesk's come from connectors/zendesk_normalize.py (it lowercases them).
VOCABULARY_OPERATORS = frozenset({"equals", "not_equals", "in", "not_in", "changed_to", "changed_from"})
ZENDESK_PRIORITIES = ("urgent", "high", "normal", "low")
ZENDESK_STATUSES = ("new", "open", "pending", "hold", "solved", "closed", "deleted")
STATUS_CATEGORIES = tuple(category.value for category in StatusCategory)


MISSING_ENV_HINT = "set it where the service runs; 'rules check --allow-missing-env' checks the files without it"
NOT_A_KEY = "is not a 32-character PagerDuty integration key (letters and digits)"
# a variable written in another tool's syntax: {PD_KEY}, %PD_KEY%, {{ PD_KEY }}, $(PD_KEY), or the bare name
_FOREIGN_ENV_REF = re.compile(
    r"^(?:\{\{\s*([A-Za-z_]\w*)\s*\}\}|\{([A-Za-z_]\w*)\}|%([A-Za-z_]\w*)%|\$\(([A-Za-z_]\w*)\)|([A-Z][A-Z0-9]*_[A-Z0-9_]*))$"
)


@dataclass(frozen=True, slots=True)
class MissingEnv(RuleFileError):
    """An unset or empty ``${VAR}`` routing key, as a warning (``rules check`` groups them by variable)."""

    variable: str = ""
    empty: bool = False


def _where(first: Pos, here: Pos) -> str:
    """``line 3:11`` in the same file, ``other.yaml:3:11`` across files."""
    return f"line {first.line}:{first.col}" if first.path == here.path else f"{first.path}:{first.line}:{first.col}"


def _trail(trail: list[str]) -> str:
    return " → ".join(trail)


class Validator(TwoWayValidation):
    """Validates a whole file set; :attr:`errors` collects every problem."""

    def __init__(
        self,
        env: Mapping[str, str],
        allow_missing_env: bool = False,
        incomplete: bool = False,
        check_key_format: bool = False,
    ) -> None:
        self.env = env
        self.allow_missing_env = allow_missing_env
        self.check_key_format = check_key_format  # rules check/test: a key PagerDuty would refuse is an error
        self.incomplete = incomplete  # a file of the set did not load: its calendars are unknown, not missing
        self.errors: list[RuleFileError] = []
        self.warnings: list[RuleFileError] = []  # unset ${VAR} routing keys (allow_missing_env)
        self.notices: list[RuleFileError] = []  # other warnings: the rules load, but may not do what is meant
        self.calendars: dict[str, Calendar] = {}
        self._calendar_pos: dict[str, Pos] = {}
        self._names: dict[str, Pos] = {}
        self.groups: dict[str, Pos] = {}  # the top-level groups: vocabulary, across files
        self.custom_names: CustomNames | None = None  # the current rule's connections' custom fields, if known
        self.category_limit: CategoryLimit | None = None  # the categories they can report, if limited

    # -- helpers --------------------------------------------------------------------------------------

    def err(self, pos: Pos, trail: list[str], message: str) -> None:
        text = f"{_trail(trail)}: {message}" if trail else message
        self.errors.append(RuleFileError.at(pos, text))

    def check_keys(self, mapping: YMap, allowed: tuple[str, ...], trail: list[str]) -> None:
        for key in mapping:
            if key not in allowed:
                self.err(
                    mapping.key_pos[key],
                    trail,
                    f"unknown key '{key}'{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})",
                )

    # -- top level ------------------------------------------------------------------------------------

    def validate(self, documents: list[tuple[str, Any]]) -> RuleSetSpec:
        bodies: list[tuple[str, YMap]] = []
        for path, doc in documents:
            top = Pos(path, 1, 1)
            if not isinstance(doc, YMap):
                self.err(top, [], "a rule file is a mapping with 'version: 1' and 'rules:'")
                continue
            self.check_keys(doc, TOP_KEYS, [])
            if "version" not in doc:
                self.err(doc.pos, [], "missing 'version: 1'")
            elif doc["version"] != 1 or isinstance(doc["version"], bool):
                self.err(doc.val_pos["version"], ["version"], f"unsupported version {show(doc['version'])} (use 1)")
            if "rules" not in doc and "calendars" not in doc and "groups" not in doc:
                self.err(doc.pos, [], "missing 'rules:'")
            if "calendars" in doc:
                self.calendars_section(doc["calendars"], doc.val_pos["calendars"])
            if "groups" in doc:
                self.groups_section(doc["groups"], doc.val_pos["groups"])
            bodies.append((path, doc))
        rules: list[RuleSpec] = []
        for _path, doc in bodies:
            if "rules" not in doc:
                continue
            items = doc["rules"]
            if not isinstance(items, YList):
                self.err(doc.val_pos["rules"], ["rules"], "must be a list of rules (each item starts with '- name:')")
                continue
            for index, item in enumerate(items):
                spec = self.rule(item, items.item_pos[index], index + 1)
                if spec is not None:
                    rules.append(spec)
        return RuleSetSpec(tuple(rules), dict(self.calendars), tuple(self.groups))

    def calendars_section(self, value: Any, pos: Pos) -> None:
        if not isinstance(value, YMap):
            self.err(pos, ["calendars"], "must be a mapping of calendar name → {timezone, days, hours}")
            return
        for name, body in value.items():
            trail = ["calendars", name]
            kpos = value.key_pos[name]
            if name in self._calendar_pos:
                first = self._calendar_pos[name]
                self.err(kpos, trail, f"duplicate calendar name (first defined at {_where(first, kpos)})")
                continue
            self._calendar_pos[name] = kpos
            calendar = self.calendar(name, body, value.val_pos[name], trail)
            if calendar is not None:
                self.calendars[name] = calendar

    def calendar(self, name: str, body: Any, pos: Pos, trail: list[str]) -> Calendar | None:
        if not isinstance(body, YMap):
            self.err(pos, trail, "must be a mapping {timezone, days, hours, holidays}")
            return None
        self.check_keys(body, CALENDAR_KEYS, trail)
        ok = True
        timezone, days, ranges = "UTC", frozenset(range(7)), ((0, 24 * 60),)
        holidays: frozenset[date] = frozenset()
        if "timezone" not in body:
            self.err(body.pos, trail, "missing 'timezone' (an IANA name such as Europe/Berlin)")
            ok = False
        parts: list[tuple[str, Any]] = [
            ("timezone", lambda v: parse_timezone(v)),
            ("days", parse_days),
            ("hours", parse_hours),
            ("holidays", lambda v: frozenset(parse_holiday(d) for d in (v if isinstance(v, list) else [v]))),
        ]
        values: dict[str, Any] = {}
        for key, parse in parts:
            if key not in body:
                continue
            try:
                values[key] = parse(body[key])
            except CalendarError as exc:
                self.err(body.val_pos[key], [*trail, key], str(exc))
                ok = False
        if not ok:
            return None
        timezone = values.get("timezone", timezone)
        days = values.get("days", days)
        ranges = values.get("hours", ranges)
        holidays = values.get("holidays", holidays)
        return Calendar(name, timezone, days, ranges, holidays)

    # -- rules ----------------------------------------------------------------------------------------

    def rule(self, item: Any, pos: Pos, number: int) -> RuleSpec | None:
        if not isinstance(item, YMap):
            self.err(pos, [f"rule #{number}"], "each rule is a mapping starting with 'name:'")
            return None
        name = item.get("name")
        label = f"rule '{name}'" if isinstance(name, str) and name else f"rule #{number}"
        trail = [label]
        errors_before = len(self.errors)
        self.check_keys(item, RULE_KEYS, trail)
        if "name" not in item:
            self.err(item.pos, trail, "missing 'name'")
        elif not isinstance(name, str) or not NAME_PATTERN.match(name):
            self.err(
                item.val_pos["name"],
                trail,
                "name must be 1-100 letters, digits, '-', '_', '.' or ':' (it appears in logs and PagerDuty)",
            )
        elif name in self._names:
            first = self._names[name]
            self.err(
                item.val_pos["name"],
                trail,
                f"duplicate rule name (first defined at {_where(first, item.val_pos['name'])})",
            )
        else:
            self._names[name] = item.val_pos["name"]
        description = item.get("description", "")
        if not isinstance(description, str):
            self.err(item.val_pos["description"], [*trail, "description"], "must be text")
            description = ""
        source = item.get("source", "any")
        if source not in rule_sources():
            self.err(
                item.val_pos["source"],
                [*trail, "source"],
                f"unknown source {show(source)}{did_you_mean(str(source), rule_sources())}"
                f" (use {' | '.join(rule_sources())})",
            )
            source = "any"
        spec_source, source = source, source if source != "any" else connections_system(item.get("when"))
        self.custom_names = connections_custom_names(item.get("when"))
        self.category_limit = connections_categories(item.get("when"))
        on_unmatch = item.get("on_unmatch", "keep")
        if on_unmatch not in ON_UNMATCH:
            self.err(
                item.val_pos["on_unmatch"], [*trail, "on_unmatch"], f"must be keep or resolve, not {show(on_unmatch)}"
            )
        cont = item.get("continue", False)
        if not isinstance(cont, bool):
            self.err(item.val_pos["continue"], [*trail, "continue"], "must be true or false")
        when: Cond | None = None
        if "when" not in item:
            self.err(item.pos, trail, "missing 'when' (the conditions that page)")
        else:
            when = self.conditions(item["when"], item.val_pos["when"], [*trail, "when"], source)
        ack = None
        if "acknowledge_when" in item:
            ack = self.conditions(
                item["acknowledge_when"], item.val_pos["acknowledge_when"], [*trail, "acknowledge_when"], source
            )
        if "resolve_when" in item:
            resolve = self.conditions(
                item["resolve_when"], item.val_pos["resolve_when"], [*trail, "resolve_when"], source
            )
        else:
            resolve = default_resolve_when()
        trigger = None
        if "trigger" not in item:
            self.err(item.pos, trail, "missing 'trigger' (routing_key, severity, summary)")
        else:
            trigger = self.trigger(item["trigger"], item.val_pos["trigger"], [*trail, "trigger"], source)
        policies = None
        if "escalation_policies" in item:
            policies = self.escalation_policies(
                item["escalation_policies"],
                item.val_pos["escalation_policies"],
                [*trail, "escalation_policies"],
                source,
                uses_set_group(item.get("sync_back")),
            )
        sync_back = None
        if "sync_back" in item:
            sync_back = self.sync_back(
                item["sync_back"],
                item.val_pos["sync_back"],
                [*trail, "sync_back"],
                source,
                policies,
                "escalation_policies" in item,
            )
        self.custom_names = self.category_limit = None
        if len(self.errors) != errors_before or when is None or trigger is None or resolve is None:
            return None
        assert isinstance(name, str)
        return RuleSpec(
            name=name,
            description=description,
            source=spec_source,
            when=when,
            trigger=trigger,
            acknowledge_when=ack,
            resolve_when=resolve,
            on_unmatch=str(on_unmatch),
            continue_=bool(cont),
            pos=item.pos,
            sync_back=sync_back,
            policies=policies,
        )

    # -- conditions -----------------------------------------------------------------------------------

    def conditions(self, value: Any, pos: Pos, trail: list[str], source: str) -> AllOf | None:
        if not isinstance(value, YMap):
            self.err(pos, trail, "must be a mapping of field: condition (every key must hold)")
            return None
        if not value:
            self.err(pos, trail, "must name at least one condition")
            return None
        items: list[Cond] = []
        ok = True
        for key, body in value.items():
            kpos, vpos = value.key_pos[key], value.val_pos[key]
            cond = self.condition(key, body, kpos, vpos, [*trail, key], source)
            if cond is None:
                ok = False
            else:
                items.append(cond)
        return AllOf(tuple(items)) if ok else None

    def condition(self, key: str, body: Any, kpos: Pos, vpos: Pos, trail: list[str], source: str) -> Cond | None:
        if key in ("all", "any"):
            alternatives = body if isinstance(body, YList) else None
            if alternatives is None or not alternatives:
                self.err(vpos, trail, f"'{key}:' takes a non-empty list of condition mappings")
                return None
            parts = [
                self.conditions(sub, alternatives.item_pos[i], [*trail[:-1], f"{key}[{i + 1}]"], source)
                for i, sub in enumerate(alternatives)
            ]
            if any(p is None for p in parts):
                return None
            good = tuple(p for p in parts if p is not None)
            return AllOf(good) if key == "all" else AnyOf(good)
        if key == "not":
            inner = self.conditions(body, vpos, trail, source)
            return None if inner is None else NotOf(inner)
        if key in NOW_OPERATORS:
            return self.leaf(None, key, body, vpos, trail, False)
        fref = self.field(key, source, kpos, trail)
        if fref is None:
            return None
        if isinstance(body, YMap):
            return self.operator_map(fref, body, vpos, trail, source)
        if isinstance(body, YList):
            if not self.vocabulary(fref, "in", body, vpos, trail, False, source):
                return None
            return self.leaf(fref, "in", body, vpos, trail, False)
        if fref.is_list and body is not None:
            self.err(
                vpos,
                trail,
                f"'{fref.name}' is a list: use {{contains: {show(body)}}} (or a list of values for 'any of')",
            )
            return None
        if not self.vocabulary(fref, "equals", body, vpos, trail, False, source):
            return None
        return self.leaf(fref, "equals", body, vpos, trail, False)

    def operator_map(self, fref: FieldRef, body: YMap, pos: Pos, trail: list[str], source: str) -> Cond | None:
        ignore_case = body.get("ignore_case", False)
        if not isinstance(ignore_case, bool):
            self.err(body.val_pos["ignore_case"], [*trail, "ignore_case"], "must be true or false")
            return None
        ops = [k for k in body if k not in MODIFIERS]
        if not ops:
            self.err(pos, trail, f"needs an operator ({', '.join(REGISTRY)})")
            return None
        leaves: list[Cond] = []
        ok = True
        for name in ops:
            if name not in REGISTRY:
                self.err(body.key_pos[name], trail, unknown_operator(name))
                ok = False
                continue
            op = REGISTRY[name]
            if ignore_case and op.case is None:
                self.err(body.key_pos["ignore_case"], trail, f"ignore_case does not apply to '{name}'")
                ok = False
                continue
            if fref.is_list and name in ("equals", "not_equals") and not isinstance(body[name], YList):
                self.err(
                    body.val_pos[name],
                    [*trail, name],
                    f"'{fref.name}' is a list: use contains / not_contains for one element",
                )
                ok = False
                continue
            if not self.vocabulary(fref, name, body[name], body.val_pos[name], [*trail, name], ignore_case, source):
                ok = False
                continue
            leaf = self.leaf(fref, name, body[name], body.val_pos[name], [*trail, name], ignore_case)
            if leaf is None:
                ok = False
            else:
                leaves.append(leaf)
        if not ok:
            return None
        return leaves[0] if len(leaves) == 1 else AllOf(tuple(leaves))

    def leaf(
        self, fref: FieldRef | None, name: str, arg: Any, pos: Pos, trail: list[str], ignore_case: bool
    ) -> Leaf | None:
        op = REGISTRY[name]
        if fref is not None and fref.name in TICKET_FIELDS:  # a kind of value the field never has
            label = "" if trail[-1] == name else f"{name}: "
            if name in ("older_than", "newer_than") and fref.name not in TIMESTAMP_FIELDS:
                self.err(pos, trail, f"{label}needs a timestamp field (created, updated); '{fref.name}' is not one")
                return None
            compared = [v for v in (arg if isinstance(arg, list) else [arg]) if v is not None]  # null: missing
            if name in EXACT_OPERATORS and fref.name in TIMESTAMP_FIELDS and compared:
                self.err(pos, trail, f"{label}{COMPARE_TIMESTAMPS}")
                return None
        if name in NOW_OPERATORS and isinstance(arg, str) and arg not in self.calendars:
            if arg in self._calendar_pos or self.incomplete:  # it did not load: its own error says why
                return None
        try:
            prepared = op.prepare(arg, PrepareContext(self.calendars, ignore_case))
        except OperatorArgError as exc:
            self.err(pos, trail, f"{name}: {exc}" if trail[-1] != name else str(exc))
            return None
        raw = list(arg) if isinstance(arg, YList) else arg
        return Leaf(fref, op, prepared, raw, ignore_case)

    def vocabulary(
        self, fref: FieldRef, op: str, arg: Any, pos: Pos, trail: list[str], ignore_case: bool, source: str
    ) -> bool:
        """A fixed-vocabulary field compared with a value it never has (``priority: Urgent`` on Zendesk)."""
        if op not in VOCABULARY_OPERATORS or ignore_case:
            return True
        vocabulary = fixed_vocabulary(fref.name, source)
        if vocabulary is None:
            return True
        limit = self.category_limit if fref.name == "status_category" else None
        items = list(zip(arg, arg.item_pos, strict=True)) if isinstance(arg, YList) else [(arg, pos)]
        ok = True
        for value, where in items:
            problem = vocabulary.problem(value) or (limit.problem(value) if limit is not None else None)
            if problem is not None:
                self.err(where, trail, problem)
                ok = False
        return ok

    def field(self, name: str, source: str, pos: Pos, trail: list[str]) -> FieldRef | None:
        """Resolve a rule's field name; an unknown bare name is an error with a suggestion."""
        ref = resolve_field(name, source)
        if isinstance(ref, str):
            self.err(pos, trail[:-1] + [name], ref)
            return None
        problem = raw_path_problem(name, source) if is_raw_path(name) else None
        if problem is not None:
            if source != "any":
                self.err(pos, trail[:-1] + [name], problem)
                return None
            # a source: any rule may read a system whose payload is not declared: a warning, the rule still loads
            self.notices.append(RuleFileError.at(pos, f"{_trail(trail[:-1] + [name])}: {problem}{ANY_SOURCE_NOTE}"))
        if self.custom_names is not None and name.startswith("custom."):
            problem = self.custom_names.problem(name[len("custom.") :])
            if problem is not None:
                self.err(pos, trail[:-1] + [name], problem)
                return None
        return ref

    # -- trigger --------------------------------------------------------------------------------------

    def trigger(self, value: Any, pos: Pos, trail: list[str], source: str) -> TriggerTemplate | None:
        if not isinstance(value, YMap):
            self.err(pos, trail, "must be a mapping with routing_key, severity and summary")
            return None
        before = len(self.errors)
        self.check_keys(value, TRIGGER_KEYS, trail)
        for required in ("routing_key", "severity", "summary"):
            if required not in value:
                self.err(value.pos, trail, f"missing '{required}'")
        routing_key = (
            self.routing_key(value.get("routing_key"), value.val_pos.get("routing_key", pos), [*trail, "routing_key"])
            if "routing_key" in value
            else None
        )
        severity = (
            self.severity(value["severity"], value.val_pos["severity"], [*trail, "severity"], source)
            if "severity" in value
            else None
        )
        templates: dict[str, Template | None] = {}
        for key in ("summary", "source", "component", "group", "class"):
            if key in value:
                templates[key] = self.template(value[key], value.val_pos[key], [*trail, key], source)
        details = (
            self.custom_details(
                value["custom_details"], value.val_pos["custom_details"], [*trail, "custom_details"], source
            )
            if "custom_details" in value
            else {}
        )
        links = {k: self.link_list(k, value[k], value.val_pos[k], [*trail, k], source) for k in LINK_KEYS if k in value}
        if len(self.errors) != before or routing_key is None or severity is None or templates.get("summary") is None:
            return None
        summary = templates["summary"]
        assert summary is not None
        return TriggerTemplate(
            routing_key=routing_key,
            severity=severity,
            summary=summary,
            source=templates.get("source"),
            component=templates.get("component"),
            group=templates.get("group"),
            class_=templates.get("class"),
            custom_details=details or {},
            links=links.get("links") or (),
            images=links.get("images") or (),
        )

    def routing_key(self, value: Any, pos: Pos, trail: list[str]) -> str | None:
        """A literal key or ``${VAR}`` / ``${VAR:-default}``; the value never appears in a message."""
        if not isinstance(value, str) or not value.strip():
            self.err(pos, trail, "must be text: an integration key or a ${ENV_VAR} reference")
            return None
        match = ENV_REF.match(value.strip())
        if match is None:
            if "${" in value:
                self.err(pos, trail, "an environment reference must be the whole value: ${NAME} or ${NAME:-default}")
                return None
            bare = BARE_ENV_REF.match(value.strip())
            if bare is not None:  # $PD_KEY would be sent to PagerDuty as the key itself
                self.err(pos, trail, f"an environment reference needs braces: ${{{bare.group(1)}}}")
                return None
            if self.check_key_format and not is_integration_key(value.strip()):
                self.err(pos, trail, f"{NOT_A_KEY}{literal_key_hint(value.strip())}")
                return None
            return value.strip()
        name, default = match.group(1), match.group(2)
        resolved = self.env.get(name)
        if resolved is None or not resolved.strip():
            if default is not None and default.strip():
                return default.strip()
            state = "is empty" if resolved is not None else "is not set"
            if self.allow_missing_env:
                message = f"{_trail(trail)}: environment variable {name} {state} (using a placeholder key)"
                self.warnings.append(MissingEnv(pos.path, pos.line, pos.col, message, name, resolved is not None))
                return f"{MISSING_ENV_PLACEHOLDER}{name}"
            hint = "and its default is empty" if default is not None else f"({MISSING_ENV_HINT})"
            self.err(pos, trail, f"environment variable {name} {state} {hint}")
            return None
        if self.check_key_format and not is_integration_key(resolved.strip()):  # never show the value: a secret
            self.err(pos, trail, f"environment variable {name} {NOT_A_KEY}{env_key_hint(resolved.strip())}")
            return None
        return resolved.strip()

    def severity(self, value: Any, pos: Pos, trail: list[str], source: str) -> SeveritySpec | None:
        allowed = " | ".join(SEVERITIES)
        if isinstance(value, str):
            if value not in SEVERITIES:
                self.err(pos, trail, f"unknown severity '{value}'{did_you_mean(value, SEVERITIES)} (use {allowed})")
                return None
            return SeveritySpec(literal=value)
        if not isinstance(value, YMap):
            self.err(pos, trail, f"must be one of {allowed}, or {{from: field, map: {{...}}, default: ...}}")
            return None
        before = len(self.errors)
        self.check_keys(value, ("from", "map", "default"), trail)
        for required in ("from", "map", "default"):
            if required not in value:
                self.err(value.pos, trail, f"missing '{required}'")
        fref = None
        if isinstance(value.get("from"), str):
            fref = self.field(value["from"], source, value.val_pos["from"], [*trail, "from"])
        elif "from" in value:
            self.err(value.val_pos["from"], [*trail, "from"], "must be a field name")
        mapping: dict[str, str] = {}
        table = value.get("map")
        vocabulary = fixed_vocabulary(fref.name, source) if fref is not None else None
        if isinstance(table, YMap):
            for key, sev in table.items():
                problem = vocabulary.problem(key) if vocabulary is not None else None
                if problem is not None:  # a key the field never holds: that severity would never apply
                    self.err(table.key_pos[key], [*trail, "map", str(key)], problem)
                if sev not in SEVERITIES:
                    self.err(
                        table.val_pos[key],
                        [*trail, "map", key],
                        f"unknown severity {show(sev)}{did_you_mean(str(sev), SEVERITIES)} (use {allowed})",
                    )
                mapping[key] = str(sev)
        elif "map" in value:
            self.err(value.val_pos["map"], [*trail, "map"], "must be a mapping of field value → severity")
        default = value.get("default")
        if "default" in value and default not in SEVERITIES:
            self.err(
                value.val_pos["default"],
                [*trail, "default"],
                f"unknown severity {show(default)}{did_you_mean(str(default), SEVERITIES)} (use {allowed})",
            )
        if len(self.errors) != before or fref is None:
            return None
        return SeveritySpec(source=fref, mapping=mapping, default=str(default))

    def template(
        self, value: Any, pos: Pos, trail: list[str], source: str, variables: Variables | None = None
    ) -> Template | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.err(pos, trail, "must be text (a Jinja2 template)")
            return None
        try:
            return compile_template(str(value), source, TRIGGER_VARIABLES if variables is None else variables)
        except TemplateProblem as exc:
            for message, offset in exc.problems:  # every unknown name at once, each at its column where known
                self.err(pos.inside(offset) if isinstance(value, str) else pos, trail, message)
            return None

    def custom_details(self, value: Any, pos: Pos, trail: list[str], source: str) -> dict[str, Any]:
        """``custom_details``: a mapping (or null, none). Anything else would fail every page of the rule when
        the event is built, so it is refused here."""
        if value is None:
            return {}
        if isinstance(value, YMap):
            return dict(self.details(value, pos, trail, source))
        problem = f"must be a mapping (key: value), not {_kind(value)}"
        if isinstance(value, YList) and value and all(isinstance(item, YMap) and len(item) == 1 for item in value):
            problem += ": remove the '- ' before each key"  # `- team: ops` items: a list of one-key mappings
        elif isinstance(value, str):
            problem += ": give the text a key, e.g. {note: '...'}"
        self.err(pos, trail, problem)
        return {}

    def details(self, value: Any, pos: Pos, trail: list[str], source: str) -> Any:
        if isinstance(value, YMap):
            return {k: self.details(v, value.val_pos[k], [*trail, k], source) for k, v in value.items()}
        if isinstance(value, YList):
            return [self.details(v, value.item_pos[i], [*trail, f"[{i + 1}]"], source) for i, v in enumerate(value)]
        if isinstance(value, str):
            return self.template(value, pos, trail, source)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, datetime):  # YAML 1.1 reads `2026-12-24 10:00:00` as an instant, YAML 1.2 as text
            self.err(pos, trail, f"a date and time ({show(value)}): write it in quotes to send it as text")
            return None
        if isinstance(value, date):  # an unquoted `2026-12-24`: sent as written, the text YAML 1.2 reads
            return self.template(value.isoformat(), pos, trail, source)
        self.err(pos, trail, f"unsupported value {show(value)} (use text, numbers, lists or mappings)")
        return None

    def status_problem(self, source: str, value: str) -> str | None:
        """Why ``value`` is never a status of ``source`` (where the statuses are known), else None."""
        vocabulary = fixed_vocabulary("status", source)
        return None if vocabulary is None else vocabulary.problem(value)

    def link_list(
        self, kind: str, value: Any, pos: Pos, trail: list[str], source: str
    ) -> tuple[Mapping[str, Template], ...]:
        required, optional = LINK_KEYS[kind]
        if not isinstance(value, YList):
            self.err(pos, trail, f"must be a list of {{{', '.join(required + optional)}}}")
            return ()
        out: list[Mapping[str, Template]] = []
        for i, item in enumerate(value):
            sub = [*trail[:-1], f"{kind}[{i + 1}]"]
            if not isinstance(item, YMap):
                self.err(value.item_pos[i], sub, f"must be a mapping with {', '.join(required)}")
                continue
            self.check_keys(item, required + optional, sub)
            for key in required:
                if key not in item:
                    self.err(item.pos, sub, f"missing '{key}'")
            entry = {}
            for key in required + optional:
                if key in item:
                    tpl = self.template(item[key], item.val_pos[key], [*sub, key], source)
                    if tpl is not None:
                        entry[key] = tpl
            out.append(entry)
        return tuple(out)


def literal_key_hint(key: str) -> str:
    """Why a literal routing key is not a key, when it shows (a variable in another syntax, a URL)."""
    foreign = _FOREIGN_ENV_REF.match(key)
    if foreign is not None:
        name = next(group for group in foreign.groups() if group)
        return f": it looks like a variable: write ${{{name}}}"
    if "://" in key:
        return ": it is a URL; write the integration key alone (the service's Events API v2 integration shows it)"
    return ": use the key of the service's Events API v2 integration, or ${ENV_VAR}"


def env_key_hint(value: str) -> str:
    """Why a variable's value is not a key, in words that never quote it."""
    if re.match(r"^[A-Za-z_]\w*=", value):
        return ": its value looks like NAME=value; set the variable to the key alone"
    if value[:1] in "'\"" and value[-1:] == value[:1]:
        return ": its value is in quotes; set the variable to the key alone"
    if "://" in value:
        return ": its value is a URL; set the variable to the integration key alone"
    return ": set it to the key of the service's Events API v2 integration"


def _kind(value: Any) -> str:
    """What a YAML value is, in an admin's words (``a list``, ``text``, ``a number``)."""
    if isinstance(value, YList):
        return "a list"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return "text"
    if isinstance(value, date):
        return "a date"
    return type(value).__name__


def default_resolve_when() -> AllOf:
    """``resolve_when: {status_category: done}``, the default."""
    ref = resolve_field("status_category", "any")
    assert isinstance(ref, FieldRef)
    return AllOf((Leaf(ref, REGISTRY["equals"], "done", "done"),))


def _mapping_getter(attribute: str, key: str) -> Getter:
    """``ticket.custom_fields[key]`` / ``ticket.attributes[key]``, None when absent."""
    if attribute == "custom_fields":

        def get_custom(ticket: Ticket) -> Any:
            return ticket.custom_fields.get(key)

        return get_custom

    def get_attribute(ticket: Ticket) -> Any:
        return ticket.attributes.get(key)

    return get_attribute


def _raw_getter(parts: tuple[str, ...]) -> Getter:
    """``ticket.raw`` at a dotted path. A payload may hold a dot in a key itself: ServiceNow sends its dot-walked
    fields flat (``"assignment_group.name": "Network"``), so at each level the longest key made of the remaining
    parts is tried first: ``a.b.c`` is ``raw["a.b.c"]``, then ``raw["a.b"]["c"]``, then ``raw["a"]["b"]["c"]``.
    A list item is named by its number (``fields.fixVersions.0.name``)."""
    count = len(parts)
    keys = {(start, end): ".".join(parts[start:end]) for start in range(count) for end in range(start + 1, count + 1)}

    def find(current: Any, start: int) -> Any:
        if start == count:
            return current
        if isinstance(current, Mapping):
            for end in range(count, start, -1):  # the longest flat key first
                value = current.get(keys[start, end])
                if value is not None:
                    found = find(value, end)
                    if found is not None:
                        return found
            return None
        if isinstance(current, list) and parts[start].isdigit():
            index = int(parts[start])
            return find(current[index], start + 1) if index < len(current) else None
        return None

    def get(ticket: Ticket) -> Any:
        return find(ticket.raw, 0)

    return get


_CATEGORY_TEXT = {category: category.value for category in StatusCategory}


def _status_category(ticket: Ticket) -> str:
    return _CATEGORY_TEXT[ticket.status_category]  # plain text, so comparisons take the fast path


def connections_system(when: Any) -> str:
    """The system of every connection a rule's ``when: {connection: …}`` names, if they share one, else ``any``:
    a rule for one client's Zendesk is checked with Zendesk's vocabulary even without ``source: zendesk``."""
    named = when.get("connection") if isinstance(when, YMap) else None
    names = named if isinstance(named, list) else [named]
    known = connection_systems()
    systems = {known.get(n) if isinstance(n, str) else None for n in names}
    return str(systems.pop()) if len(systems) == 1 and None not in systems else "any"


class CustomNames(NamedTuple):
    """The custom field names the connections a rule names declare (a Zendesk's ``custom_field_names``)."""

    connections: tuple[str, ...]
    names: frozenset[str]

    def problem(self, key: str) -> str | None:
        """Why ``custom.<key>`` is never filled on these connections, else None (a field id always is)."""
        if key in self.names or key.isdigit():
            return None
        whose = " or ".join(f"'{c}'" for c in self.connections)
        return (
            f"no custom field '{key}' on connection {whose}{did_you_mean(key, self.names)} "
            f"(custom_field_names: {', '.join(sorted(self.names))}; or custom.<field id>)"
        )


def named_connections(when: Any) -> tuple[str, ...]:
    """The known connections a rule's ``when: {connection: …}`` names; none when it names an unknown one
    (that has its own error) or no connection at all."""
    named = when.get("connection") if isinstance(when, YMap) else None
    given = list(named) if isinstance(named, list) else [named]
    names = [n for n in given if isinstance(n, str) and n in connection_systems()]
    return tuple(dict.fromkeys(names)) if names and len(names) == len(given) else ()


def connections_custom_names(when: Any) -> CustomNames | None:
    """The custom field names of the connections a rule's ``when: {connection: …}`` names, when every one
    of them declares some; None otherwise (an instance without configured names accepts any name)."""
    names = named_connections(when)
    declared = [connection_vocabulary(n).custom_field_names for n in names]
    if not declared or not all(declared):
        return None
    return CustomNames(names, frozenset().union(*declared))


class CategoryLimit(NamedTuple):
    """The status categories the connections a rule names can report (a ServiceNow ``state_map`` may
    map every state that was ``new`` elsewhere)."""

    connections: tuple[str, ...]
    categories: frozenset[str]

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str) or value not in STATUS_CATEGORIES or value in self.categories:
            return None  # not a category at all: the status category vocabulary says so
        whose = " or ".join(f"'{c}'" for c in self.connections)
        possible = " | ".join(c for c in STATUS_CATEGORIES if c in self.categories)
        return (
            f"status category '{value}' never occurs on connection {whose}: its state_map maps no state to "
            f"{value} (possible: {possible})"
        )


def connections_categories(when: Any) -> CategoryLimit | None:
    """The status categories the named connections can report, when every one of them limits them."""
    names = named_connections(when)
    limits = [connection_vocabulary(n).status_categories for n in names]
    if not limits or any(limit is None for limit in limits):
        return None
    return CategoryLimit(names, frozenset().union(*(limit for limit in limits if limit is not None)))


def resolve_field(name: str, source: str) -> FieldRef | str:
    """The :class:`FieldRef` for a rule field name, or an error message (never raises)."""
    if name in TICKET_FIELDS:
        if name == "status_category":
            return FieldRef(name, _status_category)
        return FieldRef(name, operator.attrgetter(name), is_list=name in LIST_FIELDS)
    if name.startswith("custom."):
        key = name[len("custom.") :]
        if not key:
            return "'custom.' needs a custom field name, e.g. custom.Tier"
        return FieldRef(name, _mapping_getter("custom_fields", key))
    if name in all_attributes():
        if source != "any" and name not in SOURCE_ATTRIBUTES[source]:
            owners = sorted(s for s, attrs in SOURCE_ATTRIBUTES.items() if name in attrs)
            return f"'{name}' is a field of {' and '.join(owners)} tickets; this rule's source is {source}"
        return FieldRef(name, _mapping_getter("attributes", name), is_list=name in LIST_FIELDS)
    if "." in name:
        parts = tuple(name.split("."))
        if any(not p for p in parts):
            return f"bad dotted path '{name}'"
        return FieldRef(name, _raw_getter(parts))
    candidates = set(TICKET_FIELDS) | (all_attributes() if source == "any" else SOURCE_ATTRIBUTES[source])
    candidates |= set(GROUP_KEYS) | set(NOW_OPERATORS)
    return (
        f"unknown field '{name}'{did_you_mean(name, candidates)} "
        "(ticket fields, custom.<name>, the source's attributes, or a dotted path into the raw payload)"
    )


ANY_SOURCE_NOTE = " (a warning, not an error, for a 'source: any' rule)"
#: how a template names what a condition names directly: ``ticket.key`` is ``key``, ``ticket.custom.Tier`` is
#: ``custom.Tier``, ``ticket.raw.fields.x`` is ``fields.x``
_TEMPLATE_PREFIXES = (("ticket.attributes.", ""), ("ticket.raw.", ""), ("ticket.", ""), ("attributes.", ""))
_LISTED_KEYS = 30  # a payload with more top-level keys than this is not listed in a message (Zendesk's)


def is_raw_path(name: str) -> bool:
    """Whether a rule's field name is a dotted path into the raw payload (not a field, custom field or
    attribute)."""
    return "." in name and not name.startswith("custom.") and name not in TICKET_FIELDS and name not in all_attributes()


def raw_path_problem(name: str, source: str) -> str | None:
    """Why a dotted path never finds anything in ``source``'s raw payload (:data:`kernel.fields.RAW_PAYLOADS`),
    else None: a path copied from a template (``ticket.key``), or one whose first key the payload never has
    (``feilds.priority.name``). For ``source: any``: a path no declared system's payload has."""
    parts = tuple(name.split("."))
    habit = _template_habit(name)
    if habit is not None:
        return habit
    if source == "any":
        payloads = [RAW_PAYLOADS.get(system) for system in SOURCE_ATTRIBUTES]
        if not payloads or any(p is None for p in payloads) or any(p.has(parts) for p in payloads if p):
            return None
        keys = frozenset().union(*(p.keys for p in payloads if p))
        return f"no system's raw payload has a key '{parts[0]}'{_suggest(parts, keys)}"
    payload = RAW_PAYLOADS.get(source)
    if payload is None or payload.has(parts):
        return None
    first = parts[0]
    if first in payload.wrappers and len(parts) > 1:
        return f"write '{'.'.join(parts[1:])}', not '{name}': the raw payload is {payload.described} itself"
    if first in payload.not_there:
        return payload.not_there[first]
    top = sorted(key for key in payload.keys if "." not in key)  # assignment_group covers assignment_group.name
    listed = f", whose top-level keys are {', '.join(top)}" if len(top) <= _LISTED_KEYS else ""
    custom = f" (and its own {' / '.join(payload.custom_prefixes)} fields)" if payload.custom_prefixes else ""
    return (
        f"unknown key '{first}' in the raw payload{_suggest(parts, payload.keys)}: a dotted path reads "
        f"{payload.described}{listed}{custom}"
    )


def _suggest(parts: tuple[str, ...], keys: frozenset[str]) -> str:
    """`` (did you mean 'fields.priority.name'?)``: the path with its first key replaced by the closest key."""
    hint = did_you_mean(parts[0], keys)
    if not hint:
        return ""
    close = hint.removeprefix(" (did you mean '").removesuffix("'?)")
    return f" (did you mean '{'.'.join((close, *parts[1:]))}'?)"


def _template_habit(name: str) -> str | None:
    """``ticket.key`` / ``attributes.project`` / ``ticket.raw.fields.x`` / ``raw.fields.x``: a template's way of
    naming what a condition names directly."""
    if name.startswith("raw.") and len(name) > len("raw."):
        return f"write '{name[len('raw.') :]}', not '{name}': a dotted path already reads the raw payload"
    for prefix, _ in _TEMPLATE_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            fixed = name[len(prefix) :]
            if "." not in fixed and fixed not in TICKET_FIELDS and fixed not in all_attributes():
                fixed = next(iter(_close(fixed)), fixed)
            return f"write '{fixed}', not '{name}': conditions name ticket fields directly"
    return None


def _close(word: str) -> list[str]:
    import difflib

    return difflib.get_close_matches(word, sorted(TICKET_FIELDS | all_attributes()), n=1, cutoff=0.6)


def unknown_operator(name: str) -> str:
    """``unknown operator 'equal' (did you mean 'equals'?)``, or the list of operators when nothing is close."""
    hint = did_you_mean(name, set(REGISTRY) | MODIFIERS)
    if hint:
        return f"unknown operator '{name}'{hint}"
    return (
        f"unknown operator '{name}' (operators: {', '.join(sorted(REGISTRY))}; "
        f"modifier: {', '.join(sorted(MODIFIERS))})"
    )


class Vocabulary(NamedTuple):
    """What values a field can hold, so a value it never holds is a load error, not a silent non-match.
    ``values`` empty: the field is free text, but ``numbers`` explains why a number never matches it."""

    noun: str
    values: tuple[str, ...] = ()
    numbers: str | None = None

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None
        if self.numbers is not None:  # ServiceNow's 1-5 carry labels; an unlabelled value stays its digits
            text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
            return self.numbers if text in SERVICENOW_LABELLED_PRIORITIES else None
        if value in self.values:
            return None
        return vocabulary_problem(self.noun, value, self.values)


SERVICENOW_LABELLED_PRIORITIES = frozenset(SERVICENOW_PRIORITY_LABELS)  # stored as "1 - Critical" … "5 - Planning"
_SERVICENOW_PRIORITY = Vocabulary(
    "ServiceNow priority",
    numbers="ServiceNow's priority is its label, e.g. '1 - Critical': for the number use priority_number: 1",
)


def fixed_vocabulary(field_name: str, source: str) -> Vocabulary | None:
    """The values a rule's field can hold, where they are known (else None)."""
    if field_name == "status_category":
        return Vocabulary("status category", STATUS_CATEGORIES)
    if field_name == "connection":  # the configured connections (of the rule's source, if it names one)
        known = connection_systems()
        return Vocabulary("connection", tuple(n for n, system in known.items() if source in ("any", system)))
    if source == "zendesk" and field_name == "priority":
        return Vocabulary("Zendesk priority", ZENDESK_PRIORITIES)
    if source == "zendesk" and field_name == "status":
        return Vocabulary("Zendesk status", ZENDESK_STATUSES)
    if source == "servicenow" and field_name == "priority":
        return _SERVICENOW_PRIORITY
    return None


_PLURALS = {
    "status category": "status categories",
    "Zendesk priority": "Zendesk priorities",
    "connection": "connections",
}


def vocabulary_problem(noun: str, value: Any, values: tuple[str, ...]) -> str:
    """Why ``value`` can never match, with the closest valid value."""
    plural = _PLURALS.get(noun, noun + "es")
    allowed = " | ".join(values)
    if isinstance(value, str):
        folded = value.strip().casefold()
        if folded in values:
            return f"{plural} are lowercase: did you mean '{folded}'? (or add ignore_case: true)"
        normalized = re.sub(r"[\s-]+", "_", folded)
        if normalized in values:
            return f"unknown {noun} {show(value)} (did you mean '{normalized}'?) (use {allowed})"
        return f"unknown {noun} {show(value)}{did_you_mean(folded, values)} (use {allowed})"
    return f"unknown {noun} {show(value)} (use {allowed})"
