"""``rules test --source jria`` is a usage error (exit 2) with a suggestion, as in ``rules backtest``: with a
normalized ticket it used to be ignored silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"
RULES = str(EXAMPLES / "jira-ops-p1.yaml")
SENTENCE = "unknown --source 'jria' (did you mean 'jira'?) (use jira | zendesk | servicenow)"


def test_rules_test_refuses_an_unknown_source_even_for_a_normalized_ticket(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["test", RULES, "--ticket", str(EXAMPLES / "jira-ops-p1.ticket.json"), "--source", "jria"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"ticketpager rules test: {SENTENCE}\n")


def test_rules_backtest_says_the_same_before_reading_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", RULES, "--source", "jria"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"ticketpager rules backtest: {SENTENCE}\n")


def test_a_known_source_still_reads_a_normalized_ticket(capsys: pytest.CaptureFixture[str]) -> None:
    ticket = str(EXAMPLES / "jira-ops-p1.ticket.json")
    assert main(["test", RULES, "--ticket", ticket, "--source", "jira", "--json"]) == 0
    assert '"jira-ops-p1": "matched"' in capsys.readouterr().out
