"""Values nested more than 100 deep (MAX_NESTING) are refused while the file is read, at the value that goes
over, with the message that 1000 levels already gave: 250 to 900 nested ``not:`` used to pass the YAML reader
and end `rules check` / `rules test` in a RecursionError traceback in validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

TICKET = Path(__file__).resolve().parent.parent / "rules" / "examples" / "jira-ops-p1.ticket.json"
TRIGGER = "    trigger: {routing_key: abcdefabcdefabcdefabcdefabcdef12, severity: critical, summary: s}\n"


def _nested_nots(tmp_path: Path, levels: int) -> Path:
    """``when: {not: {not: … {priority: P1}}}`` on line 4: each ``{not: `` is 6 characters, the first in column 11."""
    path = tmp_path / "deep.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: deep\n"
        f"    when: {'{not: ' * levels}{{priority: P1}}{'}' * levels}\n" + TRIGGER
    )
    return path


@pytest.mark.parametrize("levels", [250, 333, 500, 900, 1000])
@pytest.mark.parametrize("command", ["check", "test"])
def test_deep_nesting_is_an_error_at_its_position_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], levels: int, command: str
) -> None:
    path = _nested_nots(tmp_path, levels)
    extra = ["--ticket", str(TICKET)] if command == "test" else []
    assert main([command, str(path), *extra]) == 1
    out, err = capsys.readouterr()
    # the document, 'rules', the rule and 'when' are levels 1-4; the 'not' key of the 97th {not: is level 101
    column = 11 + 6 * (100 - 4) + 1  # rules.loader.MAX_NESTING is 100
    assert err.splitlines() == [f"{path}:4:{column}: invalid YAML: nested too deeply", f"1 error(s) in {path}"]
    assert "Traceback" not in out + err and "RecursionError" not in out + err


def test_the_deepest_allowed_nesting_loads_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _nested_nots(tmp_path, 95)  # odd: not (priority P1) holds for a Highest ticket
    assert main(["check", str(path)]) == 0
    assert main(["test", str(path), "--ticket", str(TICKET), "--json"]) == 0
    assert '"deep": "matched"' in capsys.readouterr().out


def test_aliases_that_nest_too_deep_together_are_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each value is within the limit as written; the alias puts 60 levels inside 50."""
    path = tmp_path / "alias.yaml"
    path.write_text(
        f"version: 1\nx: &deep {'{not: ' * 60}{{priority: P1}}{'}' * 60}\nrules:\n  - name: deep\n"
        f"    when: {'{not: ' * 50}*deep{'}' * 50}\n" + TRIGGER
    )
    assert main(["check", str(path)]) == 1
    # reported where the alias is used: at the 12th {not: on line 5, whose contents (38 more, then the alias's
    # 61 mappings and their keys) nest 101 deep
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:5:{11 + 6 * 11}: invalid YAML: nested too deeply",
        f"1 error(s) in {path}",
    ]
