"""Numeric settings out of range stop every command at start (exit 2, one line naming the variable and the bound),
instead of a service that starts "healthy" and then busy-loops, answers every request 503 or never sends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ticketpager import cli

ROOT = Path(__file__).resolve().parent.parent
#: a serve that wrongly starts runs until killed: a refusal takes well under this
START_TIMEOUT = 60
#: where a serve that wrongly starts would listen (a port of this test's range, never the default 8080)
FALLBACK_PORT = "18417"


def _status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    assert cli.main(["--database-url", url, "db", "upgrade"]) == 0
    capsys.readouterr()
    code = cli.main(["status", "--database-url", url])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value", "bound"),
    [
        ("TICKETPAGER_ENGINE__BATCH_SIZE", "0", "greater than or equal to 1"),
        ("TICKETPAGER_PAGERDUTY__TIMEOUT_SECONDS", "-5", "greater than 0"),
        ("TICKETPAGER_ENGINE__IDLE_SECONDS", "0", "greater than 0"),
        ("TICKETPAGER_ENGINE__GAUGE_INTERVAL_SECONDS", "0", "greater than 0"),
        ("TICKETPAGER_HTTP__MAX_CONNECTIONS", "0", "greater than or equal to 1"),
        ("TICKETPAGER_MAX_BODY_BYTES", "-1", "greater than or equal to 1"),
        ("TICKETPAGER_PAGERDUTY__RATE_LIMIT_PER_MINUTE", "0", "greater than or equal to 1"),
        ("TICKETPAGER_RETENTION_DAYS", "-1", "greater than or equal to 1"),
        ("TICKETPAGER_PORT", "99999", "less than or equal to 65535"),
        ("TICKETPAGER_PORT", "0", "greater than or equal to 1"),
        ("TICKETPAGER_PAGERDUTY__WORKERS", "0", "greater than or equal to 1"),
        ("TICKETPAGER_JIRA__POLL_INTERVAL_SECONDS", "0", "greater than 0"),
        ("TICKETPAGER_ZENDESK__PAGE_SIZE", "5000", "less than or equal to 1000"),
        ("TICKETPAGER_SERVICENOW__TIMEOUT_SECONDS", "0", "greater than 0"),
        ("TICKETPAGER_CONSOLE__SESSION_HOURS", "0", "greater than 0"),
    ],
)
def test_a_number_out_of_range_is_one_line_and_exit_2(
    name: str, value: str, bound: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    monkeypatch.setenv(name, value)
    code = cli.main(["status", "--database-url", url])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"ticketpager: {name}: Input should be {bound} (got {value!r})\n"
    assert not (tmp_path / "tp.db").exists(), "refused before the database is touched"


@pytest.mark.parametrize(
    "name",
    [
        "TICKETPAGER_PAGERDUTY__INCIDENT_CHECK_SECONDS",  # 0: never ask PagerDuty about quiet incidents
        "TICKETPAGER_ENGINE__WRITE_BACK_WORKERS",  # 0: PagerDuty's workers write the notes too
        "TICKETPAGER_HTTP__DRAIN_BYTES",  # 0: an over-limit body is never read before the 413
        "TICKETPAGER_JIRA__LOOKBACK_SECONDS",  # 0: the first poll starts now
    ],
)
def test_zero_is_accepted_where_it_means_something(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, "0")
    code, err = _status(tmp_path, capsys)
    assert code == 0 and err == ""


def _serve(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TICKETPAGER_")}
    return subprocess.run(
        [sys.executable, "-m", "ticketpager", "--database-url", f"sqlite:///{tmp_path / 'tp.db'}", "serve",
         "--dry-run", *argv],
        env=clean | {"PYTHONPATH": str(ROOT), "TICKETPAGER_PORT": FALLBACK_PORT} | env, cwd=tmp_path,
        capture_output=True, text=True, timeout=START_TIMEOUT,
    )  # fmt: skip


def test_a_port_over_65535_in_the_environment_stops_serve(tmp_path: Path) -> None:
    """It used to log 'on http://127.0.0.1:99999' and listen on a port the kernel picked."""
    done = _serve(tmp_path, TICKETPAGER_PORT="99999")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == "ticketpager: TICKETPAGER_PORT: Input should be less than or equal to 65535 (got '99999')\n"


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range_on_the_command_line_stops_serve(port: str, tmp_path: Path) -> None:
    done = _serve(tmp_path, "--port", port)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    refusal = f"ticketpager serve: error: argument --port: '{port}' is not a port (1-65535)"
    assert done.stderr.splitlines()[-1] == refusal
