"""A huge duration is an error that says the limit, not an OverflowError traceback: a rule's ``older_than`` /
``newer_than`` is at most 100 years (MAX_RULE_DURATION), ``rules backtest --since`` at most a year
(MAX_BACKTEST_SINCE). Silences: tests/test_silences.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.exitcodes import EXIT_USAGE
from ticketpager.rules_cli import main

RULE = """\
version: 1
rules:
  - name: stale
    when: {{created: {{{operator}: {duration}}}}}
    trigger: {{routing_key: abcdefabcdefabcdefabcdefabcdef12, severity: critical, summary: s}}
"""


@pytest.mark.parametrize(
    ("operator", "duration"),
    [("older_than", "999999999999999999999w"), ("newer_than", "36501d"), ("older_than", "1" + "0" * 400 + "s")],
)
def test_a_rule_duration_longer_than_100_years_is_an_error_at_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], operator: str, duration: str
) -> None:
    path = tmp_path / "stale.yaml"
    path.write_text(RULE.format(operator=operator, duration=duration))
    assert main(["check", str(path)]) == 1
    column = 24 + len(operator)
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:4:{column}: rule 'stale' → when → created → {operator}: duration '{duration}' is longer than "
        f"36500d (100 years), the longest older_than / newer_than",
        f"1 error(s) in {path}",
    ]


def test_100_years_is_still_a_valid_rule_duration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stale.yaml"
    path.write_text(RULE.format(operator="older_than", duration="36500d"))
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: 1 rule in {path}")


@pytest.mark.parametrize("since", ["99999999d", "366d"])
def test_a_backtest_reads_at_most_a_year_back(tmp_path: Path, capsys: pytest.CaptureFixture[str], since: str) -> None:
    path = tmp_path / "stale.yaml"
    path.write_text(RULE.format(operator="older_than", duration="1d"))
    assert main(["backtest", str(path), "--source", "jira", "--since", since]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"ticketpager rules backtest: --since: duration '{since}' is longer than 365d, the furthest back a backtest "
        "reads\n"
    )
