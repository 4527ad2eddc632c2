"""A dotted path into the raw payload starts with a key that source's payload has (kernel.fields.RAW_PAYLOADS):
``feilds.priority.name`` (a typo of ``fields``), ``ticket.key`` and ``attributes.project`` (copied from templates)
used to pass ``rules check`` and then silently never match. For a rule with a source they are errors at the key,
with what to write; a ``source: any`` rule gets a warning and still loads. ServiceNow's flat dot-walked keys
(``assignment_group.name``) and its instances' own ``u_`` fields stay accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ticketpager.rules_cli import main

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE_TICKET = Path(__file__).resolve().parent.parent / "rules" / "examples" / "jira-ops-p1.ticket.json"
KEY = "abcdefabcdefabcdefabcdefabcdef12"
JIRA_KEYS = "expand, fields, id, key, self"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_KEY", KEY)


def _rules(tmp_path: Path, source: str, when: str, severity: str = "critical") -> Path:
    """A one-rule file: line 5 is ``when``, line 6 the trigger."""
    path = tmp_path / "p1.yaml"
    path.write_text(
        f"version: 1\nrules:\n  - name: p1\n    source: {source}\n"
        f"    when: {when}\n"
        f"    trigger: {{routing_key: '${{PD_KEY}}', severity: {severity}, summary: s}}\n"
    )
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    return code, err.splitlines(), out


def test_a_typo_in_the_first_key_is_an_error_with_the_corrected_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _rules(tmp_path, "jira", "{feilds.priority.name: Highest}")
    code, err, _ = _check(path, capsys)
    assert code == 1
    assert err == [
        f"{path}:5:12: rule 'p1' → when → feilds.priority.name: unknown key 'feilds' in the raw payload "
        f"(did you mean 'fields.priority.name'?): a dotted path reads the Jira issue, whose top-level keys are "
        f"{JIRA_KEYS}",
        f"1 error(s) in {path}",
    ]


@pytest.mark.parametrize(
    ("written", "hint"),
    [
        ("ticket.key", "write 'key', not 'ticket.key': conditions name ticket fields directly"),
        ("attributes.project", "write 'project', not 'attributes.project': conditions name ticket fields directly"),
        (
            "ticket.attributes.project",
            "write 'project', not 'ticket.attributes.project': conditions name ticket fields directly",
        ),
        ("ticket.custom.Tier", "write 'custom.Tier', not 'ticket.custom.Tier': conditions name ticket fields directly"),
        ("ticket.titel", "write 'title', not 'ticket.titel': conditions name ticket fields directly"),
        ("raw.fields.x", "write 'fields.x', not 'raw.fields.x': a dotted path already reads the raw payload"),
        ("issue.fields.x", "write 'fields.x', not 'issue.fields.x': the raw payload is the Jira issue itself"),
    ],
)
def test_names_copied_from_templates_say_what_to_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str, hint: str
) -> None:
    path = _rules(tmp_path, "jira", f"{{{written}: OPS-12}}")
    code, err, _ = _check(path, capsys)
    assert code == 1
    assert err[0] == f"{path}:5:12: rule 'p1' → when → {written}: {hint}"


def test_jiras_webhook_envelope_is_not_in_the_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``user`` is in the webhook body, but a rule reads the issue (jira_normalize: raw is the issue)."""
    path = _rules(tmp_path, "jira", "{user.displayName: Dana Oncall}")
    code, err, _ = _check(path, capsys)
    assert code == 1
    assert err[0] == (
        f"{path}:5:12: rule 'p1' → when → user.displayName: 'user' is part of Jira's webhook message around the "
        "issue, not of the issue that rules read"
    )


def test_the_severitys_from_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _rules(
        tmp_path, "jira", "{project: OPS}", "{from: fieds.priority.name, map: {Highest: critical}, default: error}"
    )
    code, err, _ = _check(path, capsys)
    assert code == 1
    assert err[0] == (
        f"{path}:6:58: rule 'p1' → trigger → severity → fieds.priority.name: unknown key 'fieds' in the raw "
        f"payload (did you mean 'fields.priority.name'?): a dotted path reads the Jira issue, whose top-level keys "
        f"are {JIRA_KEYS}"
    )


def test_every_wrong_path_is_reported_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _rules(tmp_path, "jira", "{ticket.key: OPS-12, attributes.project: OPS, feilds.priority.name: Highest}")
    code, err, _ = _check(path, capsys)
    assert code == 1
    assert [line.split(": rule")[0] for line in err[:-1]] == [f"{path}:5:12", f"{path}:5:32", f"{path}:5:57"]


def test_a_path_that_is_there_loads_and_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _rules(
        tmp_path,
        "jira",
        "{fields.priority.name: Highest}",
        "{from: fields.priority.name, map: {Highest: critical}, default: error}",
    )
    code, err, out = _check(path, capsys)
    assert (code, err) == (0, [])
    assert main(["test", str(path), "--ticket", str(EXAMPLE_TICKET), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verdicts"] == {"p1": "matched"}
    assert [e["payload"]["severity"] for e in result["events"]] == ["critical"]


def test_servicenow_flat_and_own_fields_stay_accepted_and_a_typo_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _rules(tmp_path, "servicenow", "{assignment_group.name: Network, cmdb_ci.name: x, u_location.site: FRA1}")
    assert _check(good, capsys)[:2] == (0, [])
    bad = _rules(tmp_path, "servicenow", "{asignment_group.name: Network, record.number: INC0010042}")
    code, err, _ = _check(bad, capsys)
    assert code == 1
    assert err[0].startswith(
        f"{bad}:5:12: rule 'p1' → when → asignment_group.name: unknown key 'asignment_group' in the raw payload "
        "(did you mean 'assignment_group.name'?): a dotted path reads the ServiceNow record, whose top-level keys "
        "are active, assigned_to, assignment_group, "
    )
    assert err[0].endswith(", urgency (and its own u_ / x_ fields)")
    assert err[1] == (
        f"{bad}:5:43: rule 'p1' → when → record.number: write 'number', not 'record.number': the raw payload is "
        "the ServiceNow record itself"
    )


def test_zendesk_paths_are_checked_against_its_ticket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _rules(tmp_path, "zendesk", "{via.channel: web, satisfaction_rating.score: bad, custom_fields.0.value: x}")
    assert _check(good, capsys)[:2] == (0, [])
    bad = _rules(tmp_path, "zendesk", "{vai.channel: web}")
    code, err, _ = _check(bad, capsys)
    assert code == 1
    assert err[0] == (
        f"{bad}:5:12: rule 'p1' → when → vai.channel: unknown key 'vai' in the raw payload "
        "(did you mean 'via.channel'?): a dotted path reads the Zendesk ticket"
    )


def test_a_source_any_rule_is_warned_and_still_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _rules(tmp_path, "any", "{ticket.key: OPS-12, feilds.x: 1, fields.x: 1, assignment_group.name: N}")
    code, err, out = _check(path, capsys)
    assert code == 0
    assert out.startswith(f"OK: 1 rule in {path}")
    assert err == [
        f"{path}:5:12: warning: rule 'p1' → when → ticket.key: write 'key', not 'ticket.key': conditions name ticket "
        "fields directly (a warning, not an error, for a 'source: any' rule)",
        f"{path}:5:32: warning: rule 'p1' → when → feilds.x: no system's raw payload has a key 'feilds' "
        "(did you mean 'fields.x'?) (a warning, not an error, for a 'source: any' rule)",
    ]
