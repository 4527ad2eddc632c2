"""The condition operators: :data:`REGISTRY` maps an operator name to pure functions (StackStorm style).

Each :class:`Operator` has ``prepare`` (validate and pre-compile the YAML argument once, at load; raises
:class:`OperatorArgError` with an admin-readable message), ``test(value, arg, now) -> bool`` (pure, never
raises for any value: missing fields, ``null``, wrong types and lists all simply decide) and ``fail``
(the "why not" shown in explanations, e.g. ``'High' is not in ['Highest', 'P1']``).

Semantics shared by all operators (documented in docs/rules.md):

* a missing field is ``None``; only ``exists``/``missing``/``equals: null`` and the ``not_*`` forms hold on it;
* ``not_X`` is exactly ``not X``;
* numbers and numeric strings compare as numbers (``impact: 1`` matches ``"1"``); booleans only equal booleans;
* on a list field (``labels``), ``in`` means "any element is in", ``contains`` means "has the element",
  ``regex`` means "any element matches";
* timestamps compare as instants; a timestamp argument must carry a time zone (or be a plain date = UTC).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import regex

from kernel.model import FieldChange
from rules.calendars import Calendar

Scalar = str | int | float | bool | None
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_DURATION_FULL = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*[smhdw]\s*)+$")
_NUMERIC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)  # decimal text, as people write numbers
COMPARE_TIMESTAMPS = "compare timestamps with gt/gte/lt/lte, older_than or newer_than"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class OperatorArgError(ValueError):
    """The argument of an operator is invalid; the message is shown to the admin as is."""


@dataclass(frozen=True, slots=True)
class PrepareContext:
    calendars: Mapping[str, Calendar] = field(default_factory=dict)
    ignore_case: bool = False


# ---------------------------------------------------------------------------------------------- values


_SHOW_LIMIT = 80  # characters of a value shown in an explanation


def show(value: Any, limit: int = _SHOW_LIMIT) -> str:
    """A short, stable rendering of a value for explanations (``missing`` for None)."""
    if value is None:
        return "missing"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    elif isinstance(value, Calendar):
        return f"calendar '{value.name}'"
    elif isinstance(value, timedelta):
        return format_duration(value)
    elif isinstance(value, str) and len(value) > limit:
        text = repr(value[:limit])  # never repr a whole description just to cut it to `limit`
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: Any) -> float | None:
    """``value`` as a number, or None (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not _NUMERIC.fullmatch(text):  # float() also takes "1_000", "infinity", "nan": no ticket means those
            return None
        return float(text)
    return None


def timestamp(value: Any) -> datetime | None:
    """``value`` as an aware datetime (ISO text from raw payloads included), or None."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def equal(value: Any, arg: Any) -> bool:
    """Rule equality: numbers and numeric strings compare numerically; booleans only match booleans."""
    if value is None or arg is None:
        return value is None and arg is None
    if isinstance(value, bool) or isinstance(arg, bool):
        return isinstance(value, bool) and isinstance(arg, bool) and value == arg
    if isinstance(value, str) and isinstance(arg, str):
        return value == arg
    if isinstance(value, list | tuple) and isinstance(arg, list | tuple):
        return len(value) == len(arg) and all(equal(v, a) for v, a in zip(value, arg, strict=True))
    if isinstance(value, list | tuple | dict) or isinstance(arg, list | tuple | dict):
        return False
    a, b = number(value), number(arg)
    return a is not None and b is not None and a == b


def fold(value: Any) -> Any:
    """Case-fold strings (and strings in lists) for ``ignore_case``."""
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, list | tuple):
        return tuple(v.casefold() if isinstance(v, str) else v for v in value)
    return value


def present(value: Any) -> bool:
    """``exists``: not None, not an empty string, not an empty list or mapping."""
    if value is None:
        return False
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


#: the longest ``older_than`` / ``newer_than`` (about 100 years): a ticket is never older, and a longer one is a typo
MAX_RULE_DURATION = timedelta(days=36_500)
MAX_RULE_DURATION_TEXT = "36500d (100 years), the longest older_than / newer_than"


def parse_duration(text: Any, limit: timedelta | None = None, limit_text: str = "") -> timedelta:
    """``90s``, ``2h``, ``1h30m``: a positive duration, at most ``limit`` (said as ``limit_text``). A duration too
    long for any date (``3000000d``) is an error here, not an OverflowError in the caller's date arithmetic."""
    if isinstance(text, bool) or not isinstance(text, str) or not _DURATION_FULL.match(text):
        raise OperatorArgError(f"bad duration {text!r} (use e.g. 90s, 30m, 2h, 1d, 1h30m)")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(text))
    if seconds <= 0:
        raise OperatorArgError(f"duration {text!r} must be longer than zero")
    if limit is not None and seconds > limit.total_seconds():
        raise OperatorArgError(f"duration {text!r} is longer than {limit_text or format_duration(limit)}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # past timedelta's 999,999,999 days (or an infinite float)
        raise OperatorArgError(f"duration {text!r} is too long (use e.g. 90s, 30m, 2h, 1d, 1h30m)") from None


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --------------------------------------------------------------------------------------------- prepare


def _scalar(arg: Any, ctx: PrepareContext) -> Any:
    if isinstance(arg, datetime | date):
        raise OperatorArgError(COMPARE_TIMESTAMPS)
    if isinstance(arg, list):
        if not all(_is_scalar(a) for a in arg):
            raise OperatorArgError("expects a value or a list of plain values")
        return fold(tuple(arg)) if ctx.ignore_case else tuple(arg)
    if not _is_scalar(arg):
        raise OperatorArgError("expects a plain value (text, number, true/false or null)")
    return fold(arg) if ctx.ignore_case else arg


def _is_scalar(arg: Any) -> bool:
    return arg is None or isinstance(arg, str | int | float | bool)


def _value_list(arg: Any, ctx: PrepareContext) -> tuple[Any, ...]:
    if not isinstance(arg, list):
        raise OperatorArgError(f"expects a list, e.g. [{show(arg)}]")
    if not arg:
        raise OperatorArgError("expects a non-empty list")
    if not all(_is_scalar(a) for a in arg):
        raise OperatorArgError("expects a list of plain values (text, numbers, true/false)")
    return tuple(fold(a) if ctx.ignore_case else a for a in arg)


def _one_or_many(arg: Any, ctx: PrepareContext) -> tuple[tuple[Any, ...], bool]:
    values = _value_list(arg, ctx) if isinstance(arg, list) else (_scalar(arg, ctx),)
    return values, ctx.ignore_case


def _contains_arg(arg: Any, ctx: PrepareContext) -> Any:
    if arg is None or isinstance(arg, bool) or not isinstance(arg, str | int | float):
        raise OperatorArgError("expects one text or number (for several, use 'in' on a list field or any:)")
    return fold(arg) if ctx.ignore_case else arg


#: how long one regex search of a rule (or silence) may run on one value before it gives up. Rule regexes run on
#: ticket text anyone who can open a ticket writes; a pattern that backtracks (``(a|aa)+$``, ``(\w+\s?)+$``) takes
#: exponential time on some text, and Python's ``re`` cannot be interrupted: one crafted title stalled every worker
#: of the process. The ``regex`` module (the same syntax, https://github.com/mrabarnett/mrab-regex) checks a
#: timeout while it matches; a search past it counts as a condition that does not hold (:class:`PatternTimeout`).
#: Ordinary patterns take microseconds on the longest descriptions.
REGEX_TIMEOUT_SECONDS = 0.1


class PatternTimeout(Exception):
    """A rule regex gave up on a value after :data:`REGEX_TIMEOUT_SECONDS` (the evaluator says so in the
    condition's explanation; the condition does not hold, for ``regex`` and ``not_regex`` alike)."""


def _regex(arg: Any, ctx: PrepareContext) -> regex.Pattern[str]:
    if not isinstance(arg, str):
        raise OperatorArgError("expects a regular expression in quotes")
    try:  # Python's re says what the syntax is (and how a mistake reads); the regex module runs it
        re.compile(arg, re.IGNORECASE if ctx.ignore_case else 0)
        return regex.compile(arg, regex.IGNORECASE if ctx.ignore_case else 0)
    except (re.error, regex.error) as exc:
        raise OperatorArgError(f"bad regex {arg!r}: {exc}") from None


def found_in(pattern: regex.Pattern[str], text: str) -> bool:
    """``pattern.search(text) is not None``, giving up after :data:`REGEX_TIMEOUT_SECONDS` (raises
    :class:`PatternTimeout`)."""
    try:
        return pattern.search(text, timeout=REGEX_TIMEOUT_SECONDS) is not None
    except TimeoutError:
        raise PatternTimeout(pattern.pattern) from None


def bounded_search(pattern: regex.Pattern[str]) -> Callable[[str], bool]:
    """:func:`found_in` bound to ``pattern``, for a compiled condition."""
    return functools.partial(found_in, pattern)


# A case-insensitive regex on ASCII text can run as a case-sensitive one on the lower-cased text: the same
# verdict, several times faster (``re`` drops its literal-prefix scan under IGNORECASE; measured 39 → 10 µs on
# a 1.2 KB description). Only for patterns where lower-casing the source cannot change its meaning: ASCII,
# no character classes (``[A-Z]``), no escapes but a few lower-case classes and escaped punctuation (``\B``
# would become ``\b``, ``\x41`` stays an upper-case A), no group syntax but these (``(?P<Name>``, ``(?-i:``).
_LEADING_FLAGS = re.compile(r"\A\(\?[aimsux]+\)")
_FOLDABLE = re.compile(r"(?:[^\\\[(]|\\[bdsw]|\\[^0-9A-Za-z]|\((?!\?)|\(\?(?::|=|!|<=|<!))*\Z", re.ASCII)


def folded_search(pattern: regex.Pattern[str]) -> Callable[[str], bool] | None:
    """``pattern.search(text) is not None`` (bounded as :func:`bounded_search`), through the lower-cased
    equivalent on ASCII text, when ``pattern`` ignores case and can be lower-cased safely (see above); ``None``
    when it cannot."""
    source, flags = pattern.pattern, pattern.flags
    leading = _LEADING_FLAGS.match(source)
    body = source[leading.end() :] if leading else source
    if not flags & regex.IGNORECASE or not source.isascii() or not _FOLDABLE.match(body):
        return None
    try:
        lowered = bounded_search(regex.compile(body.lower(), flags & ~regex.IGNORECASE))
    except regex.error:  # pragma: no cover - lower-casing these patterns keeps them valid
        return None
    search = bounded_search(pattern)

    def found(text: str) -> bool:
        if text.isascii():
            return lowered(text.lower())
        return search(text)

    return found


def _bool(arg: Any, ctx: PrepareContext) -> bool:
    if not isinstance(arg, bool):
        raise OperatorArgError("expects true or false")
    return arg


def _order_arg(arg: Any, ctx: PrepareContext) -> float | datetime:
    if isinstance(arg, datetime):
        if arg.tzinfo is None:
            raise OperatorArgError(f"timestamp {arg.isoformat()} needs a time zone, e.g. 2026-01-01T00:00:00Z")
        return arg
    if isinstance(arg, date):
        return datetime(arg.year, arg.month, arg.day, tzinfo=UTC)
    if isinstance(arg, str):
        n = number(arg)
        if n is not None:
            return n
        stamp = timestamp(arg)
        if stamp is not None and ("+" in arg or arg.rstrip().endswith("Z") or arg.count("-") > 2):
            return stamp
        raise OperatorArgError(f"expects a number or a timestamp with a time zone, got {arg!r}")
    n = number(arg)
    if n is None:
        raise OperatorArgError("expects a number or a timestamp")
    return n


def _calendar(arg: Any, ctx: PrepareContext) -> Calendar:
    if not isinstance(arg, str):
        raise OperatorArgError("expects the name of a calendar defined under 'calendars:'")
    if arg not in ctx.calendars:
        hint = did_you_mean(arg, ctx.calendars)
        known = ", ".join(sorted(ctx.calendars)) or "none defined"
        raise OperatorArgError(f"unknown calendar '{arg}'{hint} (calendars: {known})")
    return ctx.calendars[arg]


def _duration(arg: Any, ctx: PrepareContext) -> timedelta:
    return parse_duration(arg, MAX_RULE_DURATION, MAX_RULE_DURATION_TEXT)


def did_you_mean(word: str, candidates: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    import difflib

    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ------------------------------------------------------------------------------------------------ tests


def _in(value: Any, arg: tuple[Any, ...]) -> bool:
    if isinstance(value, list | tuple):
        return any(_in(v, arg) for v in value)
    return any(equal(value, a) for a in arg)


def _equals(value: Any, arg: Any, now: datetime) -> bool:
    return equal(value, arg)


def _contains(value: Any, arg: Any, now: datetime) -> bool:
    if isinstance(value, str):
        return str(arg) in value
    if isinstance(value, list | tuple):
        return any(equal(v, arg) for v in value)
    return False


def _regex_test(value: Any, arg: regex.Pattern[str], now: datetime) -> bool:
    if isinstance(value, str):
        return found_in(arg, value)
    if isinstance(value, list | tuple):
        return any(isinstance(v, str) and found_in(arg, v) for v in value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return found_in(arg, str(value))
    return False


def _order(cmp: Callable[[Any, Any], bool]) -> Callable[[Any, Any, datetime], bool]:
    def test(value: Any, arg: Any, now: datetime) -> bool:
        if isinstance(arg, datetime):
            stamp = timestamp(value)
            return stamp is not None and cmp(stamp, arg)
        n = number(value)
        return n is not None and cmp(n, arg)

    return test


def _change(which: str) -> Callable[[Any, Any, datetime], bool]:
    def test(change: FieldChange | None, arg: tuple[tuple[Any, ...], bool], now: datetime) -> bool:
        if change is None:
            return False
        values, ignore_case = arg
        value = change.new if which == "new" else change.old
        return _in(fold(value) if ignore_case else value, values)

    return test


def _older(value: Any, arg: timedelta, now: datetime) -> bool:
    stamp = timestamp(value)
    return stamp is not None and now - stamp >= arg


def _newer(value: Any, arg: timedelta, now: datetime) -> bool:
    stamp = timestamp(value)
    return stamp is not None and now - stamp < arg


def _during(value: Any, arg: Calendar, now: datetime) -> bool:
    stamp = timestamp(value)
    return stamp is not None and arg.contains(stamp)


def _negate(test: Callable[[Any, Any, datetime], bool]) -> Callable[[Any, Any, datetime], bool]:
    def negated(value: Any, arg: Any, now: datetime) -> bool:
        return not test(value, arg, now)

    return negated


# ----------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class Operator:
    """One operator: how to prepare its argument, test a value, and say why a test failed."""

    name: str
    prepare: Callable[[Any, PrepareContext], Any]
    test: Callable[[Any, Any, datetime], bool]
    fail: str  # format with {v} (the value) and {a} (the argument), e.g. "{v} is not in {a}"
    doc: str
    input: str = "value"  # "value": the field's value; "change": the FieldChange of this update
    case: str | None = None  # "value": fold the value for ignore_case; "flag": prepare handles it
    time: bool = False  # depends on "now": makes a rule a time rule (re-evaluated on a schedule)
    arg_schema: Mapping[str, Any] = field(default_factory=dict)


_SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
_LIST_SCHEMA: dict[str, Any] = {"type": "array", "minItems": 1, "items": _SCALAR_SCHEMA}
_ONE_OR_LIST: dict[str, Any] = {"anyOf": [_SCALAR_SCHEMA, _LIST_SCHEMA]}
_ORDER_SCHEMA: dict[str, Any] = {"type": ["number", "string"]}
_DURATION_SCHEMA: dict[str, Any] = {"type": "string", "pattern": _DURATION_FULL.pattern}


def _build() -> dict[str, Operator]:
    ops = [
        Operator(
            "equals",
            _scalar,
            _equals,
            "{v} is not {a}",
            "the value equals the argument",
            case="value",
            arg_schema=_ONE_OR_LIST,
        ),
        Operator(
            "in",
            _value_list,
            lambda v, a, n: _in(v, a),
            "{v} is not in {a}",
            "the value (or, for a list field, any element) is one of the list",
            case="value",
            arg_schema=_LIST_SCHEMA,
        ),
        Operator(
            "contains",
            _contains_arg,
            _contains,
            "{v} does not contain {a}",
            "text contains the substring; a list field has the element",
            case="value",
            arg_schema={"type": ["string", "number"]},
        ),
        Operator(
            "regex",
            _regex,
            _regex_test,
            "{v} does not match /{a}/",
            "Python regular expression search (anywhere in the text)",
            case="flag",
            arg_schema={"type": "string", "format": "regex"},
        ),
        Operator(
            "exists",
            _bool,
            lambda v, a, n: present(v) == a,
            "{v} (exists: {a})",
            "the field has a value (not null, not empty)",
            arg_schema={"type": "boolean"},
        ),
        Operator(
            "missing",
            _bool,
            lambda v, a, n: (not present(v)) == a,
            "{v} (missing: {a})",
            "the field is null, empty or absent",
            arg_schema={"type": "boolean"},
        ),
        Operator(
            "gt",
            _order_arg,
            _order(lambda x, y: x > y),
            "{v} is not > {a}",
            "number or timestamp greater than",
            arg_schema=_ORDER_SCHEMA,
        ),
        Operator(
            "gte",
            _order_arg,
            _order(lambda x, y: x >= y),
            "{v} is not >= {a}",
            "number or timestamp greater than or equal",
            arg_schema=_ORDER_SCHEMA,
        ),
        Operator(
            "lt",
            _order_arg,
            _order(lambda x, y: x < y),
            "{v} is not < {a}",
            "number or timestamp less than",
            arg_schema=_ORDER_SCHEMA,
        ),
        Operator(
            "lte",
            _order_arg,
            _order(lambda x, y: x <= y),
            "{v} is not <= {a}",
            "number or timestamp less than or equal",
            arg_schema=_ORDER_SCHEMA,
        ),
        Operator(
            "changed",
            _bool,
            lambda c, a, n: (c is not None) == a,
            "{v} (changed: {a})",
            "this update changed the field (true) or left it alone (false)",
            input="change",
            arg_schema={"type": "boolean"},
        ),
        Operator(
            "changed_to",
            _one_or_many,
            _change("new"),
            "{v}, not changed to {a}",
            "this update changed the field to the value (or one of the list)",
            input="change",
            case="flag",
            arg_schema=_ONE_OR_LIST,
        ),
        Operator(
            "changed_from",
            _one_or_many,
            _change("old"),
            "{v}, not changed from {a}",
            "this update changed the field away from the value (or one of the list)",
            input="change",
            case="flag",
            arg_schema=_ONE_OR_LIST,
        ),
        Operator(
            "older_than",
            _duration,
            _older,
            "{v} is not older than {a}",
            "the timestamp is at least this long before now (30m, 2h, 1d)",
            time=True,
            arg_schema=_DURATION_SCHEMA,
        ),
        Operator(
            "newer_than",
            _duration,
            _newer,
            "{v} is not newer than {a}",
            "the timestamp is less than this long before now",
            time=True,
            arg_schema=_DURATION_SCHEMA,
        ),
        Operator(
            "during",
            _calendar,
            _during,
            "{v} is outside {a}",
            "the timestamp falls inside the named calendar",
            time=True,
            arg_schema={"type": "string"},
        ),
    ]
    registry = {op.name: op for op in ops}
    negations = {
        "not_equals": ("equals", "{v} is {a}"),
        "not_in": ("in", "{v} is in {a}"),
        "not_contains": ("contains", "{v} contains {a}"),
        "not_regex": ("regex", "{v} matches /{a}/"),
        "outside": ("during", "{v} is inside {a}"),
    }
    for name, (base_name, fail) in negations.items():
        base = registry[base_name]
        registry[name] = Operator(
            name,
            base.prepare,
            _negate(base.test),
            fail,
            f"not {base_name}: {base.doc}",
            base.input,
            base.case,
            base.time,
            base.arg_schema,
        )
    return dict(sorted(registry.items()))


#: operator name -> :class:`Operator`
REGISTRY: dict[str, Operator] = _build()

#: options that modify the operators of one field condition (not operators themselves)
MODIFIERS = frozenset({"ignore_case"})


def failure_explainer(field_name: str, op: Operator, raw_arg: Any, arg_value: Any = None) -> Callable[[Any], str]:
    """A function giving ``priority: 'High' is not in ['Highest', 'P1']`` for a failing value (the
    condition's side is rendered once, when the rule compiles). ``arg_value`` is the prepared argument: for
    ``during``/``outside`` its :class:`Calendar` shows the time in the calendar's zone beside UTC."""
    if isinstance(arg_value, Calendar):
        return _calendar_explainer(field_name, op, arg_value)
    arg = f"calendar '{raw_arg}'" if op.name in ("during", "outside") else show(raw_arg)
    if op.name in ("regex", "not_regex", "older_than", "newer_than"):
        arg = str(raw_arg)
    elif isinstance(raw_arg, bool):
        arg = "true" if raw_arg else "false"
    prefix, template = f"{field_name}: ", op.fail

    if op.input == "change":

        def explain_change(value: Any) -> str:
            shown = "unchanged in this update" if value is None else f"changed {show(value.old)} → {show(value.new)}"
            return prefix + template.format(v=shown, a=arg)

        return explain_change
    # text values (titles, descriptions: each one new) take a fast path: the fixed parts are formatted once
    before, found, after = template.partition("{v}")
    head, tail = prefix + before.format(a=arg), after.format(a=arg)

    def explain(value: Any) -> str:
        if found and value.__class__ is str:
            text = repr(value) if len(value) <= _SHOW_LIMIT else repr(value[:_SHOW_LIMIT])
            if len(text) > _SHOW_LIMIT:
                text = text[: _SHOW_LIMIT - 1] + "…"
            return head + text + tail
        return prefix + template.format(v=show(value), a=arg)

    return explain


def _calendar_explainer(field_name: str, op: Operator, calendar: Calendar) -> Callable[[Any], str]:
    """``now: 2026-12-05T15:00:00+00:00 (Sat 2026-12-05 10:00 America/New_York) is outside calendar 'x'``."""
    prefix, arg = f"{field_name}: ", f"calendar '{calendar.name}'"

    def explain(value: Any) -> str:
        stamp = timestamp(value)
        shown = show(value) if stamp is None else f"{show(value)} ({calendar.local_time(stamp)})"
        return prefix + op.fail.format(v=shown, a=arg)

    return explain
