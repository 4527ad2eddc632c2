"""A tab inside a line (before a comment, say) is named as that, not as an indentation mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

TEXT = (
    "version: 1\nrules:\n  - name: r1\n    when:\n      project: OPS\t# the Jira key\n"
    "    trigger: {routing_key: R0123456789abcdef0123456789abcdef, severity: info, summary: s}\n"
)


def test_a_tab_inside_a_line_is_named_at_its_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(TEXT)
    assert main(["check", str(path)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first == f"{path}:5:19: invalid YAML: line 5 has a tab in column 19: replace it with spaces", first


def test_a_tab_that_indents_keeps_its_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(TEXT.replace("      project: OPS\t# the Jira key", "\tproject: OPS"))
    assert main(["check", str(path)]) == 1
    assert "indent with spaces" in capsys.readouterr().err
