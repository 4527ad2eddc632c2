"""`rules backtest` for a source without API credentials is a configuration problem: exit 2 as the exit-code
table says (and as `poll --once` with nothing to poll), not 1, which means the vendor API failed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.factories import RULES
from ticketpager import cli

CREDENTIALS = {
    "jira": "TICKETPAGER_JIRA__URL",
    "zendesk": "zendesk API credentials",
    "servicenow": "TICKETPAGER_SERVICENOW__INSTANCE_URL",
}


@pytest.mark.parametrize("source", sorted(CREDENTIALS))
def test_a_source_without_credentials_is_exit_2_naming_what_to_set(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("TICKETPAGER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("PD_PLATFORM_KEY", "R0PLATFORM000000000000000000000A")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    code = cli.main(["rules", "backtest", str(rules), "--source", source, "--since", "1d"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert CREDENTIALS[source] in err and "Traceback" not in err


def test_the_help_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["rules", "backtest", "--help"])
    codes = capsys.readouterr().out.split("exit codes:", 1)[1]
    assert "2  " in codes and "credentials" in codes.split("2  ", 1)[1], codes


def test_a_bad_since_is_exit_2_before_the_rule_files_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Wrong arguments are reported first, as argparse does for the others: exit 2, not the files' exit 1."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules: [oops]\n")
    assert cli.main(["rules", "backtest", str(rules), "--source", "jira", "--since", "7x"]) == 2
    err = capsys.readouterr().err
    assert "--since: bad duration '7x'" in err and "rules.yaml:" not in err, err
