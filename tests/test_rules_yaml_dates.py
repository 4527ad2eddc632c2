"""An unquoted date in custom_details is sent as written (docs/rules.md: dates "work as written"); a date
with a time is an error at its position that says to quote it, never Python's `datetime.date(...)`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rules import RuleFileErrors, load_rules
from ticketpager.rules_cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"
RULE = (
    "version: 1\nrules:\n  - name: r1\n    when: {{project: OPS}}\n"
    "    trigger:\n      routing_key: R123456789abcdef0123456789abcdef\n      severity: info\n"
    "      summary: s\n      custom_details: {{freeze: {value}}}\n"
)


def test_a_plain_date_is_sent_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value="2026-12-24"))
    ticket = EXAMPLES / "jira-ops-p1.ticket.json"
    assert main(["test", str(path), "--ticket", str(ticket), "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert events[0]["payload"]["custom_details"]["freeze"] == "2026-12-24"


def test_a_date_with_a_time_is_an_error_that_says_to_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value="2026-12-24 10:00:00"))
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env={})
    (message,) = [str(e) for e in caught.value.errors]
    assert message.startswith(f"{path}:9:32: rule 'r1' → trigger → custom_details → freeze: "), message
    assert "write it in quotes" in message, message
    assert "datetime" not in message
