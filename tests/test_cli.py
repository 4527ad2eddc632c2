"""The operator's commands: status, dead letters listed and re-driven, database upgrade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sync import cli
from sync.clock import FakeClock
from tests.factories import ROUTING_KEY, RULES, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dead_letter_shown_by_status_and_redriven_by_cli(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    with MockPagerDuty() as pd:
        svc = make_service(db_url, rules, pd.url, FakeClock())
        pd.fail_next(1, 400)
        receive(svc, [change(ticket())])
        svc.process_all()
        assert pd.events == []

        code, out, _ = run(capsys, "--database-url", db_url, "status", "--json")
        status = json.loads(out)
        assert code == 0 and status["dead_letters"] == 1 and status["tickets_tracked"] == 1

        code, out, _ = run(capsys, "--database-url", db_url, "deadletters", "list", "--json")
        [dead] = json.loads(out)
        assert dead["action"] == "trigger" and dead["ticket"] == "OPS-10001"
        assert "scripted 400" in dead["error"]
        assert dead["routing_key"] == "****" + ROUTING_KEY[-4:]
        assert ROUTING_KEY not in out

        code, out, _ = run(capsys, "--database-url", db_url, "deadletters", "list")
        assert code == 0 and "OPS-10001" in out and ROUTING_KEY not in out

        code, _, err = run(capsys, "--database-url", db_url, "deadletters", "retry")
        assert code == 2 and "--all" in err
        code, out, _ = run(capsys, "--database-url", db_url, "deadletters", "retry", str(dead["id"]))
        assert code == 0 and out.startswith("1 dead letter(s) queued again")

        svc.process_all()
        assert [e["event_action"] for e in pd.events] == ["trigger"]
        code, out, _ = run(capsys, "--database-url", db_url, "status")
        assert "dead letters      0" in out and "open incidents    1" in out
        svc.store.dispose()


def test_db_upgrade_reports_the_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, out, _ = run(capsys, "--database-url", url, "db", "upgrade")
    from sync.db import head_revision

    assert code == 0 and f"database at revision {head_revision()}" in out


def test_poll_without_any_source_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    code, _, err = run(capsys, "--database-url", url, "poll", "--once")
    assert code == 2 and "TICKETPAGER_<SOURCE>__ENABLED" in err


def test_rule_errors_stop_serve_with_the_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("priority: [Highest, P1]", "priorty: [Highest, P1]"))
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--database-url", url, "--rules", str(bad), "serve", "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "priorty" in err and "did you mean 'priority'" in err
