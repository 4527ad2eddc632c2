"""`ticketpager rules backtest`: real tickets from the connector (a fake Jira over HTTP), what would have
paged, and no side effects anywhere (no comments, no database, no PagerDuty)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fakes.jira_server import FakeJira, make_issue
from ticketpager import cli

FIXTURES = Path(__file__).parent / "fixtures" / "jira"


def test_backtest_reports_what_would_have_paged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    fields = json.loads((FIXTURES / "fields.json").read_text())
    with FakeJira(deployment="Cloud", time_zone="UTC", fields=fields) as jira:
        for n, (priority, pid, days) in enumerate([("Highest", "1", 1), ("Low", "4", 2), ("Highest", "1", 10)]):
            jira.put(make_issue(str(501 + n), f"OPS-{n + 1}", updated=now - timedelta(days=days),
                                summary=f"Issue {n + 1}", priority=priority, priority_id=pid, base_url=jira.url))
        monkeypatch.chdir(tmp_path)
        for key, value in {
            "TICKETPAGER_JIRA__URL": jira.url,
            "TICKETPAGER_JIRA__EMAIL": "bot@acme.example",
            "TICKETPAGER_JIRA__API_TOKEN": "backtest-token",
            "TICKETPAGER_JIRA__JQL": "project = OPS",
            "NO_PROXY": "127.0.0.1,localhost",
            "PD_PLATFORM_KEY": "R0PLATFORM000000000000000000000A",
        }.items():
            monkeypatch.setenv(key, value)
        code = cli.main(["rules", "backtest", str(FIXTURES / "e2e_rules.yaml"), "--source", "jira", "--since", "7d"])
        captured = capsys.readouterr()
        out = captured.out + captured.err
        methods = {m for m, _, _ in jira.requests}
    assert code == 0, out
    assert "OPS-1" in out and "trigger" in out
    assert "OPS-3" not in out, "older than --since"
    assert "OPS-2 " not in out.split("would have paged:")[0], "low priority pages nobody"
    assert "2 ticket versions from jira" in out
    assert methods == {"GET"}, "a backtest only reads"
    assert not list(tmp_path.iterdir()), "no database or file was written"
