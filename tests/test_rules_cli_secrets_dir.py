"""`rules check` and `rules test` resolve `${VAR}` routing keys as `serve` does: from the environment, then
from a file of that name in TICKETPAGER_SECRETS_DIR. Otherwise, inside the container that mounts the keys,
they said "PD_OPS_KEY is not set … 'ticketpager serve' refuses to load these rules", which was not true."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ticketpager import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"
KEY = "R0OPS0000000000000000000000fromf"
RULE = (
    "version: 1\nrules:\n  - name: ops\n    source: jira\n    when: {project: OPS}\n"
    "    trigger: {routing_key: '${PD_OPS_KEY}', severity: critical, summary: s}\n"
)


@pytest.fixture
def rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "PD_OPS_KEY").write_text(KEY + "\n")
    monkeypatch.delenv("PD_OPS_KEY", raising=False)
    monkeypatch.setenv("TICKETPAGER_SECRETS_DIR", str(secrets))
    path = tmp_path / "ops.yaml"
    path.write_text(RULE)
    return path


def test_rules_check_reads_the_key_from_the_secrets_directory(
    rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["rules", "check", str(rules)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: 1 rule in"), captured
    assert "not set" not in captured.err


def test_rules_test_sends_with_the_key_from_the_file_masked(rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ticket = str(EXAMPLES / "jira-ops-p1.ticket.json")
    assert cli.main(["rules", "test", str(rules), "--ticket", ticket, "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert events[0]["routing_key"] == "****romf"


def test_a_missing_secrets_directory_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ops.yaml"
    path.write_text(RULE)
    monkeypatch.setenv("TICKETPAGER_SECRETS_DIR", str(tmp_path / "nope"))
    assert cli.main(["rules", "check", str(path)]) == 2
    assert "TICKETPAGER_SECRETS_DIR" in capsys.readouterr().err
