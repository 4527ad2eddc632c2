"""RuleSet.evaluate: first match wins, continue, sources, ack/resolve flags, rendering, digest, purity."""

from __future__ import annotations

import logging
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import jsonutil
from kernel.model import FieldChange, StatusCategory, Ticket
from rules import EvalContext, RuleFileErrors, RuleSet, load_rules

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
KEY = "0123456789abcdef0123456789abcdef"

RULES = textwrap.dedent(
    """\
    version: 1
    rules:
      - name: jira-p1
        description: P1 pages platform
        source: jira
        when: {priority: [Highest, P1]}
        trigger:
          routing_key: ${PD_KEY}
          severity: {from: priority, map: {Highest: critical, P1: error}, default: warning}
          summary: "[{{ ticket.key }}] {{ ticket.title | upper }}"
          custom_details:
            reporter: "{{ ticket.requester }}"
            tier: "{{ ticket.custom.Tier }}"
            rule: "{{ rule.name }}: {{ rule.description }}"
            nested: {labels: "{{ ticket.labels | join(',') }}", count: 3, as_list: "{{ ticket.labels }}"}
          links: [{href: "{{ ticket.url }}", text: Open ticket}]
          images: [{src: "https://example.com/x.png", alt: graph}]
          component: "{{ ticket.attributes.project }}"
        acknowledge_when: {status_category: in_progress}
      - name: any-p1
        when: {priority: P1}
        trigger: {routing_key: "${PD_KEY}", severity: critical, summary: "any {{ ticket.key }}"}
        on_unmatch: resolve
      - name: keep-going
        source: jira
        when: {title: {contains: down}}
        continue: true
        trigger: {routing_key: other-key-1234, severity: info, summary: "fyi", source: "custom-{{ ticket.source }}"}
        resolve_when: {status: Closed}
      - name: after
        source: jira
        when: {title: {contains: down}}
        trigger: {routing_key: "${PD_KEY}", severity: warning, summary: "after"}
    """
)


def ticket(**kw: Any) -> Ticket:
    base: dict[str, Any] = {
        "source": "jira",
        "id": "10001",
        "key": "OPS-12",
        "title": "Checkout down",
        "status": "Open",
        "status_category": StatusCategory.NEW,
        "updated": NOW - timedelta(minutes=1),
        "url": "https://j/OPS-12",
        "priority": "P1",
        "labels": ("a", "b"),
        "custom_fields": {"Tier": "Gold"},
        "attributes": {"project": "OPS"},
    }
    base.update(kw)
    return Ticket(**base)


@pytest.fixture
def ruleset(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_rules(path, env={"PD_KEY": KEY})


def run(ruleset: RuleSet, t: Ticket) -> dict[str, Any]:
    return {r.rule: r for r in ruleset.evaluate(EvalContext(t, None, (), NOW))}


def test_first_match_wins_and_continue_lets_later_rules_match(ruleset: RuleSet) -> None:
    results = ruleset.evaluate(EvalContext(ticket(), None, (), NOW))
    assert [r.rule for r in results] == ["jira-p1", "any-p1", "keep-going", "after"]
    assert [r.matched for r in results] == [True, False, False, False]
    assert results[1].explanation == ("shadowed: rule 'jira-p1' matched first (continue: false)",)
    # without the first rule matching, 'keep-going' (continue: true) and then 'after' both match
    by = run(ruleset, ticket(priority="P3"))
    assert by["keep-going"].matched and by["after"].matched
    assert not by["jira-p1"].matched and by["jira-p1"].explanation == ("priority: 'P3' is not in ['Highest', 'P1']",)


def test_rule_for_another_source_does_not_apply(ruleset: RuleSet) -> None:
    by = run(ruleset, ticket(source="zendesk", attributes={}))
    assert not by["jira-p1"].applies and by["jira-p1"].explanation == ("source is zendesk, rule wants jira",)
    assert by["any-p1"].applies and by["any-p1"].matched


def test_trigger_is_rendered_for_matched_rules_only(ruleset: RuleSet) -> None:
    by = run(ruleset, ticket(priority="Highest", requester=None))
    trig = by["jira-p1"].trigger
    assert trig is not None
    assert trig.routing_key == KEY
    assert trig.severity == "critical"
    assert trig.summary == "[OPS-12] CHECKOUT DOWN"
    assert trig.source == "jira:OPS-12"
    assert trig.component == "OPS"
    assert dict(trig.custom_details) == {
        "reporter": "",
        "tier": "Gold",
        "rule": "jira-p1: P1 pages platform",
        "nested": {"labels": "a,b", "count": 3, "as_list": "a, b"},  # a list reads as a list, not ['a', 'b']
    }
    assert trig.links == ({"href": "https://j/OPS-12", "text": "Open ticket"},)
    assert trig.images == ({"src": "https://example.com/x.png", "alt": "graph"},)
    assert all(r.trigger is None for r in by.values() if not r.matched)
    assert by["jira-p1"].explanation == ("holds: priority in ['Highest', 'P1']",)


def test_severity_map_default_and_custom_source(ruleset: RuleSet) -> None:
    by = run(ruleset, ticket(priority="P1"))
    assert by["jira-p1"].trigger.severity == "error"
    by = run(ruleset, ticket(priority="P4", title="all down"))
    assert by["keep-going"].trigger.source == "custom-jira"


def test_template_runtime_error_falls_back_and_is_explained(ruleset: RuleSet) -> None:
    by = run(ruleset, ticket(custom_fields={}))  # ticket.custom.Tier is undefined for this ticket
    result = by["jira-p1"]
    assert result.matched and result.trigger is not None
    assert result.trigger.custom_details["tier"] == "<template error>"
    assert any("template error in custom_details.tier: UndefinedError" in e for e in result.problems)


def test_the_stored_verdict_names_its_template_problems_once_the_trigger_is_rendered(ruleset: RuleSet) -> None:
    """The decision log's form of a verdict is built once per result; the template problems found by a later
    render still reach it."""
    by = run(ruleset, ticket(custom_fields={}))
    result = by["jira-p1"]
    before = result.to_json()
    assert before == {"rule": "jira-p1", "why": list(result.explanation), "matched": True}
    assert result.trigger is not None  # the engine renders the trigger of an incident it opens
    after = result.to_json()
    assert any("UndefinedError" in problem for problem in after["template_problems"])
    assert "template_problems" not in before, "the shared form is not changed under an earlier reader"
    quiet = run(ruleset, ticket(priority="Low"))["jira-p1"].to_json()
    assert set(quiet) == {"rule", "why"} and quiet["why"]


def test_the_encoded_verdicts_are_each_verdicts_stored_form_and_follow_a_later_render(ruleset: RuleSet) -> None:
    """``RuleSet.encode`` (what the engine writes into every decision) encodes each verdict once and splices
    them: it must read back as their ``to_json``, in order, also when a trigger rendered after a first encoding
    found template problems, and for the shared rejections a second ticket reuses."""
    results = ruleset.evaluate(EvalContext(ticket(custom_fields={}), None, (), NOW))
    first = jsonutil.loads(ruleset.encode(results))
    assert first == [r.to_json() for r in results]
    assert "template_problems" not in first[0]
    assert results[0].trigger is not None  # the engine renders the trigger of an incident it opens
    again = jsonutil.loads(ruleset.encode(results))
    assert again == [r.to_json() for r in results]
    assert any("UndefinedError" in problem for problem in again[0]["template_problems"])
    other = ruleset.evaluate(EvalContext(ticket(priority="Low", key="OPS-13"), None, (), NOW))
    assert jsonutil.loads(ruleset.encode(other)) == [r.to_json() for r in other]
    assert jsonutil.loads(ruleset.encode([])) == []


def test_acknowledge_and_resolve_flags(ruleset: RuleSet) -> None:
    by = run(ruleset, ticket(status_category=StatusCategory.IN_PROGRESS))
    assert by["jira-p1"].acknowledge and not by["jira-p1"].resolve
    assert not by["any-p1"].acknowledge  # no acknowledge_when
    by = run(ruleset, ticket(status_category=StatusCategory.DONE, status="Done"))
    assert by["jira-p1"].resolve  # default resolve_when: status_category done
    assert not by["keep-going"].resolve  # its own resolve_when: status Closed
    assert run(ruleset, ticket(status="Closed"))["keep-going"].resolve


def test_deleted_ticket_always_resolves_and_never_matches(ruleset: RuleSet) -> None:
    by = run(ruleset, ticket(status_category=StatusCategory.DELETED))
    assert all(r.resolve for r in by.values() if r.applies)
    assert not any(r.matched for r in by.values())
    assert by["jira-p1"].explanation == ("ticket is deleted: it resolves and never pages",)


def test_on_unmatch_is_reported(ruleset: RuleSet) -> None:
    by = run(ruleset, ticket(priority="P3"))
    assert by["any-p1"].on_unmatch == "resolve" and by["jira-p1"].on_unmatch == "keep"


def test_evaluation_is_pure_and_repeatable(ruleset: RuleSet) -> None:
    ctx = EvalContext(ticket(priority="P3"), None, (), NOW)
    assert ruleset.evaluate(ctx) == ruleset.evaluate(ctx)  # the cached rejection equals a fresh one


def test_digest_is_stable_and_changes_with_content_or_key(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    a = load_rules(path, env={"PD_KEY": KEY})
    assert a.digest == load_rules(path, env={"PD_KEY": KEY}).digest
    assert a.digest != load_rules(path, env={"PD_KEY": KEY[::-1]}).digest
    path.write_text(RULES.replace("P1 pages platform", "P1 pages the platform"))
    assert a.digest != load_rules(path, env={"PD_KEY": KEY}).digest
    assert a.names == ("jira-p1", "any-p1", "keep-going", "after")
    assert not a.has_time_rules


def test_has_time_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.replace("when: {priority: P1}", "when: {priority: P1, created: {older_than: 30m}}"))
    assert load_rules(path, env={"PD_KEY": KEY}).has_time_rules


def test_secrets_never_in_repr_or_logs(ruleset: RuleSet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    results = ruleset.evaluate(EvalContext(ticket(), None, (), NOW))
    for text in (repr(ruleset), repr(results), str(results), repr(ruleset.spec), caplog.text):
        assert KEY not in text


def test_directory_merges_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        "version: 1\nrules:\n  - name: second\n    when: {priority: P1}\n"
        "    trigger: {routing_key: k, severity: info, summary: b}\n"
    )
    (tmp_path / "a.yaml").write_text(
        "version: 1\ncalendars: {c: {timezone: UTC}}\nrules:\n  - name: first\n    when: {priority: P1}\n"
        "    trigger: {routing_key: k, severity: info, summary: a}\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    ruleset = load_rules(tmp_path, env={})
    assert ruleset.names == ("first", "second")


YAML_TEXT = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=12),
        st.sampled_from(["P1", "jira", "any", "${X}", "{{ ticket.key }}", "30m", "equals", "[", "{", "&a", "*a"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "version",
                    "rules",
                    "name",
                    "when",
                    "trigger",
                    "routing_key",
                    "severity",
                    "summary",
                    "priority",
                    "in",
                    "regex",
                    "any",
                    "not",
                    "calendars",
                    "timezone",
                    "hours",
                    "source",
                    "older_than",
                    "during",
                    "custom_details",
                    "links",
                    "x",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


def _to_yaml(value: Any) -> str:
    import json

    return json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(YAML_TEXT.map(_to_yaml), st.text(max_size=200)))
def test_arbitrary_yaml_yields_a_ruleset_or_rule_file_errors(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_bytes(text.encode("utf-8", errors="replace"))  # hypothesis text may hold lone surrogates
        try:
            ruleset = load_rules(path, env={"X": "key"})
        except RuleFileErrors as exc:
            assert exc.errors and all(e.line >= 1 and e.col >= 1 for e in exc.errors)
        else:
            assert isinstance(ruleset, RuleSet)
            ruleset.evaluate(EvalContext(ticket(), None, (), NOW))


def load_or_none(doc: dict[str, Any]) -> RuleSet | None:
    """The rule set of ``doc`` written as a file, or None if it is not valid (a rule-file error)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(_to_yaml(doc))
        try:
            return load_rules(path, env={})
        except RuleFileErrors:
            return None


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "version": st.just(1),
            "rules": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["a", "b", "c"]),
                        "when": st.dictionaries(
                            st.sampled_from(
                                ["priority", "title", "labels", "project", "custom.X", "fields.a.b", "any"]
                            ),
                            st.one_of(
                                st.text(max_size=5),
                                st.lists(st.text(max_size=3), max_size=3),
                                st.dictionaries(
                                    st.sampled_from(
                                        [
                                            "in",
                                            "equals",
                                            "contains",
                                            "regex",
                                            "exists",
                                            "gt",
                                            "changed_to",
                                            "ignore_case",
                                            "older_than",
                                        ]
                                    ),
                                    st.one_of(
                                        st.text(max_size=4),
                                        st.booleans(),
                                        st.integers(),
                                        st.lists(st.text(max_size=3), max_size=2),
                                    ),
                                    max_size=2,
                                ),
                            ),
                            max_size=3,
                        ),
                        "trigger": st.just({"routing_key": "k", "severity": "info", "summary": "{{ ticket.key }}"}),
                    }
                ),
                max_size=3,
            ),
        }
    )
)
def test_rule_shaped_yaml_never_raises_anything_else(doc: dict[str, Any]) -> None:
    ruleset = load_or_none(doc)
    if ruleset is not None:
        for t in (ticket(), ticket(priority=None, labels=(), raw={"a": {"b": [1]}}, custom_fields={"X": 3})):
            assert len(ruleset.evaluate(EvalContext(t, None, (), NOW))) == len(ruleset.names)


# ------------------------------------------------------------------ the index agrees with plain evaluation

_VALUES = ["P1", "Gold", "Open", "Done", "ops down", ""]  # few values: rules and tickets often share them
_FIELDS = ["priority", "status", "assignment_group", "organization", "title"]


def _condition() -> st.SearchStrategy[Any]:
    text = st.sampled_from(_VALUES)
    return st.one_of(
        text,  # equals
        st.lists(text, min_size=1, max_size=3),  # in
        st.builds(lambda v: {"not_in": v}, st.lists(text, min_size=1, max_size=2)),
        st.builds(lambda v: {"regex": v}, st.sampled_from(["down", "^P", "(?i)gold", "x"])),
        st.builds(lambda v: {"exists": v}, st.booleans()),
        st.builds(lambda v: {"in": v, "ignore_case": True}, st.lists(text, min_size=1, max_size=2)),
    )


_RULE_SETS = st.lists(
    st.fixed_dictionaries(
        {
            "source": st.sampled_from(["jira", "any"]),  # Zendesk statuses are a fixed vocabulary
            "when": st.dictionaries(st.sampled_from(_FIELDS), _condition(), min_size=1, max_size=3),
            "continue": st.booleans(),
            "resolve_when": st.sampled_from([{"status_category": "done"}, {"status": "Done"}]),
            "acknowledge_when": st.sampled_from([None, {"status": ["Open", "In Progress"]}]),
        }
    ),
    min_size=1,
    max_size=6,
)

_TICKET_VALUES = st.one_of(st.none(), st.sampled_from(_VALUES), st.sampled_from(["Unknown Corp", "In Progress"]))


@settings(max_examples=300, deadline=None)
@given(
    _RULE_SETS,
    st.lists(
        st.fixed_dictionaries(
            {
                "source": st.sampled_from(["jira", "zendesk", "servicenow"]),
                "priority": _TICKET_VALUES,
                "assignment_group": _TICKET_VALUES,
                "organization": _TICKET_VALUES,
                "status": st.sampled_from(["Open", "Done", "In Progress", "Unknown"]),
                "title": st.sampled_from(["ops down", "Gold customer", "P1 outage", "x"]),
                "status_category": st.sampled_from(list(StatusCategory)),
            }
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_indexed_evaluation_agrees_with_plain_evaluation(
    rules: list[dict[str, Any]], tickets: list[dict[str, Any]]
) -> None:
    """Layouts are cached by field values and shared between tickets: whatever the rules and whatever the
    order tickets come in, every verdict and explanation equals a plain run of every condition."""

    doc = {
        "version": 1,
        "rules": [
            {
                "name": f"r{i}",
                **{k: v for k, v in rule.items() if v is not None},
                "trigger": {"routing_key": "k", "severity": "info", "summary": "{{ ticket.key }}"},
            }
            for i, rule in enumerate(rules)
        ],
    }
    ruleset = load_or_none(doc)
    if ruleset is None:
        return
    for _ in range(2):  # the second pass hits the cached layouts
        for fields in tickets:
            ctx = EvalContext(ticket(**fields), None, (), NOW)
            assert ruleset.evaluate(ctx) == ruleset.evaluate_reference(ctx)


def one_rule(tmp_path: Path, name: str, when: str) -> RuleSet:
    path = tmp_path / "r.yaml"
    path.write_text(
        f"version: 1\nrules:\n  - name: {name}\n    when: {when}\n"
        "    trigger: {routing_key: k, severity: info, summary: x}\n"
    )
    return load_rules(path, env={})


def test_a_value_no_rule_names_is_explained_with_that_value(tmp_path: Path) -> None:
    """Values no rule names share one cached layout; each ticket's explanation still shows its own value."""
    ruleset = one_rule(tmp_path, "gold", "{organization: [Gold, Platinum], title: {regex: down}}")
    for org in ("Acme", "Globex", "Acme"):
        (result,) = ruleset.evaluate(EvalContext(ticket(organization=org), None, (), NOW))
        assert result.explanation == (f"organization: '{org}' is not in ['Gold', 'Platinum']",)
    (result,) = ruleset.evaluate(EvalContext(ticket(organization="Gold", title="all fine"), None, (), NOW))
    assert result.explanation == ("title: 'all fine' does not match /down/",)
    (result,) = ruleset.evaluate(EvalContext(ticket(organization=None), None, (), NOW))
    assert result.explanation == ("organization: missing is not in ['Gold', 'Platinum']",)


def test_a_field_changed_twice_in_one_update_is_judged_by_its_last_change(tmp_path: Path) -> None:
    """A Jira changelog lists one entry per component added or removed, and two custom fields can share a
    display name: the last entry for a field is what the update changed it to."""
    ruleset = one_rule(tmp_path, "gold", "{custom.Tier: {changed_to: Gold}}")
    changes = (FieldChange("custom.Tier", "Silver", "Bronze"), FieldChange("custom.Tier", "Bronze", "Gold"))
    ctx = EvalContext(ticket(), None, changes, NOW)
    (result,) = ruleset.evaluate(ctx)
    assert result.matched, result.explanation
    assert ruleset.evaluate_reference(ctx) == [result]
    (result,) = ruleset.evaluate(EvalContext(ticket(), None, changes[::-1], NOW))
    assert not result.matched
    assert result.explanation == ("custom.Tier: changed 'Silver' → 'Bronze', not changed to 'Gold'",)


def test_a_long_title_is_shown_cut_in_an_explanation(tmp_path: Path) -> None:
    ruleset = one_rule(tmp_path, "r", "{title: {regex: '^URGENT'}}")
    (result,) = ruleset.evaluate(EvalContext(ticket(title="it's " + "x" * 200), None, (), NOW))
    (why,) = result.explanation
    assert why.startswith("title: \"it's xxx") and why.endswith("… does not match /^URGENT/")
    assert len(why) == len("title: ") + 80 + len(" does not match /^URGENT/")


def test_a_match_through_any_says_which_branch_held(tmp_path: Path) -> None:
    ruleset = one_rule(
        tmp_path, "either", "{project: OPS, any: [{priority: P1}, {title: {regex: '(?i)outage'}}]}"
    )
    ctx = EvalContext(ticket(priority="P3", title="Outage in EU"), None, (), NOW)
    (result,) = ruleset.evaluate(ctx)
    assert result.matched
    assert result.explanation[-1].endswith(", through: title regex '(?i)outage'"), result.explanation
    assert ruleset.evaluate_reference(ctx) == [result]
    (result,) = ruleset.evaluate(EvalContext(ticket(priority="P1", title="Outage in EU"), None, (), NOW))
    assert result.explanation[-1].endswith(", through: priority equals 'P1'"), result.explanation
