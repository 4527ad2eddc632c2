"""A rule path that does not exist is a usage problem, exit 2 as the exit-code table says ("a missing file")
and as a missing `--ticket` file: not exit 1, which means the rule files have errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"


@pytest.mark.parametrize(
    "argv",
    [
        ["check"],
        ["test", "--ticket", str(EXAMPLES / "jira-ops-p1.ticket.json")],
        ["backtest", "--source", "jira", "--since", "1d"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_missing_rule_path_is_exit_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    missing = tmp_path / "rulez"
    assert main([argv[0], str(missing), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such file or directory" in err, err


def test_a_file_with_errors_stays_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules: []\nextra: 1\n")
    assert main(["check", str(path)]) == 1
