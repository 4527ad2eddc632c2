"""``severity: {from: <list field>}`` maps the list's elements: the most severe severity any element maps to
(critical > error > warning > info), else the default. It used to look the whole list up as one text, so a
ticket labelled ``customer-impact`` paged at the default severity. ``rules test`` says which element mapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ticketpager.rules_cli import main

TICKET = Path(__file__).resolve().parent.parent / "rules" / "examples" / "jira-ops-p1.ticket.json"
KEY = "abcdefabcdefabcdefabcdefabcdef12"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_KEY", KEY)


def _rules(tmp_path: Path, severity: str) -> Path:
    path = tmp_path / "sev.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: ops\n    source: jira\n    when: {project: OPS}\n    trigger:\n"
        f"      routing_key: ${{PD_KEY}}\n      severity: {severity}\n      summary: down\n"
    )
    return path


def _ticket(tmp_path: Path, **changes: object) -> Path:
    data = json.loads(TICKET.read_text())
    attributes = changes.pop("attributes", None)
    data.update(changes)
    if isinstance(attributes, dict):
        data["attributes"].update(attributes)
    path = tmp_path / "ticket.json"
    path.write_text(json.dumps(data))
    return path


def _test(rules: Path, ticket: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    """The explanation lines of rule 'ops' and the severities of the events, as `rules test` prints them."""
    assert main(["test", str(rules), "--ticket", str(ticket)]) == 0
    out = capsys.readouterr().out
    assert main(["test", str(rules), "--ticket", str(ticket), "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    lines = out.splitlines()
    start = lines.index("  ops: MATCHED") + 1
    explanation = []
    for line in lines[start:]:
        if not line.startswith("      "):
            break
        explanation.append(line.strip())
    return explanation, [event["payload"]["severity"] for event in events]


def test_a_label_in_the_map_gives_its_severity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = _rules(tmp_path, "{from: labels, map: {customer-impact: critical}, default: warning}")
    explanation, severities = _test(rules, TICKET, capsys)  # labelled customer-impact
    assert severities == ["critical"]
    assert explanation == [
        "holds: project equals 'OPS'",
        "severity critical: labels has 'customer-impact', mapped to critical",
    ]


def test_a_component_in_the_map_gives_its_severity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = _rules(tmp_path, "{from: components, map: {checkout: critical}, default: info}")
    explanation, severities = _test(rules, TICKET, capsys)  # components: checkout, api
    assert severities == ["critical"]
    assert explanation[-1] == "severity critical: components has 'checkout', mapped to critical"


def test_the_most_severe_mapped_element_wins_whatever_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = _rules(tmp_path, "{from: labels, map: {vip: warning, customer-impact: critical, eu: error}, default: info}")
    ticket = _ticket(tmp_path, labels=["vip", "eu", "customer-impact", "other"])
    explanation, severities = _test(rules, ticket, capsys)
    assert severities == ["critical"]
    assert explanation[-1] == (
        "severity critical: labels has 'customer-impact', mapped to critical "
        "(the most severe; also mapped: 'eu' → error, 'vip' → warning)"
    )


def test_no_mapped_element_gives_the_default_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = _rules(tmp_path, "{from: labels, map: {customer-impact: critical}, default: warning}")
    explanation, severities = _test(rules, _ticket(tmp_path, labels=["vip", "eu"]), capsys)
    assert severities == ["warning"]
    assert explanation[-1] == "severity warning (the default): no element of labels ('vip', 'eu') is in the map"


def test_an_empty_list_gives_the_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = _rules(tmp_path, "{from: components, map: {checkout: critical}, default: info}")
    explanation, severities = _test(rules, _ticket(tmp_path, attributes={"components": []}), capsys)
    assert severities == ["info"]
    assert explanation[-1] == "severity info (the default): components is empty"


def test_a_text_field_still_maps_its_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A regression guard: ``from: priority`` is unchanged, and adds no severity line."""
    rules = _rules(tmp_path, "{from: priority, map: {Highest: critical}, default: warning}")
    explanation, severities = _test(rules, TICKET, capsys)
    assert severities == ["critical"]
    assert explanation == ["holds: project equals 'OPS'"]
