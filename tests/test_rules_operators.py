"""Every operator, through a real rule file and RuleSet.evaluate, with its edge cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from kernel.model import FieldChange, StatusCategory, Ticket
from rules import EvalContext, load_rules
from rules.operators import REGISTRY, failure_explainer

NOW = datetime(2026, 11, 30, 7, 30, tzinfo=UTC)  # a Monday, 08:30 in Berlin
CALENDARS = {
    "support": {
        "timezone": "Europe/Berlin",
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "hours": "08:00-18:00",
        "holidays": ["2026-12-24"],
    },
    "split": {"timezone": "America/New_York", "days": ["sat"], "hours": ["00:00-02:00", "22:00-24:00"]},
}


def ticket(source: str = "jira", **kw: Any) -> Ticket:
    base: dict[str, Any] = {
        "source": source,
        "id": "1",
        "key": "OPS-1",
        "title": "Checkout down",
        "status": "Open",
        "status_category": StatusCategory.NEW,
        "updated": NOW - timedelta(minutes=1),
    }
    base.update(kw)
    return Ticket(**base)


def evaluate(
    tmp_path: Path, when: dict[str, Any], t: Ticket, changes: tuple[FieldChange, ...] = (), now: datetime = NOW
) -> Any:
    doc = {
        "version": 1,
        "calendars": CALENDARS,
        "rules": [
            {"name": "r", "when": when, "trigger": {"routing_key": "k" * 32, "severity": "critical", "summary": "s"}}
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    (result,) = load_rules(path, env={}).evaluate(EvalContext(t, None, changes, now))
    return result


CH_PRIO = (FieldChange("priority", "P2", "P1"),)
BERLIN_WINTER = timezone(timedelta(hours=1))

# (id, when, ticket, changes, now, expected matched)
CASES: list[tuple[str, dict[str, Any], Ticket, tuple[FieldChange, ...], datetime, bool]] = [
    # equals (scalar shorthand)
    ("equals", {"priority": "P1"}, ticket(priority="P1"), (), NOW, True),
    ("equals-case-sensitive", {"priority": "P1"}, ticket(priority="p1"), (), NOW, False),
    ("equals-missing", {"priority": "P1"}, ticket(), (), NOW, False),
    ("equals-ignore-case", {"priority": {"equals": "p1", "ignore_case": True}}, ticket(priority="P1"), (), NOW, True),
    ("equals-number-vs-text", {"impact": 1}, ticket("servicenow", attributes={"impact": "1"}), (), NOW, True),
    ("equals-number-vs-number", {"impact": 1}, ticket("servicenow", attributes={"impact": 1.0}), (), NOW, True),
    ("equals-number-vs-junk", {"impact": 1}, ticket("servicenow", attributes={"impact": "one"}), (), NOW, False),
    ("equals-bool", {"custom.Flag": True}, ticket(custom_fields={"Flag": True}), (), NOW, True),
    ("equals-bool-not-int", {"custom.Flag": True}, ticket(custom_fields={"Flag": 1}), (), NOW, False),
    ("equals-bool-not-text", {"custom.Flag": True}, ticket(custom_fields={"Flag": "true"}), (), NOW, False),
    ("equals-null", {"assignee": None}, ticket(), (), NOW, True),
    ("equals-null-set", {"assignee": None}, ticket(assignee="al"), (), NOW, False),
    ("equals-list", {"labels": {"equals": ["a", "b"]}}, ticket(labels=("a", "b")), (), NOW, True),
    ("equals-list-order", {"labels": {"equals": ["a", "b"]}}, ticket(labels=("b", "a")), (), NOW, False),
    ("equals-dict-value", {"custom.Obj": "x"}, ticket(custom_fields={"Obj": {"value": "x"}}), (), NOW, False),
    ("equals-status-category", {"status_category": "new"}, ticket(), (), NOW, True),
    ("not_equals", {"priority": {"not_equals": "P1"}}, ticket(priority="P2"), (), NOW, True),
    ("not_equals-same", {"priority": {"not_equals": "P1"}}, ticket(priority="P1"), (), NOW, False),
    ("not_equals-missing", {"priority": {"not_equals": "P1"}}, ticket(), (), NOW, True),
    # in (list shorthand and explicit)
    ("in", {"priority": ["P1", "P2"]}, ticket(priority="P2"), (), NOW, True),
    ("in-no", {"priority": ["P1", "P2"]}, ticket(priority="P3"), (), NOW, False),
    ("in-missing", {"priority": {"in": ["P1"]}}, ticket(), (), NOW, False),
    ("in-list-field-any", {"labels": {"in": ["x", "y"]}}, ticket(labels=("a", "y")), (), NOW, True),
    ("in-empty-list-field", {"labels": {"in": ["x"]}}, ticket(), (), NOW, False),
    ("in-numbers", {"custom.Tier": {"in": [1, 2]}}, ticket(custom_fields={"Tier": "2"}), (), NOW, True),
    (
        "in-ignore-case",
        {"priority": {"in": ["highest"], "ignore_case": True}},
        ticket(priority="HIGHEST"),
        (),
        NOW,
        True,
    ),
    ("not_in", {"priority": {"not_in": ["P1"]}}, ticket(priority="P3"), (), NOW, True),
    ("not_in-missing", {"priority": {"not_in": ["P1"]}}, ticket(), (), NOW, True),
    ("not_in-yes", {"priority": {"not_in": ["P1"]}}, ticket(priority="P1"), (), NOW, False),
    # contains
    ("contains-text", {"title": {"contains": "down"}}, ticket(), (), NOW, True),
    ("contains-case", {"title": {"contains": "DOWN"}}, ticket(), (), NOW, False),
    ("contains-ignore-case", {"title": {"contains": "DOWN", "ignore_case": True}}, ticket(), (), NOW, True),
    ("contains-list", {"labels": {"contains": "vip"}}, ticket(labels=("vip", "x")), (), NOW, True),
    ("contains-list-no-substring", {"labels": {"contains": "vi"}}, ticket(labels=("vip",)), (), NOW, False),
    ("contains-missing", {"description": {"contains": "x"}}, ticket(description=""), (), NOW, False),
    ("contains-null", {"assignee": {"contains": "x"}}, ticket(), (), NOW, False),
    ("contains-number-value", {"custom.Code": {"contains": 2}}, ticket(custom_fields={"Code": 123}), (), NOW, False),
    ("not_contains", {"title": {"not_contains": "test"}}, ticket(), (), NOW, True),
    ("not_contains-missing", {"assignee": {"not_contains": "x"}}, ticket(), (), NOW, True),
    ("not_contains-yes", {"labels": {"not_contains": "vip"}}, ticket(labels=("vip",)), (), NOW, False),
    # regex
    ("regex", {"title": {"regex": "(?i)outage|down"}}, ticket(), (), NOW, True),
    ("regex-search-not-match", {"title": {"regex": "down$"}}, ticket(), (), NOW, True),
    ("regex-no", {"title": {"regex": "^down"}}, ticket(), (), NOW, False),
    ("regex-ignore-case", {"title": {"regex": "CHECKOUT", "ignore_case": True}}, ticket(), (), NOW, True),
    ("regex-list", {"labels": {"regex": "^cust"}}, ticket(labels=("a", "customer-impact")), (), NOW, True),
    ("regex-number", {"custom.Code": {"regex": "^50"}}, ticket(custom_fields={"Code": 502}), (), NOW, True),
    ("regex-bool-never", {"custom.Flag": {"regex": "True"}}, ticket(custom_fields={"Flag": True}), (), NOW, False),
    ("regex-missing", {"assignee": {"regex": ".*"}}, ticket(), (), NOW, False),
    ("not_regex", {"title": {"not_regex": "test"}}, ticket(), (), NOW, True),
    ("not_regex-missing", {"assignee": {"not_regex": "x"}}, ticket(), (), NOW, True),
    # exists / missing
    ("exists", {"assignee": {"exists": True}}, ticket(assignee="al"), (), NOW, True),
    ("exists-empty-text", {"assignee": {"exists": True}}, ticket(assignee=""), (), NOW, False),
    ("exists-null", {"assignee": {"exists": True}}, ticket(), (), NOW, False),
    ("exists-empty-list", {"labels": {"exists": True}}, ticket(), (), NOW, False),
    ("exists-false", {"assignee": {"exists": False}}, ticket(), (), NOW, True),
    ("exists-zero-is-a-value", {"custom.N": {"exists": True}}, ticket(custom_fields={"N": 0}), (), NOW, True),
    ("missing", {"assignee": {"missing": True}}, ticket(), (), NOW, True),
    ("missing-raw-path", {"fields.nope.deeper": {"missing": True}}, ticket(raw={"fields": {}}), (), NOW, True),
    ("missing-set", {"assignee": {"missing": True}}, ticket(assignee="al"), (), NOW, False),
    ("missing-false", {"assignee": {"missing": False}}, ticket(assignee="al"), (), NOW, True),
    # ordering: numbers
    ("gt", {"impact": {"gt": 1}}, ticket("servicenow", attributes={"impact": 2}), (), NOW, True),
    ("gt-equal", {"impact": {"gt": 2}}, ticket("servicenow", attributes={"impact": 2}), (), NOW, False),
    ("gt-numeric-text", {"impact": {"gt": 2}}, ticket("servicenow", attributes={"impact": "3"}), (), NOW, True),
    ("gt-junk-text", {"impact": {"gt": 1}}, ticket("servicenow", attributes={"impact": "high"}), (), NOW, False),
    ("gt-bool", {"custom.N": {"gt": 0}}, ticket(custom_fields={"N": True}), (), NOW, False),
    ("gt-missing", {"impact": {"gt": 0}}, ticket("servicenow"), (), NOW, False),
    ("gte", {"impact": {"gte": 2}}, ticket("servicenow", attributes={"impact": 2}), (), NOW, True),
    ("lt", {"priority_number": {"lt": 3}}, ticket("servicenow", attributes={"priority_number": 2}), (), NOW, True),
    ("lte", {"priority_number": {"lte": 2}}, ticket("servicenow", attributes={"priority_number": 3}), (), NOW, False),
    # ordering: timestamps and time zones
    (
        "gt-time",
        {"created": {"gt": "2026-01-01T00:00:00Z"}},
        ticket(created=datetime(2026, 2, 1, tzinfo=UTC)),
        (),
        NOW,
        True,
    ),
    (
        "lt-time-other-zone",
        {"created": {"lt": "2026-01-01T00:00:00Z"}},
        ticket(created=datetime(2026, 1, 1, 0, 30, tzinfo=BERLIN_WINTER)),
        (),
        NOW,
        True,
    ),
    (
        "gte-time-raw-iso",
        {"fields.created": {"gte": "2026-01-01T00:00:00+00:00"}},
        ticket(raw={"fields": {"created": "2026-01-01T01:00:00.000+0100"}}),
        (),
        NOW,
        True,
    ),
    (
        "gt-time-raw-junk",
        {"fields.created": {"gt": "2026-01-01T00:00:00Z"}},
        ticket(raw={"fields": {"created": "yesterday"}}),
        (),
        NOW,
        False,
    ),
    ("lte-time-missing", {"created": {"lte": "2026-01-01T00:00:00Z"}}, ticket(), (), NOW, False),
    # changed / changed_to / changed_from
    ("changed", {"priority": {"changed": True}}, ticket(priority="P1"), CH_PRIO, NOW, True),
    ("changed-other-field", {"status": {"changed": True}}, ticket(priority="P1"), CH_PRIO, NOW, False),
    ("changed-false", {"status": {"changed": False}}, ticket(), CH_PRIO, NOW, True),
    ("changed_to", {"priority": {"changed_to": "P1"}}, ticket(priority="P1"), CH_PRIO, NOW, True),
    ("changed_to-list", {"priority": {"changed_to": ["Highest", "P1"]}}, ticket(priority="P1"), CH_PRIO, NOW, True),
    ("changed_to-other", {"priority": {"changed_to": "P2"}}, ticket(priority="P1"), CH_PRIO, NOW, False),
    ("changed_to-no-change", {"priority": {"changed_to": "P1"}}, ticket(priority="P1"), (), NOW, False),
    ("changed_to-ignore-case", {"priority": {"changed_to": "p1", "ignore_case": True}}, ticket(), CH_PRIO, NOW, True),
    (
        "changed_to-null",
        {"assignee": {"changed_to": None}},
        ticket(),
        (FieldChange("assignee", "al", None),),
        NOW,
        True,
    ),
    ("changed_from", {"priority": {"changed_from": "P2"}}, ticket(), CH_PRIO, NOW, True),
    ("changed_from-no", {"priority": {"changed_from": "P3"}}, ticket(), CH_PRIO, NOW, False),
    (
        "changed_to-custom",
        {"custom.Tier": {"changed_to": "Gold"}},
        ticket(),
        (FieldChange("custom.Tier", None, "Gold"),),
        NOW,
        True,
    ),
    # older_than / newer_than
    ("older_than", {"created": {"older_than": "30m"}}, ticket(created=NOW - timedelta(minutes=31)), (), NOW, True),
    (
        "older_than-exact",
        {"created": {"older_than": "30m"}},
        ticket(created=NOW - timedelta(minutes=30)),
        (),
        NOW,
        True,
    ),
    (
        "older_than-young",
        {"created": {"older_than": "30m"}},
        ticket(created=NOW - timedelta(minutes=29)),
        (),
        NOW,
        False,
    ),
    ("older_than-missing", {"created": {"older_than": "30m"}}, ticket(), (), NOW, False),
    (
        "older_than-compound",
        {"created": {"older_than": "1h30m"}},
        ticket(created=NOW - timedelta(minutes=91)),
        (),
        NOW,
        True,
    ),
    (
        "older_than-other-zone",
        {"created": {"older_than": "2h"}},
        ticket(created=(NOW - timedelta(hours=3)).astimezone(timezone(timedelta(hours=-5)))),
        (),
        NOW,
        True,
    ),
    ("newer_than", {"updated": {"newer_than": "90s"}}, ticket(), (), NOW, True),
    ("newer_than-old", {"created": {"newer_than": "1d"}}, ticket(created=NOW - timedelta(days=2)), (), NOW, False),
    ("newer_than-missing", {"created": {"newer_than": "1d"}}, ticket(), (), NOW, False),
    # during / outside (now, and a field), time zones, DST, holidays, several ranges
    ("during-now", {"during": "support"}, ticket(), (), NOW, True),
    ("during-now-evening", {"during": "support"}, ticket(), (), NOW.replace(hour=17, minute=30), False),
    ("during-now-saturday", {"during": "support"}, ticket(), (), NOW - timedelta(days=2), False),
    ("during-holiday", {"during": "support"}, ticket(), (), datetime(2026, 12, 24, 10, tzinfo=UTC), False),
    ("during-summer-dst", {"during": "support"}, ticket(), (), datetime(2026, 7, 6, 6, 30, tzinfo=UTC), True),
    ("during-winter-same-utc", {"during": "support"}, ticket(), (), datetime(2026, 12, 7, 6, 30, tzinfo=UTC), False),
    ("during-second-range", {"during": "split"}, ticket(), (), datetime(2026, 12, 6, 4, 0, tzinfo=UTC), True),
    ("during-gap-between-ranges", {"during": "split"}, ticket(), (), datetime(2026, 12, 5, 20, tzinfo=UTC), False),
    ("during-field", {"created": {"during": "support"}}, ticket(created=NOW), (), NOW + timedelta(days=5), True),
    ("during-field-missing", {"created": {"during": "support"}}, ticket(), (), NOW, False),
    ("outside-now", {"outside": "support"}, ticket(), (), NOW.replace(hour=20), True),
    ("outside-now-in-hours", {"outside": "support"}, ticket(), (), NOW, False),
    ("outside-field", {"created": {"outside": "support"}}, ticket(created=NOW.replace(hour=3)), (), NOW, True),
    # groups
    ("any", {"any": [{"priority": "P1"}, {"labels": {"contains": "vip"}}]}, ticket(labels=("vip",)), (), NOW, True),
    ("any-none", {"any": [{"priority": "P1"}, {"labels": {"contains": "vip"}}]}, ticket(), (), NOW, False),
    ("all", {"all": [{"priority": "P1"}, {"title": {"contains": "down"}}]}, ticket(priority="P1"), (), NOW, True),
    ("not", {"not": {"priority": "P1"}}, ticket(priority="P2"), (), NOW, True),
    ("not-holds", {"not": {"priority": "P1"}}, ticket(priority="P1"), (), NOW, False),
    (
        "two-operators-one-field",
        {"impact": {"gte": 1, "lte": 2}},
        ticket("servicenow", attributes={"impact": 3}),
        (),
        NOW,
        False,
    ),
]


@pytest.mark.parametrize(("when", "t", "changes", "now", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_operator(
    tmp_path: Path, when: dict[str, Any], t: Ticket, changes: tuple[FieldChange, ...], now: datetime, expected: bool
) -> None:
    result = evaluate(tmp_path, when, t, changes, now)
    assert result.matched is expected, result.explanation


def test_every_operator_is_covered_by_the_table() -> None:
    used: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                used.add(key)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for case in CASES:
        walk(case[1])
    assert set(REGISTRY) <= used | {"equals", "in"}  # scalar/list shorthands are equals/in
    assert {"equals", "in", "not_equals", "not_in"} <= used


@pytest.mark.parametrize(
    ("when", "t", "explanation"),
    [
        ({"priority": ["Highest", "P1"]}, ticket(priority="High"), "priority: 'High' is not in ['Highest', 'P1']"),
        ({"priority": "P1"}, ticket(), "priority: missing is not 'P1'"),
        ({"title": {"regex": "^x"}}, ticket(), "title: 'Checkout down' does not match /^x/"),
        ({"priority": {"changed_to": "P1"}}, ticket(), "priority: unchanged in this update, not changed to 'P1'"),
        (
            {"created": {"older_than": "30m"}},
            ticket(created=datetime(2026, 11, 30, 7, 10, tzinfo=UTC)),
            "created: 2026-11-30T07:10:00+00:00 is not older than 30m",
        ),
        ({"during": "support"}, ticket(), None),
        (
            {"outside": "support"},
            ticket(),
            "now: 2026-11-30T07:30:00+00:00 (Mon 2026-11-30 08:30 Europe/Berlin) is inside calendar 'support'",
        ),
        ({"not": {"priority": "P1"}}, ticket(priority="P1"), "not: all of (priority equals 'P1') holds"),
        (
            {"any": [{"priority": "P1"}, {"assignee": {"exists": True}}]},
            ticket(),
            "none of any: held: priority: missing is not 'P1' | assignee: missing (exists: true)",
        ),
    ],
)
def test_explanations_name_the_failing_condition_and_actual_value(
    tmp_path: Path, when: dict[str, Any], t: Ticket, explanation: str | None
) -> None:
    result = evaluate(tmp_path, when, t)
    if explanation is None:
        assert result.matched
    else:
        assert not result.matched
        assert result.explanation == (explanation,)


class _Text(str):
    """A str subclass: explanations take their general path for it, and the fast path for plain str."""


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if op.input != "change"))
def test_explanations_of_text_values_read_the_same_on_the_fast_path(name: str) -> None:
    op = REGISTRY[name]
    arg: Any = {"regex": "^x", "not_regex": "^x", "older_than": "30m", "newer_than": "30m", "exists": True}.get(
        name, ["a", "b"] if name in ("in", "not_in") else "Gold"
    )
    explain = failure_explainer("title", op, arg)
    for text in ("short", 'it\'s "quoted"', "x" * 300, "", "{v} {a}"):
        assert explain(text) == explain(_Text(text))


# -- case-insensitive regexes run on lower-cased ASCII text (rules.operators.folded_search) -------------------

import re  # noqa: E402

import regex  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rules.operators import folded_search  # noqa: E402

FOLDABLE = [
    r"(?i)outage|down",
    r"(?i)\bdatabase\b",
    r"(?i)sev ?1|P1\b",
    r"(?i)^Error rate \d+(\.\d+)?%$",
    r"(?i)(?:EU|US)-(West|East)\s+DOWN",
    r"(?im)^TLS.*expired$",
    r"(?i)caf(?=E)|x{2,3}Y",
    r"(?i)(?<!NO )PAGE\.",
    r"(?i)kafka lag",
]


@pytest.mark.parametrize("pattern", FOLDABLE)
@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("abcdefgklnoprstuwxyEDOWNPSTLUAGC 12.-%\n\u017f\u212aÉé"), max_size=40))
def test_a_folded_case_insensitive_regex_gives_the_verdict_of_re_itself(pattern: str, text: str) -> None:
    found = folded_search(regex.compile(pattern))
    assert found is not None, "these patterns are safe to lower-case"
    # ASCII text takes the lower-cased path, anything else the original pattern: the verdict of Python's re,
    # whose syntax and case folding rule authors know (the rules run on the regex module, for its time limit)
    assert found(text) == (re.compile(pattern).search(text) is not None)


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        (r"(?i)\bdatabase\b", "the DATABA\u017fE is down"),  # long s: re's case folding matches it to s
        (r"(?i)kafka lag", "\u212aAFKA LAG"),  # Kelvin sign: matches k under re.IGNORECASE
        (r"(?i)outage|down", "OUTAGE"),
        (r"(?i)outage|down", "slow"),
    ],
)
def test_text_beyond_ascii_is_searched_by_the_original_pattern(pattern: str, text: str) -> None:
    found = folded_search(regex.compile(pattern))
    assert found is not None
    assert found(text) == (re.compile(pattern).search(text) is not None)


@pytest.mark.parametrize(
    "pattern",
    [
        r"outage",  # case-sensitive: nothing to fold
        r"(?i)[A-Z]x",  # a class: lower-cased it would mean something else
        r"(?i)\Bfoo",  # \B lower-cased is \b
        r"(?i)\x41",  # an escaped upper-case A stays upper-case
        r"(?i)(?-i:ABC)x",  # case-sensitive inside
        r"(?i)(?P<Name>a)",  # group names are case-sensitive
        r"(?i)straße",  # not ASCII
        r"(?i)(a)\1",  # a back-reference
    ],
)
def test_patterns_that_lower_casing_would_change_keep_re_as_it_is(pattern: str) -> None:
    assert folded_search(regex.compile(pattern)) is None


def test_a_case_insensitive_rule_matches_every_casing_and_explains_a_miss_with_the_title(tmp_path: Path) -> None:
    when = {"title": {"regex": "(?i)outage|down"}}
    for title in ("OUTAGE in eu", "Checkout Down", "partial oUtAgE"):
        assert evaluate(tmp_path, when, ticket(title=title)).matched, title
    miss = evaluate(tmp_path, when, ticket(title="slow Checkout"))
    assert not miss.matched
    assert "'slow Checkout'" in miss.explanation[0]


def test_an_unquoted_yaml_timestamp_is_explained_as_written(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: r\n    when: {created: {gt: 2026-11-30T06:59:00Z}}\n"
        "    trigger: {routing_key: k, severity: info, summary: s}\n"
    )
    (result,) = load_rules(path, env={}).evaluate(EvalContext(ticket(created=NOW), None, (), NOW))
    assert result.matched
    assert result.explanation == ("holds: created gt 2026-11-30T06:59:00+00:00",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        (" 2.5 ", 2.5),
        ("-3", -3.0),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("1_000", None),
        ("infinity", None),
        ("nan", None),
        ("0x10", None),
        ("1,5", None),
        ("\u0663", None),
        ("", None),
    ],
)
def test_numeric_text_is_what_people_write_as_a_number(text: str, expected: float | None) -> None:
    """`impact: 1` matches "1"; but "1_000", "infinity" or an Arabic-Indic digit are text, not numbers
    (Python's float() takes them all, and "infinity" would be greater than every threshold)."""
    from rules.operators import number

    assert number(text) == expected


# -- a regex that backtracks gives up on hostile text (rules.operators.REGEX_TIMEOUT_SECONDS) ---------------------

#: patterns Python's re takes exponential time on, with a crafted title for each (seconds to hours in re), and an
#: ordinary title each matches
BACKTRACKING = {
    r"(a|aa)+$": ("a" * 64 + "!", "aaaa"),
    r"^(\w+\s?)+$": ("word " * 12 + "w" * 40 + "!", "two words"),
    r"(x+x+)+y": ("x" * 64, "xxy"),
    r"^(([a-z])+.)+[A-Z]([a-z])+$": ("a" * 64 + "!", "ab Cd"),
}


@pytest.mark.parametrize("pattern", list(BACKTRACKING))
def test_a_regex_that_backtracks_decides_a_crafted_title_within_its_time_limit(tmp_path: Path, pattern: str) -> None:
    """Ticket text is written by whoever opens a ticket. A rule regex that backtracks exponentially in Python's re
    (one crafted title stalled every worker of the process) is decided within REGEX_TIMEOUT_SECONDS, for regex,
    not_regex and not: alike, and none makes its rule hold on the crafted title; ordinary titles still match."""
    import time

    from rules.operators import REGEX_TIMEOUT_SECONDS

    hostile, ordinary = BACKTRACKING[pattern]
    for when in ({"title": {"regex": pattern}}, {"not": {"title": {"regex": pattern}}}):
        started = time.monotonic()
        verdict = evaluate(tmp_path, when, ticket(title=hostile))
        took = time.monotonic() - started
        assert took < 20 * REGEX_TIMEOUT_SECONDS + 1, f"{when}: {took:.2f} s"
        if when.get("not"):  # the regex module decides most such patterns at once: then not: holds, as it should
            gave_up = any(
                "gave up" in line
                for line in evaluate(tmp_path, {"title": {"regex": pattern}}, ticket(title=hostile)).explanation
            )
            assert verdict.matched != gave_up, "not: holds when the regex was decided, and fails when it gave up"
        else:
            assert not verdict.matched
    assert evaluate(tmp_path, {"title": {"regex": pattern}}, ticket(title=ordinary)).matched


def test_a_search_that_gives_up_makes_no_rule_hold_and_says_why(tmp_path: Path) -> None:
    """(a|aa)+$ on 64 a's and a '!' backtracks in the regex module too: the search gives up after
    REGEX_TIMEOUT_SECONDS and the condition does not hold, whether it is regex, not_regex or under not: (a pattern
    that cannot be decided never pages), and the explanation names the pattern and the limit."""
    from rules.operators import REGEX_TIMEOUT_SECONDS

    pattern, (hostile, _) = r"(a|aa)+$", BACKTRACKING[r"(a|aa)+$"]
    for when in (
        {"title": {"regex": pattern}},
        {"title": {"not_regex": pattern}},
        {"not": {"title": {"regex": pattern}}},
    ):
        verdict = evaluate(tmp_path, when, ticket(title=hostile))
        assert not verdict.matched, when
        assert any(
            f"title: /{pattern}/ gave up after {REGEX_TIMEOUT_SECONDS * 1000:g} ms" in line
            for line in verdict.explanation
        ), verdict.explanation
