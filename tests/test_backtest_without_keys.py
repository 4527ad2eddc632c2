"""`rules backtest` sends nothing and prints no routing key, so an admin can run it where the PagerDuty keys
are not set (a laptop, CI): an unset `${VAR}` is a warning with a placeholder, as with `--allow-missing-env`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fakes.jira_server import FakeJira, make_issue
from ticketpager import cli

FIXTURES = Path(__file__).parent / "fixtures" / "jira"


def test_backtest_runs_without_the_routing_key_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    fields = json.loads((FIXTURES / "fields.json").read_text())
    with FakeJira(deployment="Cloud", time_zone="UTC", fields=fields) as jira:
        jira.put(make_issue("501", "OPS-1", updated=now - timedelta(days=1), summary="Down", priority="Highest",
                            priority_id="1", base_url=jira.url))
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("PD_PLATFORM_KEY", raising=False)
        for key, value in {
            "TICKETPAGER_JIRA__URL": jira.url,
            "TICKETPAGER_JIRA__EMAIL": "bot@acme.example",
            "TICKETPAGER_JIRA__API_TOKEN": "backtest-token",
            "TICKETPAGER_JIRA__JQL": "project = OPS",
            "NO_PROXY": "127.0.0.1,localhost",
        }.items():
            monkeypatch.setenv(key, value)
        code = cli.main(["rules", "backtest", str(FIXTURES / "e2e_rules.yaml"), "--source", "jira", "--since", "7d"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "OPS-1" in captured.out and "trigger" in captured.out
    assert "warning" in captured.err and "PD_PLATFORM_KEY is not set" in captured.err
