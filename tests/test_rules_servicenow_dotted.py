"""ServiceNow sends dot-walked fields as flat keys (``"assignment_group.name": "Network"``): a rule's dotted path
finds them, where it used to look for a nested ``assignment_group`` → ``name`` and silently never matched. Nested
paths (Jira's ``fields.customfield_10010.value``) still work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ticketpager.rules_cli import main

WEBHOOK = Path(__file__).parent / "fixtures" / "servicenow" / "webhook_incident_update.json"
KEY = "abcdefabcdefabcdefabcdefabcdef12"


def _rules(tmp_path: Path, when: str) -> Path:
    path = tmp_path / "network.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: network-p1\n    source: servicenow\n"
        f"    when: {when}\n"
        f"    trigger: {{routing_key: {KEY}, severity: critical, summary: '{{{{ ticket.key }}}}'}}\n"
    )
    return path


def _verdict(path: Path, capsys: pytest.CaptureFixture[str], ticket: Path = WEBHOOK) -> tuple[str, list[dict]]:
    assert main(["test", str(path), "--ticket", str(ticket), "--source", "servicenow", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    return result["verdicts"]["network-p1"], result["events"]


@pytest.mark.parametrize(
    "when",
    [
        "{assignment_group.name: Network}",
        "{cmdb_ci.name: core-router-01, company.name: {contains: ACME}}",
        "{assignment_group.name: {in: [Network, Database]}}",
    ],
)
def test_a_dot_walked_servicenow_field_matches_and_pages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], when: str
) -> None:
    verdict, events = _verdict(_rules(tmp_path, when), capsys)
    assert verdict == "matched"
    assert [(e["event_action"], e["payload"]["summary"]) for e in events] == [("trigger", "INC0010042")]


def test_another_group_does_not_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    verdict, events = _verdict(_rules(tmp_path, "{assignment_group.name: Database}"), capsys)
    assert verdict == "no match" and events == []


def test_a_nested_payload_is_still_read_level_by_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A regression guard: a flat key that leads nowhere (``u_location.site``, text) falls back to the nesting."""
    body = json.loads(WEBHOOK.read_text())
    body["record"]["u_location"] = {"site": {"name": "FRA1"}}
    body["record"]["u_location.site"] = "flat, but no name under it"
    ticket = tmp_path / "webhook.json"
    ticket.write_text(json.dumps(body))
    verdict, events = _verdict(_rules(tmp_path, "{u_location.site.name: FRA1}"), capsys, ticket)
    assert verdict == "matched" and len(events) == 1
