"""A SIGTERM (or SIGINT) at any point of ``serve``'s start-up stops it: exit 0 within seconds, its workers stopped.
One that came after ``serve`` set its handlers aside for uvicorn's and before uvicorn installed its own was lost, and
the process ran on until a SIGKILL (2 of 7 tries, 20 ms after the ``… on http://`` line); one during the migrations
ended it by the signal's default action, before its workers could stop."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from sync.schema import replicas
from tests.factories import RULES
from tests.serve_proc import CLI, ROOT, cli_env, free_port
from tests.test_crash_recovery import serve_env

#: how long after the ``… on http://`` line the signal is sent: before uvicorn's handlers, around them, after
AFTER_LISTENING = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    db = tmp_path / "tp.db"
    env = cli_env(tmp_path, rules=rules, pagerduty_url="http://127.0.0.1:9/v2/enqueue",
                  **serve_env(f"sqlite:///{db}", rules, "http://127.0.0.1:9/v2/enqueue"),
                  TICKETPAGER_PORT=str(free_port()))
    proc = subprocess.Popen(  # noqa: S603
        [*CLI, "serve"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, db


def _stopped(proc: subprocess.Popen[str], sig: int, before: list[str]) -> str:
    """Send ``sig``; the process must exit 0 within 15 s, saying it stopped. Its whole output."""
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail("serve ran on after the signal:\n" + "".join(before) + out)
    output = "".join(before) + out
    assert proc.returncode == 0, output
    assert output.rstrip().endswith("ticketpager.cli: stopped"), output
    return output


@pytest.mark.parametrize("delay", AFTER_LISTENING)
def test_a_sigterm_right_after_the_listening_line_stops_serve(tmp_path: Path, delay: float) -> None:
    proc, _ = _serve(tmp_path)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if " on http://" in line:
            break
    else:
        pytest.fail("serve exited before listening:\n" + "".join(lines))
    time.sleep(delay)
    _stopped(proc, signal.SIGTERM, lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_the_migrations_stops_serve_once_it_started(tmp_path: Path, sig: int) -> None:
    """The database file appears when ``serve`` first connects to migrate, long before it listens: the signal is
    remembered, the server starts and stops at once, and the workers stop as after any SIGTERM."""
    proc, db = _serve(tmp_path)
    deadline = time.monotonic() + 30
    while not db.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert db.exists(), "serve never created its database"
    _stopped(proc, sig, [])
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:  # stopped cleanly: its heartbeat removed, not left to go stale
            assert conn.execute(select(replicas.c.instance)).all() == []
    finally:
        engine.dispose()
