"""`ticketpager status` counts incidents as PagerDuty knows them, and `status --check` is a check for cron and
monitoring: a non-zero exit with one line per problem (dead letters, failed changes, failing polls, a stuck
outbox), silence and exit 0 when all is well."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from sync.repos.cursors import record_poll_error
from tests.factories import ROUTING_KEY, RULES, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager import cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    path = tmp_path / "ops.yaml"
    path.write_text(RULES)
    return path


def test_a_refused_trigger_is_not_counted_as_an_open_incident(
    db_url: str, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MockPagerDuty() as pd:
        svc = make_service(db_url, rules, pd.url, FakeClock())
        try:
            pd.fail_next(1, 400)  # PagerDuty refuses the trigger: a dead letter, no incident
            receive(svc, [change(ticket())])
            svc.process_all()
        finally:
            svc.store.dispose()
    code, out, _ = run(capsys, "--database-url", db_url, "status")
    assert code == 0
    assert "open incidents    0" in out
    assert "not opened 1 (dead letter)" in out
    code, out, _ = run(capsys, "--database-url", db_url, "status", "--json")
    data = json.loads(out)
    assert data["open_incidents"] == 0 and data["incidents_dead"] == 1 and data["incidents_pending"] == 0


def test_an_incident_whose_trigger_waits_is_pending_and_one_sent_is_open(
    db_url: str, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MockPagerDuty() as pd:
        clock = FakeClock()
        svc = make_service(db_url, rules, pd.url, clock)
        try:
            pd.fail_next(1, 500)  # retried later: still pending
            receive(svc, [change(ticket("1")), change(ticket("2"))])
            svc.process_all()
            assert len(pd.events) == 1
            data = json.loads(run(capsys, "--database-url", db_url, "status", "--json")[1])
            assert (data["open_incidents"], data["incidents_pending"], data["incidents_dead"]) == (1, 1, 0)
            clock.advance(120)
            svc.process_all()
        finally:
            svc.store.dispose()
    data = json.loads(run(capsys, "--database-url", db_url, "status", "--json")[1])
    assert (data["open_incidents"], data["incidents_pending"], data["incidents_dead"]) == (2, 0, 0)


def test_status_check_exits_1_with_a_line_per_problem(
    db_url: str, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MockPagerDuty() as pd:
        clock = FakeClock()
        svc = make_service(db_url, rules, pd.url, clock)
        try:
            pd.fail_next(1, 400)
            receive(svc, [change(ticket())])
            svc.process_all()
            with svc.store.begin() as conn:
                record_poll_error(conn, "zendesk", "401 Unauthorized: check the API token", "permanent", clock.now())
        finally:
            svc.store.dispose()
    code, out, err = run(capsys, "--database-url", db_url, "status", "--check")
    assert code == 1, err
    lines = out.strip().splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith("PROBLEM: 1 dead letter") and "deadletters list" in lines[0]
    assert lines[1].startswith("PROBLEM: zendesk: the last poll failed (permanent)") and "401" in lines[1]
    code, out, _ = run(capsys, "--database-url", db_url, "status", "--check", "--json")
    assert code == 1 and len(json.loads(out)["problems"]) == 2


def test_status_check_is_silent_and_exits_0_when_all_is_well(
    db_url: str, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MockPagerDuty() as pd:
        svc = make_service(db_url, rules, pd.url, FakeClock())
        try:
            receive(svc, [change(ticket())])
            svc.process_all()
            assert len(pd.events) == 1
        finally:
            svc.store.dispose()
    assert run(capsys, "--database-url", db_url, "status", "--check") == (0, "", "")


def test_status_check_reports_an_outbox_that_does_not_drain(
    db_url: str, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An event waiting longer than --max-outbox-age (PagerDuty down, no `serve` running) is a problem."""
    now = datetime.now(UTC)
    with MockPagerDuty() as pd:
        svc = make_service(db_url, rules, pd.url, FakeClock(now - timedelta(minutes=20)))
        try:
            pd.fail_next(1, 500)
            receive(svc, [change(ticket())])
            svc.process_all()
        finally:
            svc.store.dispose()
    code, out, _ = run(capsys, "--database-url", db_url, "status", "--check")
    assert code == 1 and out.startswith("PROBLEM: outbox: the oldest pending event has waited 20 min"), out
    assert run(capsys, "--database-url", db_url, "status", "--check", "--max-outbox-age", "30m")[0] == 0
