"""What an admin reads from `rules check` / `rules test` (issue 14): unset routing-key variables as one grouped
notice (item 2), a broken calendar reported once (item 4), calendar times in the calendar's zone (item 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rules import RuleFileErrors, load_rules
from rules.reload import RuleStore
from ticketpager.rules_cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"
TWO_KEYS = """\
version: 1
rules:
  - name: ops
    when: {priority: P1}
    trigger: {routing_key: "${PD_OPS_KEY}", severity: critical, summary: s}
  - name: db
    when: {priority: P2}
    trigger: {routing_key: "${PD_DB_KEY}", severity: error, summary: s}
  - name: ops-p3
    when: {priority: P3}
    trigger: {routing_key: "${PD_OPS_KEY}", severity: info, summary: s}
"""


@pytest.fixture
def own_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An admin's own rule file on a machine without the PagerDuty keys (PD_DB_KEY set but empty)."""
    monkeypatch.delenv("PD_OPS_KEY", raising=False)
    monkeypatch.setenv("PD_DB_KEY", "")
    path = tmp_path / "rules.yaml"
    path.write_text(TWO_KEYS)
    return path


def test_rules_check_groups_unset_variables_in_one_notice_and_exits_2(
    own_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(own_file)]) == 2  # configuration: the environment, not the file
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{own_file}: the rules are valid, but this environment is incomplete for their routing keys:",
        f"  PD_OPS_KEY is not set (used at {own_file}:5:28, {own_file}:11:28)",
        f"  PD_DB_KEY is empty (used at {own_file}:8:28)",
        "'ticketpager serve' refuses to load these rules until they are set: set them where the service runs, "
        "or run 'rules check --allow-missing-env' to check the files alone (exit 0).",
    ]
    assert ":-default" not in err


def test_the_notice_follows_real_errors_which_decide_the_exit_code(
    own_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own_file.write_text(TWO_KEYS.replace("severity: error", "severity: eror"))
    assert main(["check", str(own_file)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        f"{own_file}:8:54: rule 'db' → trigger → severity: unknown severity 'eror' (did you mean 'error'?) "
        "(use critical | error | warning | info)",
        f"1 error(s) in {own_file}",
    ]
    assert err[2] == f"{own_file}: besides the errors above, this environment is incomplete for their routing keys:"
    assert err[3:5] == [
        f"  PD_OPS_KEY is not set (used at {own_file}:5:28, {own_file}:11:28)",
        f"  PD_DB_KEY is empty (used at {own_file}:8:28)",
    ]


def test_allow_missing_env_passes_and_the_service_still_refuses(
    own_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(own_file), "--allow-missing-env"]) == 0
    assert capsys.readouterr().out.startswith(f"OK: 3 rules in {own_file}")
    with pytest.raises(RuleFileErrors) as caught:
        RuleStore(own_file, env={})  # what `serve` loads its rules with
    assert [str(e) for e in caught.value.errors] == [
        f"{own_file}:{line}:28: rule '{rule}' → trigger → routing_key: environment variable {name} is not set "
        "(set it where the service runs; 'rules check --allow-missing-env' checks the files without it)"
        for line, rule, name in ((5, "ops", "PD_OPS_KEY"), (8, "db", "PD_DB_KEY"), (11, "ops-p3", "PD_OPS_KEY"))
    ]


# -- item 4: a broken calendar is one error ---------------------------------------------------------------

BROKEN_CALENDAR = """\
version: 1
calendars:
  business-hours: {timezone: America/New_York, days: [mon, tue, wed, thu, fri], hours: "9-17"}
rules:
  - name: p1-in-hours
    when: {priority: P1, during: business-hours}
    trigger: {routing_key: R0KEY000000000000000000000000001, severity: critical, summary: s}
  - name: p2-after-hours
    when: {priority: P2, created: {outside: business-hours}}
    trigger: {routing_key: R0KEY000000000000000000000000001, severity: error, summary: s}
"""


def test_a_broken_calendar_reports_its_own_error_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(BROKEN_CALENDAR)
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f'{path}:3:88: calendars → business-hours → hours: hours must look like "08:00-18:00", got \'9-17\' '
        '(did you mean "09:00-17:00"?)',
        f"1 error(s) in {path}",
    ]


def test_a_calendar_in_a_file_that_did_not_load_is_not_called_unknown(tmp_path: Path) -> None:
    (tmp_path / "a-calendars.yaml").write_text(
        "version: 1\ncalendars:\n  business-hours: {timezone: UTC}\n\tbroken: tab\n"
    )
    (tmp_path / "b-rules.yaml").write_text(BROKEN_CALENDAR.split("rules:\n", 1)[1].join(["version: 1\nrules:\n", ""]))
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(tmp_path, env={})
    assert [e.path for e in caught.value.errors] == [str(tmp_path / "a-calendars.yaml")]


def test_an_unknown_calendar_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(BROKEN_CALENDAR.replace('"9-17"', '"09:00-17:00"').replace("during: business-hours", "during: bh"))
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env={})
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:6:34: rule 'p1-in-hours' → when → during: unknown calendar 'bh' (calendars: business-hours)"
    ]


# -- item 11: calendar times in the calendar's own zone ----------------------------------------------------


def test_rules_test_shows_the_calendars_local_time_beside_utc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(BROKEN_CALENDAR.replace('"9-17"', '"09:00-17:00"'))
    ticket = json.loads((EXAMPLES / "zendesk-vip-urgent.ticket.json").read_text())
    ticket.update(priority="P2", created="2026-12-07T23:30:00+00:00")  # a Monday, 18:30 in New York
    ticket_file = tmp_path / "t.json"
    ticket_file.write_text(json.dumps({**ticket, "priority": "P1"}))
    args = ["test", str(path), "--ticket", str(ticket_file)]
    assert main([*args, "--now", "2026-12-05T15:00:00Z"]) == 0  # Saturday 10:00 in New York
    out = capsys.readouterr().out
    assert (
        "now: 2026-12-05T15:00:00+00:00 (Sat 2026-12-05 10:00 America/New_York) is outside calendar 'business-hours'"
    ) in out.splitlines()[2]
    ticket_file.write_text(json.dumps({**ticket, "created": "2026-12-07T15:00:00+00:00"}))  # Monday 10:00 there
    assert main([*args, "--now", "2026-12-07T16:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert (
        "created: 2026-12-07T15:00:00+00:00 (Mon 2026-12-07 10:00 America/New_York) is inside calendar "
        "'business-hours'"
    ) in out
