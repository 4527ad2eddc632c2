"""A silence's matchers: a rule's ``when`` conditions, validated and compiled by the rules language itself.

A silence mutes paging for the tickets its matchers match (``project: OPS``, ``priority: {in: [P1]}``,
``source: zendesk``, ``connection: acme-zendesk``, ``labels: {contains: db}``, ``any:`` / ``not:`` …): the same
fields, operators, value checks and error messages as a rule's ``when`` (:class:`rules.validation.Validator`),
so a typo is refused when the silence is created, never a silence that silently mutes nothing. A
``connection`` (one name or a list) is checked against the configured connections (the connections file,
``kernel.fields.declare_connections``), and a silence naming connections of one system is checked with that
system's and those connections' vocabulary, as a rule naming them is. Two things a rule may say are
refused: conditions on time (``older_than``, ``during`` …: a silence has its own window) and on what an
update changed (``changed_to`` …: a silence holds a ticket as it is, also when it is re-evaluated after the
silence ends).

Admins write matchers as ``--match`` texts (:func:`parse_match`): ``project=OPS``, ``priority!=P3``,
``title=~(?i)disk``, ``title!~test``, ``priority in [P1, P2]``, ``status not in [Done]``, or one line of a
rule's YAML, ``labels: {contains: db}``; or as a YAML file of the ``when`` mapping (:func:`load_match_file`).
What is stored is the plain mapping; :func:`compile_matchers` (the application hands it to the engine as a
:class:`kernel.ports.SilenceMatchers`) compiles a stored one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from kernel.errors import ConfigError
from kernel.fields import SOURCE_ATTRIBUTES
from kernel.model import Ticket
from kernel.ports import EvalContext
from rules.evaluator import compile_condition
from rules.loader import Pos, RuleFileError, YList, YMap, parse_text, read_file
from rules.operators import did_you_mean, show
from rules.spec import Cond
from rules.validation import Validator, connections_categories, connections_custom_names, connections_system

#: operators a silence refuses: a silence has its own window, and matches a ticket as it is
TIME_KEYS = ("during", "outside", "older_than", "newer_than")
CHANGE_KEYS = ("changed", "changed_to", "changed_from")
_NOT_TIME = "a silence matches what a ticket is, not when: its own start and end (--starts, --duration) say when"
_NOT_CHANGE = (
    "a silence matches what a ticket is, not what one update changed (it is checked again when it ends): "
    "match the field's value instead"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # evaluation time: no silence condition reads it
_FORM = re.compile(r"^\s*(?P<field>[^\s=!~:\[\]{}]+)\s*(?P<op>!=|=~|!~|=|\s+not\s+in\s+|\s+in\s+)(?P<value>.*)$")
#: a second matcher after a comma in a value: `project=OPS,priority=P1` (a value with a comma is written in quotes)
_ANOTHER = re.compile(r",\s*[^\s=!~:\[\]{},]+\s*(?:!=|=~|!~|=)")
_OPERATORS = {"=": "equals", "!=": "not_equals", "=~": "regex", "!~": "not_regex", "in": "in", "not in": "not_in"}
MATCH_SYNTAX = (
    "field=value, field!=value, field=~regex, field!~regex, field in [a, b], field not in [a, b], "
    "or a rule condition in YAML such as 'labels: {contains: db}'"
)


class MatcherErrors(ConfigError):
    """Every problem of a silence's matchers, one per line in ``str()``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SilenceMatch:
    """Compiled matchers (a :class:`kernel.ports.SilenceMatcher`): ``matches(ticket)`` and a description."""

    __slots__ = ("_check", "cond", "matchers")

    def __init__(self, cond: Cond, matchers: Mapping[str, Any]) -> None:
        self.cond = cond
        self.matchers = matchers
        self._check = compile_condition(cond)

    def matches(self, ticket: Ticket) -> bool:
        return self._check(EvalContext(ticket=ticket, previous=None, changes=(), now=_EPOCH)) is None

    def why_not(self, ticket: Ticket) -> str | None:
        """``None`` if the silence matches ``ticket``, else the first condition that does not hold."""
        return self._check(EvalContext(ticket=ticket, previous=None, changes=(), now=_EPOCH))

    def describe(self) -> str:
        return self.cond.describe()


# ------------------------------------------------------------------------------------------ entry points


def compile_matchers(matchers: Mapping[str, Any]) -> SilenceMatch:
    """Validate and compile stored (plain) matchers; :class:`MatcherErrors` if they are not valid."""
    if not isinstance(matchers, Mapping):
        raise MatcherErrors(["matchers must be a mapping of field: condition (a rule's 'when')"])
    pos = Pos("matchers", 1, 1)
    cond, errors = _validate(_positioned(matchers, pos), pos)
    if cond is None or errors:
        raise MatcherErrors([_plain_message(e) for e in errors] or ["matchers are not valid"])
    return SilenceMatch(cond, plain(matchers))


def parse_match(texts: Sequence[str]) -> dict[str, Any]:
    """The stored matchers of ``--match`` texts (all must hold); :class:`MatcherErrors` names each bad one."""
    if not texts:
        raise MatcherErrors([f"a silence needs at least one --match ({MATCH_SYNTAX}): it would mute every ticket"])
    parts: list[YMap] = []
    problems: list[str] = []
    for text in texts:
        label = f"--match {text!r}"
        part, errors = _parse_one(text, label)
        problems += [f"{label}: {e.message}" for e in errors]
        if part is not None:
            parts.append(part)
    if problems:
        raise MatcherErrors(problems)
    value = _combine(parts)
    pos = Pos("--match", 1, 1)
    _cond, errors = _validate(value, pos)
    if errors:
        raise MatcherErrors([_located(e) for e in errors])
    return _checked(plain(value))


def load_match_file(path: str | Path) -> dict[str, Any]:
    """The stored matchers of a YAML file holding a rule's ``when`` mapping; errors as ``file:line:col``."""
    text, errors = read_file(Path(path))
    if text is None:
        raise MatcherErrors([str(e) for e in errors])
    value, errors = parse_text(text, str(path))
    if errors or value is None:
        raise MatcherErrors([str(e) for e in errors] or [f"{path}:1:1: empty"])
    if not isinstance(value, YMap):
        raise MatcherErrors([f"{path}:1:1: a match file is a mapping of field: condition, like a rule's 'when'"])
    _cond, errors = _validate(value, value.pos)
    if errors:
        raise MatcherErrors([str(e) for e in errors])
    return _checked(plain(value))


# ------------------------------------------------------------------------------------------- internals


def _parse_one(text: str, label: str) -> tuple[YMap | None, list[RuleFileError]]:
    pos = Pos(label, 1, 1)
    form = _FORM.match(text)
    if form is None:  # one line of a rule's YAML: `labels: {contains: db}`
        value, errors = parse_text(text, label)
        if errors:
            return None, errors
        if not isinstance(value, YMap):
            return None, [RuleFileError.at(pos, f"not a matcher (use {MATCH_SYNTAX})")]
        return value, []
    name, op, raw = form.group("field"), " ".join(form.group("op").split()), form.group("value").strip()
    if op in ("in", "not in"):
        items, errors = parse_text(raw, label) if raw else (None, [])
        if errors or not isinstance(items, YList):
            inner = raw.strip("[] ") or "a, b"
            example = f"{name} {op} [{inner}]"
            return None, [RuleFileError.at(pos, f"'{op}' takes a list in brackets, e.g. {example}")]
        argument: Any = items
    else:
        if not raw:
            missing = f"'{name}: {{missing: true}}'"
            return None, [RuleFileError.at(pos, f"no value after '{op}' (for a missing field: {missing})")]
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""  # a quoted value is taken as written
        if raw[0] == "=" and op in ("=", "!="):  # `project==OPS`: '=' typed twice (a value "=x" is quoted)
            meant = f"{name}{op}{raw[1:].strip()}"
            return None, [RuleFileError.at(pos, f"'{op}=' is not an operator: did you mean '{meant}'?")]
        more = None if quoted else _ANOTHER.search(raw)
        if more is not None and op in ("=", "!="):  # `project=OPS,priority=P1`: two matchers in one
            first, second = raw[: more.start()].strip(), raw[more.start() + 1 :].strip()
            return None, [
                RuleFileError.at(
                    pos,
                    f"one condition per --match: write --match '{name}{op}{first}' --match '{second}' (all must "
                    f"hold; for one of several values: '{name} in [a, b]')",
                )
            ]
        if quoted:
            raw = raw[1:-1]
        argument = raw
    body = YMap(pos)
    body[_OPERATORS[op]] = argument
    body.key_pos[_OPERATORS[op]] = body.val_pos[_OPERATORS[op]] = pos
    out = YMap(pos)
    out[name] = body
    out.key_pos[name] = out.val_pos[name] = pos
    return out, []


def _combine(parts: list[YMap]) -> YMap:
    """One ``when`` mapping: the parts merged, or ``all: [...]`` when a field is named twice."""
    first = parts[0].pos
    keys = [key for part in parts for key in part]
    if len(keys) == len(set(keys)):
        merged = YMap(first)
        for part in parts:
            for key, value in part.items():
                merged[key] = value
                merged.key_pos[key], merged.val_pos[key] = part.key_pos[key], part.val_pos[key]
        return merged
    items = YList(first)
    for part in parts:
        items.append(part)
        items.item_pos.append(part.pos)
    out = YMap(first)
    out["all"] = items
    out.key_pos["all"] = out.val_pos["all"] = first
    return out


def _validate(value: YMap, pos: Pos) -> tuple[Cond | None, list[RuleFileError]]:
    """The compiled condition and every problem (refused operators first: they would only add noise)."""
    errors: list[RuleFileError] = []
    if not value:
        return None, [RuleFileError.at(pos, "a silence needs at least one matcher: it would mute every ticket")]
    _refused(value, [], errors)
    source = _source_scope(value, errors)
    if errors:
        return None, errors
    validator = Validator({})
    # as for a rule naming connections: their system's vocabulary, their custom field names and categories
    named = YMap(value.pos)
    named["connection"] = _names(value.get("connection"))
    if source == "any":
        source = connections_system(named)
    validator.custom_names = connections_custom_names(named)
    validator.category_limit = connections_categories(named)
    cond = validator.conditions(value, pos, [], source)
    return cond, validator.errors


def _refused(value: Any, trail: list[str], errors: list[RuleFileError]) -> None:
    if isinstance(value, YList):
        for index, item in enumerate(value):
            _refused(item, [*trail[:-1], f"{trail[-1] if trail else 'item'}[{index + 1}]"], errors)
        return
    if not isinstance(value, YMap):
        return
    for key, item in value.items():
        here = " → ".join([*trail, key])
        if key in TIME_KEYS:
            errors.append(RuleFileError.at(value.key_pos[key], f"{here}: {_NOT_TIME}"))
        elif key in CHANGE_KEYS:
            errors.append(RuleFileError.at(value.key_pos[key], f"{here}: {_NOT_CHANGE}"))
        else:
            _refused(item, [*trail, key], errors)


def _source_scope(value: YMap, errors: list[RuleFileError]) -> str:
    """The one source a silence names (its fields and values are checked as that source's), else ``any``."""
    if value.get("source") is None:
        return "any"
    names = _names(value.get("source"))
    known = tuple(SOURCE_ATTRIBUTES)
    for name in names:
        if not isinstance(name, str) or name not in SOURCE_ATTRIBUTES:
            hint = did_you_mean(str(name), known)
            message = f"source: unknown source {show(name)}{hint} (use {' | '.join(known)})"
            errors.append(RuleFileError.at(value.val_pos["source"], message))
    return names[0] if len(names) == 1 and isinstance(names[0], str) and names[0] in SOURCE_ATTRIBUTES else "any"


def _names(given: Any) -> list[Any]:
    """The values a top-level ``source`` / ``connection`` matcher requires (``x``, ``[x, y]``, ``{equals: x}``,
    ``{in: [x, y]}``); none for any other form (``not_equals`` …: it does not narrow the scope)."""
    if given is None:
        return []
    if isinstance(given, YMap):
        given = given.get("equals", given.get("in"))
        if given is None:
            return []
    return list(given) if isinstance(given, list) else [given]


def _positioned(value: Any, pos: Pos) -> Any:
    """Plain JSON values as the validator reads YAML (every position ``pos``: stored matchers have no file)."""
    if isinstance(value, Mapping):
        out = YMap(pos)
        for key, item in value.items():
            out[str(key)] = _positioned(item, pos)
            out.key_pos[str(key)] = out.val_pos[str(key)] = pos
        return out
    if isinstance(value, list | tuple):
        items = YList(pos)
        for item in value:
            items.append(_positioned(item, pos))
            items.item_pos.append(pos)
        return items
    return value


def plain(value: Any) -> Any:
    """What is stored: JSON values (YAML dates as ISO text)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value


def _checked(matchers: dict[str, Any]) -> dict[str, Any]:
    """The stored form compiles to the same thing (a YAML date stored as text must still be valid)."""
    compile_matchers(matchers)
    return matchers


def _plain_message(error: RuleFileError) -> str:
    return error.message


def _located(error: RuleFileError) -> str:
    """A problem of ``--match`` texts, prefixed with the text it is in (its position's path)."""
    return f"{error.path}: {error.message}" if error.path.startswith("--match ") else error.message


__all__ = [
    "MATCH_SYNTAX",
    "MatcherErrors",
    "SilenceMatch",
    "compile_matchers",
    "load_match_file",
    "parse_match",
]
