"""`rules test` on valid rules whose `${VAR}` routing keys are unset here answers as `rules check` does: one
notice grouped by variable, exit 2 (the environment is incomplete, the files are fine), pointing at its own
`--allow-missing-env`; not an error per use and exit 1 (which means the files are broken)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"
RULES = "".join(
    f"  - name: r{n}\n    source: jira\n    when: {{project: OPS}}\n    continue: true\n"
    f"    trigger: {{routing_key: '${{PD_OPS_KEY}}', severity: info, summary: s}}\n"
    for n in (1, 2)
)


def test_unset_keys_are_one_notice_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PD_OPS_KEY", raising=False)
    path = tmp_path / "ops.yaml"
    path.write_text("version: 1\nrules:\n" + RULES)
    ticket = str(EXAMPLES / "jira-ops-p1.ticket.json")
    assert main(["test", str(path), "--ticket", ticket]) == 2
    err = capsys.readouterr().err
    assert f"PD_OPS_KEY is not set (used at {path}:7:" in err and err.count("PD_OPS_KEY") == 1, err
    assert "rules test --allow-missing-env" in err and "rules check --allow-missing-env" not in err
    assert main(["test", str(path), "--ticket", ticket, "--allow-missing-env"]) == 0
