"""A rules folder's ``P1.YAML`` / ``ops.Yml`` are rule files like ``p1.yaml``: they used to be skipped silently,
so their rules never loaded (and ``rules check`` said OK for the others)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

RULE = (
    "version: 1\nrules:\n  - name: {name}\n    when: {{priority: P1}}\n"
    "    trigger: {{routing_key: abcdefabcdefabcdefabcdefabcdef12, severity: critical, summary: s}}\n"
)


def test_upper_case_suffixes_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(RULE.format(name="lower"))
    (tmp_path / "B.YAML").write_text(RULE.format(name="upper"))
    (tmp_path / "c.Yml").write_text(RULE.format(name="mixed"))
    (tmp_path / "notes.txt").write_text("not a rule file")
    assert main(["check", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: 3 rules in {tmp_path}")


def test_an_upper_case_file_with_an_error_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(RULE.format(name="lower"))
    (tmp_path / "b.YML").write_text(RULE.format(name="lower"))
    assert main(["check", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{tmp_path / 'b.YML'}:3:11: rule 'lower': duplicate rule name (first defined at {tmp_path / 'a.yaml'}:3:11)"
    )
