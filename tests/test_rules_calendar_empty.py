"""``hours: []`` in a calendar meant "never open", so every rule using the calendar silently never held: it is
refused, like ``days: []``, whose message no longer says it "must be a list" (it is one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], calendar: str) -> tuple[Path, list[str]]:
    path = tmp_path / "hours.yaml"
    path.write_text(
        "version: 1\ncalendars:\n"
        f"  support: {{timezone: Europe/Berlin, {calendar}}}\n"
        "rules:\n  - name: p2\n    when: {priority: P2, during: support}\n"
        "    trigger: {routing_key: abcdefabcdefabcdefabcdefabcdef12, severity: warning, summary: s}\n"
    )
    assert main(["check", str(path)]) == 1
    return path, capsys.readouterr().err.splitlines()


def test_empty_hours_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, err = _check(tmp_path, capsys, "days: [mon, tue], hours: []")
    assert err == [
        f"{path}:3:63: calendars → support → hours: hours is empty, so the calendar is never open: give its hours, "
        'e.g. ["08:00-18:00"] (leave hours out for all day)',
        f"1 error(s) in {path}",
    ]


def test_empty_days_say_why_not_that_a_list_is_needed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, err = _check(tmp_path, capsys, 'days: [], hours: "08:00-18:00"')
    assert err == [
        f"{path}:3:44: calendars → support → days: days is empty, so the calendar is never open: list its days, "
        "e.g. [mon, tue, wed, thu, fri] (leave days out for every day)",
        f"1 error(s) in {path}",
    ]


def test_days_that_are_not_a_list_still_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, err = _check(tmp_path, capsys, "days: 5")
    assert err[0] == f"{path}:3:44: calendars → support → days: days must be a list such as [mon, tue, wed, thu, fri]"
