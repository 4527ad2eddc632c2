"""`deadletters list --help` states the exit codes of listing, not those of `retry`."""

from __future__ import annotations

import pytest

from ticketpager import cli


def _exit_codes(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    out = capsys.readouterr().out
    return out.split("exit codes:", 1)[1]


def test_list_help_names_only_what_listing_can_do(capsys: pytest.CaptureFixture[str]) -> None:
    codes = _exit_codes(capsys, ["deadletters", "list"])
    assert "--all" not in codes and "ids" not in codes and "queued" not in codes, codes
    assert "1  the database cannot be reached" in codes, "an unreachable database is exit 1, as for retry"


def test_list_exit_1_on_an_unreachable_database_as_its_help_says(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--database-url", "postgresql://u@127.0.0.1:9/x", "deadletters", "list"])
    assert code == 1
    assert "cannot use the database" in capsys.readouterr().err


def test_retry_help_keeps_its_own_codes(capsys: pytest.CaptureFixture[str]) -> None:
    codes = _exit_codes(capsys, ["deadletters", "retry"])
    assert "queued again" in codes and "neither ids nor --all" in codes and "no dead letter with a given id" in codes
