"""One exit-code table for every command, and a `--help` with a description, examples and exit codes for each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.factories import RULES
from ticketpager import cli
from ticketpager.exitcodes import TABLE, markdown_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

COMMANDS = [
    ["serve"],
    ["poll"],
    ["status"],
    ["deadletters"],
    ["deadletters", "list"],
    ["deadletters", "retry"],
    ["db"],
    ["db", "upgrade"],
    ["rules"],
    ["rules", "check"],
    ["rules", "test"],
    ["rules", "schema"],
    ["rules", "backtest"],
    ["silence"],
    ["silence", "add"],
    ["silence", "list"],
    ["silence", "expire"],
]


def _help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_command_help_has_a_description_an_example_and_its_exit_codes(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(capsys, argv)
    usage, description, *_ = text.split("\n\n")
    assert usage.startswith(f"usage: ticketpager {' '.join(argv)}")
    assert len(description.split()) >= 8, f"no description in:\n{text}"
    examples = re.search(r"\nexamples:\n((?:  .*\n)+)", text)
    assert examples, text
    assert all(line.strip().startswith(("ticketpager ", "TICKETPAGER_")) for line in examples.group(1).splitlines())
    assert any(f"ticketpager {argv[0]}" in line for line in examples.group(1).splitlines())
    codes = re.search(r"\nexit codes:\n((?:  .*\n)+)", text)
    assert codes, text
    shown = {int(m) for m in re.findall(r"^  (\d)  ", codes.group(1), re.M)}
    assert EXIT_OK_AND_USAGE <= shown <= {code for code, _ in TABLE}


EXIT_OK_AND_USAGE = {0, 2}


def test_the_top_level_help_lists_the_exit_code_table(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, [])
    assert "exit codes (every command):" in text
    for code, _ in TABLE:
        assert f"\n  {code}  " in text


def test_the_readme_documents_the_exit_code_table() -> None:
    start = README.index("<!-- exit-codes:start -->\n") + len("<!-- exit-codes:start -->\n")
    assert README[start : README.index("<!-- exit-codes:end -->")] == markdown_table()


@pytest.mark.parametrize(
    "argv",
    [
        ["check"],
        ["test", "--ticket", "t.json"],
        ["backtest", "--source", "jira"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_broken_rule_file_is_exit_1_in_every_rules_command(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("priority: [Highest, P1]", "priorty: [Highest, P1]"))
    (tmp_path / "t.json").write_text("{}")
    code = cli.main(["rules", argv[0], str(bad), *argv[1:]])
    err = capsys.readouterr().err
    assert code == 1 and f"{bad}:" in err and "priorty" in err


def test_check_counts_one_rule_in_the_singular(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PD_PLATFORM_KEY", "R0UT1NGKEY0000000000000platform1")
    one = tmp_path / "one.yaml"
    one.write_text(RULES)
    assert cli.main(["rules", "check", str(one)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: 1 rule in {one} ")
