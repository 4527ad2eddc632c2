# ruff: noqa: E501  (the table below holds exact, long admin-facing messages)
"""Rule-file validation: every error message, at its exact file:line:col, all errors at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.errors import ConfigError
from rules import RuleFileError, RuleFileErrors, load_rules

FIXTURES = Path(__file__).parent / "fixtures" / "rules"
ENV = {"PD_KEY": "0123456789abcdef0123456789abcdef"}

# one bad file per message: file name -> every error it must produce, as "line:col: message"
EXPECTED: dict[str, list[str]] = {
    "bad_day": [
        "3:31: calendars → week → days: unknown day 'funday' (use mon, tue, wed, thu, fri, sat, sun)",
    ],
    "bad_duration": [
        "6:29: rule 'r1' → when → created → older_than: bad duration 30 (use e.g. 90s, 30m, 2h, 1d, 1h30m)",
    ],
    "bad_hours": [
        '3:46: calendars → night → hours: hours \'22:00-06:00\' end before they start; write an overnight shift as two ranges, e.g. ["22:00-24:00", "00:00-06:00"]',
    ],
    "bad_on_unmatch": [
        "5:17: rule 'r1' → on_unmatch: must be keep or resolve, not 'close'",
    ],
    "bad_regex": [
        "6:22: rule 'r1' → when → title → regex: bad regex '(outage': missing ), unterminated subpattern at position 0",
    ],
    "bad_rule_name": [
        "3:11: rule 'page me!': name must be 1-100 letters, digits, '-', '_', '.' or ':' (it appears in logs and PagerDuty)",
    ],
    "bad_severity": [
        "9:17: rule 'r1' → trigger → severity: unknown severity 'critcal' (did you mean 'critical'?) (use critical | error | warning | info)",
    ],
    "bad_source": [
        "4:13: rule 'r1' → source: unknown source 'zendes' (did you mean 'zendesk'?) (use jira | zendesk | servicenow | any)",
    ],
    "bad_timezone": [
        "3:29: calendars → support-hours → timezone: unknown timezone 'Europe/Berln' (did you mean 'Europe/Berlin'?)",
    ],
    "bad_version": [
        "1:10: version: unsupported version 2 (use 1)",
    ],
    "custom_tag": [
        "4:22: invalid value: could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
    ],
    "duplicate_key": [
        "6:7: duplicate key 'priority' (first at line 5)",
    ],
    "duplicate_names": [
        "6:11: rule 'r1': duplicate rule name (first defined at line 3:11)",
    ],
    "empty": [
        "1:1: the file is empty (expected 'version: 1' and 'rules:')",
    ],
    "empty_any": [
        "6:12: rule 'r1' → when → any: 'any:' takes a non-empty list of condition mappings",
    ],
    "env_partial": [
        "8:20: rule 'r1' → trigger → routing_key: an environment reference must be the whole value: ${NAME} or ${NAME:-default}",
    ],
    "env_unset": [
        "8:20: rule 'r1' → trigger → routing_key: environment variable PD_MISSING_KEY is not set (set it where the service runs; 'rules check --allow-missing-env' checks the files without it)",
    ],
    "exists_needs_bool": [
        "6:26: rule 'r1' → when → assignee → exists: expects true or false",
    ],
    "ignore_case_not_applicable": [
        "6:25: rule 'r1' → when → priority: ignore_case does not apply to 'gt'",
    ],
    "in_needs_list": [
        "6:22: rule 'r1' → when → priority → in: expects a list, e.g. ['P1']",
    ],
    "invalid_yaml": [
        "5:12: invalid YAML: expected ',' or '}', but got ':'",
    ],
    "list_field_scalar": [
        "6:15: rule 'r1' → when → labels: 'labels' is a list: use {contains: 'customer-impact'} (or a list of values for 'any of')",
    ],
    "missing_trigger_fields": [
        "5:14: rule 'r1' → trigger: missing 'routing_key'",
    ],
    "naive_timestamp": [
        "6:21: rule 'r1' → when → created → gt: timestamp 2026-01-01T10:00:00 needs a time zone, e.g. 2026-01-01T00:00:00Z",
    ],
    "no_operator": [
        "6:17: rule 'r1' → when → priority: needs an operator (changed, changed_from, changed_to, contains, during, equals, exists, gt, gte, in, lt, lte, missing, newer_than, not_contains, not_equals, not_in, not_regex, older_than, outside, regex)",
    ],
    "not_a_mapping": [
        "1:1: a rule file is a mapping with 'version: 1' and 'rules:'",
    ],
    "severity_map_no_default": [
        "9:17: rule 'r1' → trigger → severity: missing 'default'",
    ],
    "severity_map_value": [
        "9:58: rule 'r1' → trigger → severity → map → P2: unknown severity 'urgent' (use critical | error | warning | info)",
    ],
    "status_category_value": [
        "6:34: rule 'r1' → when → status_category → not_in: status categories are lowercase: did you mean 'done'? (or add ignore_case: true)",
        "6:40: rule 'r1' → when → status_category → not_in: unknown status category 'closed' (use new | in_progress | done | deleted)",
        "6:48: rule 'r1' → when → status_category → not_in: unknown status category 'in progress' (did you mean 'in_progress'?) (use new | in_progress | done | deleted)",
        "7:41: rule 'r1' → acknowledge_when → status_category: status categories are lowercase: did you mean 'in_progress'? (or add ignore_case: true)",
    ],
    "template_syntax": [
        "10:16: rule 'r1' → trigger → summary: template does not compile: unexpected end of template, expected 'end of print statement'. (template line 1)",
    ],
    "template_unknown_attribute": [
        "12:19: rule 'r1' → trigger → custom_details → tags: template uses unknown field 'ticket.attributes.organisation_tags' (did you mean 'organization_tags'?) (the source's attributes; vendor-defined fields are ticket.custom.<name> or ticket.raw.<path>)",
        "13:22: rule 'r1' → trigger → custom_details → channel: template uses unknown field 'ticket.attributes.via_chanel' (did you mean 'via_channel'?) (the source's attributes; vendor-defined fields are ticket.custom.<name> or ticket.raw.<path>)",
        "14:20: rule 'r1' → trigger → custom_details → brand: template uses unknown field 'ticket.attributes.brnd' (did you mean 'brand'?) (the source's attributes; vendor-defined fields are ticket.custom.<name> or ticket.raw.<path>)",
        "16:22: rule 'r1' → trigger → custom_details → project: 'ticket.attributes.project' is a field of jira tickets; this rule's source is zendesk",
    ],
    "template_unknown_field": [
        "10:20: rule 'r1' → trigger → summary: template uses unknown field 'ticket.titel' (did you mean 'title'?)",
    ],
    "template_unknown_filter": [
        "10:35: rule 'r1' → trigger → summary: unknown filter 'upperr' (did you mean 'upper'?)",
        "12:42: rule 'r1' → trigger → custom_details → state: unknown test 'nonee' (did you mean 'none'?)",
    ],
    "template_unknown_variable": [
        "10:20: rule 'r1' → trigger → summary: template uses unknown variable 'tiket' (did you mean 'ticket'?) (known: changes, now, rule, ticket)",
    ],
    "unknown_calendar": [
        "6:15: rule 'r1' → when → during: unknown calendar 'support' (calendars: none defined)",
    ],
    "unknown_field": [
        "6:7: rule 'r1' → when → priorty: unknown field 'priorty' (did you mean 'priority'?) (ticket fields, custom.<name>, the source's attributes, or a dotted path into the raw payload)",
    ],
    "unknown_link_key": [
        "9:15: rule 'r1' → trigger → links[1]: missing 'href'",
        "9:16: rule 'r1' → trigger → links[1]: unknown key 'url' (allowed: href, text)",
    ],
    "unknown_operator": [
        "6:18: rule 'r1' → when → priority: unknown operator 'equal' (did you mean 'equals'?)",
    ],
    "unknown_operator_suggestions": [
        "6:16: rule 'r1' → when → status: unknown operator 'one_of' (operators: changed, changed_from, changed_to, contains, during, equals, exists, gt, gte, in, lt, lte, missing, newer_than, not_contains, not_equals, not_in, not_regex, older_than, outside, regex; modifier: ignore_case)",
        "7:32: rule 'r1' → when → priority: unknown operator 'ignorecase' (did you mean 'ignore_case'?)",
    ],
    "unknown_rule_key": [
        "5:5: rule 'r1': unknown key 'contine' (did you mean 'continue'?) (allowed: name, description, source, when, trigger, acknowledge_when, resolve_when, on_unmatch, continue, sync_back, escalation_policies)",
    ],
    "unknown_top_key": [
        "1:1: missing 'rules:'",
        "2:1: unknown key 'rule' (did you mean 'rules'?) (allowed: version, calendars, groups, rules)",
    ],
    "wrong_source_attribute": [
        "6:7: rule 'r1' → when → organization_tags: 'organization_tags' is a field of zendesk tickets; this rule's source is jira",
    ],
    # r2 (source: jira) may compare priority/status with anything: only Zendesk's vocabulary is fixed
    "zendesk_vocabulary": [
        "6:17: rule 'r1' → when → priority: Zendesk priorities are lowercase: did you mean 'urgent'? (or add ignore_case: true)",
        "7:27: rule 'r1' → when → status → in: Zendesk statuses are lowercase: did you mean 'solved'? (or add ignore_case: true)",
        "7:35: rule 'r1' → when → status → in: unknown Zendesk status 'resolved' (did you mean 'solved'?) (use new | open | pending | hold | solved | closed | deleted)",
        "8:34: rule 'r1' → when → not → status → not_equals: Zendesk statuses are lowercase: did you mean 'hold'? (or add ignore_case: true)",
    ],
}


def _errors(path: Path, env: dict[str, str] | None = None) -> RuleFileErrors:
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env=ENV if env is None else env)
    return caught.value


def test_every_bad_fixture_is_in_the_table() -> None:
    on_disk = {p.stem for p in (FIXTURES / "bad").glob("*.yaml")}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_rule_file_reports_exact_position_and_message(name: str) -> None:
    path = FIXTURES / "bad" / f"{name}.yaml"
    exc = _errors(path)
    assert [f"{e.line}:{e.col}: {e.message}" for e in exc.errors] == EXPECTED[name]
    assert all(e.path == str(path) for e in exc.errors)
    # str() is "path:line:col: message", one error per line
    assert str(exc).splitlines() == [f"{path}:{line}" for line in EXPECTED[name]]


def test_errors_are_config_errors_and_format_like_the_issue() -> None:
    err = RuleFileError("rules/p1.yaml", 14, 5, "rule 'jira-p1' → when → priority: unknown operator 'equal'")
    assert str(err) == "rules/p1.yaml:14:5: rule 'jira-p1' → when → priority: unknown operator 'equal'"
    assert issubclass(RuleFileErrors, ConfigError)


def test_duplicate_names_across_files_of_a_directory() -> None:
    exc = _errors(FIXTURES / "bad_dir")
    a, b = FIXTURES / "bad_dir" / "a.yaml", FIXTURES / "bad_dir" / "b.yaml"
    assert [str(e) for e in exc.errors] == [f"{b}:6:11: rule 'shared': duplicate rule name (first defined at {a}:3:11)"]


def test_all_errors_of_a_file_set_are_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: one\n"
        "    when: {priority: {equal: P1}, statuss: Open}\n"
        "    trigger: {routing_key: '${PD_ONE}', severity: critcal, summary: '{{ ticket.nope }}'}\n"
    )
    (tmp_path / "b.yaml").write_text("version: 1\nrules:\n  - name: two\n    when: {title: {regex: '(('}}\n")
    exc = _errors(tmp_path, env={})
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert [str(e) for e in exc.errors] == [
        f"{a}:4:23: rule 'one' → when → priority: unknown operator 'equal' (did you mean 'equals'?)",
        f"{a}:4:35: rule 'one' → when → statuss: unknown field 'statuss' (did you mean 'status'?) "
        "(ticket fields, custom.<name>, the source's attributes, or a dotted path into the raw payload)",
        f"{a}:5:28: rule 'one' → trigger → routing_key: environment variable PD_ONE is not set "
        "(set it where the service runs; 'rules check --allow-missing-env' checks the files without it)",
        f"{a}:5:51: rule 'one' → trigger → severity: unknown severity 'critcal' (did you mean 'critical'?) "
        "(use critical | error | warning | info)",
        f"{a}:5:73: rule 'one' → trigger → summary: template uses unknown field 'ticket.nope'",
        f"{b}:3:5: rule 'two': missing 'trigger' (routing_key, severity, summary)",
        f"{b}:4:27: rule 'two' → when → title → regex: bad regex '((': missing ), unterminated subpattern "
        "at position 1",
    ]


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    assert [str(e) for e in _errors(tmp_path / "nope.yaml").errors] == [
        f"{tmp_path / 'nope.yaml'}:1:1: no such file or directory"
    ]
    assert [str(e) for e in _errors(tmp_path).errors] == [
        f"{tmp_path}:1:1: no *.yaml or *.yml rule files in this directory or below"
    ]


def test_env_value_never_appears_in_errors(tmp_path: Path) -> None:
    secret = "s3cr3t-routing-key-value-0000000"
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: r\n    when: {priority: {equal: P1}}\n"
        "    trigger: {routing_key: '${PD_KEY}', severity: critical, summary: hi}\n"
    )
    exc = _errors(path, env={"PD_KEY": secret})
    assert secret not in str(exc) and secret not in repr(exc)


def test_empty_env_value_is_an_error_and_default_applies(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: r\n    when: {priority: P1}\n"
        "    trigger: {routing_key: '${PD_KEY}', severity: critical, summary: hi}\n"
        "  - name: d\n    when: {priority: P2}\n"
        "    trigger: {routing_key: '${PD_OTHER:-dry-run-key}', severity: error, summary: hi}\n"
    )
    assert [str(e) for e in _errors(path, env={"PD_KEY": " "}).errors] == [
        f"{path}:5:28: rule 'r' → trigger → routing_key: environment variable PD_KEY is empty "
        "(set it where the service runs; 'rules check --allow-missing-env' checks the files without it)"
    ]
    ruleset = load_rules(path, env={"PD_KEY": "abc"})
    assert ruleset.rule("d").trigger.routing_key == "dry-run-key"
    assert load_rules(path, env={"PD_KEY": "abc", "PD_OTHER": "real"}).rule("d").trigger.routing_key == "real"


def test_yaml_merge_keys_and_anchors_are_supported(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: a\n"
        "    when: {priority: P1}\n"
        "    trigger: &base {routing_key: k, severity: critical, summary: 'A {{ ticket.key }}'}\n"
        "  - name: b\n"
        "    when: {priority: P2}\n"
        "    trigger: {<<: *base, severity: error}\n"
    )
    ruleset = load_rules(path, env={})
    assert ruleset.rule("b").trigger.severity.literal == "error"
    assert ruleset.rule("b").trigger.summary.source == "A {{ ticket.key }}"


def test_recursive_alias_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules: &x [*x]\n")
    assert [e.message for e in _errors(path).errors][0] == "recursive YAML alias"


def test_second_document_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules: []\n---\nversion: 1\n")
    assert [str(e) for e in _errors(path).errors] == [
        f"{path}:4:1: one YAML document per rule file (found a second '---')"
    ]


def test_unknown_filter_in_any_template_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: r\n    when: {priority: P1}\n"
        "    trigger: {routing_key: k, severity: critical, summary: hi,\n"
        "              links: [{href: '{{ ticket.url | urlencod }}', text: '{{ ticket.key | md5 }}'}]}\n"
    )
    assert [str(e) for e in _errors(path).errors] == [
        f"{path}:6:47: rule 'r' → trigger → links[1] → href: unknown filter 'urlencod' (did you mean 'urlencode'?)",
        f"{path}:6:84: rule 'r' → trigger → links[1] → text: unknown filter 'md5'",
    ]


def test_attribute_templates_follow_the_rule_source(tmp_path: Path) -> None:
    """Any source may name every connector's attributes; custom.* and raw.* are vendor-defined and free."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: r\n    when: {priority: P1}\n"
        "    trigger: {routing_key: k, severity: critical,\n"
        "              summary: '{{ ticket.attributes.project }} {{ ticket.attributes.organization_tags | join }}"
        ' {{ ticket.attributes["impact"] }} {{ ticket.attributes.get("brand") }} {{ ticket.custom.Anything }}'
        " {{ ticket.raw.any.path }} {{ ticket.attributes | length }}'}\n"
    )
    ruleset = load_rules(path, env={})
    assert ruleset.names == ("r",)


def test_zendesk_vocabulary_with_ignore_case_and_other_operators_loads(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: r\n    source: zendesk\n"
        "    when: {priority: {in: [Urgent, HIGH], ignore_case: true}, status: [new, open], status_category: new,\n"
        "           title: {contains: Urgent}}\n"
        "    acknowledge_when: {status: {changed_to: Open, ignore_case: true}}\n"
        "    resolve_when: {status_category: {equals: Done, ignore_case: true}}\n"
        "    trigger: {routing_key: k, severity: critical, summary: hi}\n"
        "  - name: any-source\n    when: {priority: Urgent, status: Solved}\n"
        "    trigger: {routing_key: k, severity: critical, summary: hi}\n"
    )
    assert load_rules(path, env={}).names == ("r", "any-source")


def test_values_a_field_never_holds_are_errors_for_changed_and_severity_maps_too(tmp_path: Path) -> None:
    """`changed_to: Urgent` on Zendesk, a severity map keyed by `Urgent`, ServiceNow's `priority: 1` (its
    priority is the label '1 - Critical') and a routing key written `$PD_KEY` all load today and then
    silently never match or page with the wrong key: each is an error at its position."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrules:\n"
        "  - name: zd\n    source: zendesk\n"
        "    when: {priority: {changed_to: Urgent}}\n"
        "    trigger:\n"
        "      routing_key: $PD_SUPPORT_KEY\n"
        "      severity: {from: priority, map: {Urgent: critical, high: error}, default: warning}\n"
        "      summary: hi\n"
        "  - name: sn\n    source: servicenow\n"
        "    when: {priority: [1, '2']}\n"
        "    trigger: {routing_key: k, severity: critical, summary: hi}\n"
    )
    messages = [str(e) for e in _errors(path, {"PD_SUPPORT_KEY": "x" * 32}).errors]
    assert messages == [
        f"{path}:5:35: rule 'zd' → when → priority → changed_to: Zendesk priorities are lowercase: did you mean "
        "'urgent'? (or add ignore_case: true)",
        f"{path}:7:20: rule 'zd' → trigger → routing_key: an environment reference needs braces: ${{PD_SUPPORT_KEY}}",
        f"{path}:8:40: rule 'zd' → trigger → severity → map → Urgent: Zendesk priorities are lowercase: did you "
        "mean 'urgent'? (or add ignore_case: true)",
        f"{path}:12:23: rule 'sn' → when → priority: ServiceNow's priority is its label, e.g. '1 - Critical': "
        "for the number use priority_number: 1",
        f"{path}:12:26: rule 'sn' → when → priority: ServiceNow's priority is its label, e.g. '1 - Critical': "
        "for the number use priority_number: 1",
    ]


def test_vocabularies_match_the_zendesk_connector() -> None:
    from connectors.zendesk_normalize import PRIORITIES, STATUS_CATEGORIES
    from rules.validation import ZENDESK_PRIORITIES, ZENDESK_STATUSES

    assert ZENDESK_PRIORITIES == PRIORITIES
    assert ZENDESK_STATUSES == tuple(STATUS_CATEGORIES)


def test_missing_env_can_be_a_warning_with_a_placeholder_key() -> None:
    path = FIXTURES / "bad" / "env_unset.yaml"
    warnings: list[RuleFileError] = []
    ruleset = load_rules(path, env=ENV, env_warnings=warnings)
    assert [str(w) for w in warnings] == [
        f"{path}:8:20: rule 'r1' → trigger → routing_key: environment variable PD_MISSING_KEY is not set "
        "(using a placeholder key)"
    ]
    assert ruleset.rule("r1").trigger.routing_key == "missing-env:PD_MISSING_KEY"
    # other errors still fail the load; the warnings are reported alongside them
    warnings.clear()
    exc = _errors_with_warnings(FIXTURES / "bad" / "env_partial.yaml", warnings)
    assert len(exc.errors) == 1 and warnings == []


def _errors_with_warnings(path: Path, warnings: list[RuleFileError]) -> RuleFileErrors:
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env=ENV, env_warnings=warnings)
    return caught.value


def test_a_tab_and_a_broken_calendar_are_explained(tmp_path: Path) -> None:
    tabbed = tmp_path / "tab.yaml"
    tabbed.write_text("version: 1\nrules:\n\t- name: x\n")
    assert [str(e) for e in _errors(tabbed, {}).errors] == [
        f"{tabbed}:3:1: invalid YAML: found character '\\t' that cannot start any token "
        "(indent with spaces: YAML does not allow tabs)"
    ]
    cal = tmp_path / "cal.yaml"
    cal.write_text(
        'version: 1\ncalendars:\n  bad-tz: {timezone: Mars/Base, days: [mon], hours: "08:00-18:00"}\n'
        "rules:\n  - name: x\n    when: {during: bad-tz}\n    trigger: {routing_key: k, severity: info, summary: s}\n"
    )
    assert [str(e) for e in _errors(cal, {}).errors] == [
        f"{cal}:3:22: calendars → bad-tz → timezone: unknown timezone 'Mars/Base'",
    ]  # the calendar's own error only: the rule that uses it is not a second problem


def test_operators_a_field_kind_never_satisfies_are_errors(tmp_path: Path) -> None:
    """`priority: {older_than: 1h}` or `created: {in: ["2026-…Z"]}` would load and then never match."""
    path = tmp_path / "ts.yaml"
    path.write_text(
        "version: 1\nrules:\n"
        '  - name: x\n    when: {created: "2026-11-30T09:00:00Z"}\n'
        "    trigger: {routing_key: k, severity: info, summary: s}\n"
        '  - name: y\n    when: {priority: {older_than: 1h}, created: {in: ["2026-11-30T09:00:00Z"]}}\n'
        "    trigger: {routing_key: k, severity: info, summary: s}\n"
        "  - name: fine\n    when: {created: {older_than: 30m}, updated: null, custom.Since: {older_than: 1d}}\n"
        "    trigger: {routing_key: k, severity: info, summary: s}\n"
    )
    assert [str(e) for e in _errors(path, {}).errors] == [
        f"{path}:4:21: rule 'x' → when → created: equals: compare timestamps with gt/gte/lt/lte, older_than or "
        "newer_than",
        f"{path}:7:35: rule 'y' → when → priority → older_than: needs a timestamp field (created, updated); "
        "'priority' is not one",
        f"{path}:7:54: rule 'y' → when → created → in: compare timestamps with gt/gte/lt/lte, older_than or newer_than",
    ]


def test_an_impossible_date_is_one_error_that_names_where_it_is(tmp_path: Path) -> None:
    """2026-02-30 is a YAML timestamp that cannot be built: one error in context, not a bare 'invalid
    value' plus a second, confusing one."""
    path = tmp_path / "hol.yaml"
    path.write_text(
        "version: 1\ncalendars:\n"
        '  c: {timezone: UTC, days: [mon], hours: "08:00-18:00", holidays: [2026-02-30, 2026-12-24]}\n'
        "rules:\n  - name: x\n    when: {during: c}\n    trigger: {routing_key: k, severity: info, summary: s}\n"
    )
    assert [str(e) for e in _errors(path, {}).errors] == [
        f"{path}:3:67: calendars → c → holidays: holiday '2026-02-30' is not a date: day is out of range for month",
    ]


def test_values_that_are_meaningful_keep_loading(tmp_path: Path) -> None:
    """The checks above must not reject what works: a ServiceNow priority without a label is stored as its
    digits ("6"), and `created: {in: [null]}` means "created is missing"."""
    path = tmp_path / "ok.yaml"
    path.write_text(
        "version: 1\nrules:\n"
        "  - name: sn-planning\n    source: servicenow\n    when: {priority: {in: ['6', 7]}}\n"
        "    trigger: {routing_key: k, severity: {from: priority, map: {'6': info}, default: warning}, summary: s}\n"
        "  - name: no-created\n    when: {created: {in: [null]}}\n"
        "    trigger: {routing_key: k, severity: info, summary: s}\n"
    )
    assert load_rules(path, env={}).names == ("sn-planning", "no-created")


def test_custom_fields_read_by_the_rules_written_for_a_source(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nrules:\n"
        "  - name: j\n    source: jira\n    when: {custom.Tier: Gold}\n"
        "    trigger: {routing_key: k, severity: {from: custom.Impact, map: {High: critical}, default: info},"
        " summary: s}\n"
        "  - name: anywhere\n    when: {custom.Brand: Acme}\n    trigger: {routing_key: k, severity: info, summary: s}\n"
    )
    rules = load_rules(path, env={})
    assert rules.custom_fields("jira") == {"Tier", "Impact"}  # a source: any rule's field may be another vendor's
    assert rules.custom_fields("zendesk") == frozenset()
