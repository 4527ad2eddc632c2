"""Commands that only read (the monitoring cron's ``status --check`` first of all) never migrate the database: a
schema behind this version is reported in one line with exit 2, never upgraded behind the operator's back (a
migration the release notes call incompatible with the version still running, mid-rollout), and never waited for
behind another process's migration lock. ``serve``, ``poll`` and ``db upgrade`` migrate, and say so when they wait
for that lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from sync.db import MIGRATION_LOCK_ID, current_revision, head_revision, make_engine, upgrade
from ticketpager import cli

ROOT = Path(__file__).resolve().parent.parent
OLD = "0009"  # a revision before the newest migrations, as a database not yet migrated for this release is
READ_COMMANDS = [
    ["status"],
    ["status", "--check"],
    ["status", "--json"],
    ["deadletters", "list"],
    ["silence", "list"],
]
#: a command that returns in time did not wait for the lock; one that hangs is stopped here, and the test fails
PROMPT_SECONDS = 60


def _at(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine, revision)
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def _behind() -> str:
    return (
        f"ticketpager: the database is at revision {OLD}, this version needs {head_revision()}: "
        "run 'ticketpager db upgrade' (or start serve)"
    )


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_a_read_command_reports_a_schema_behind_and_leaves_it(
    command: list[str], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _at(db_url, OLD)
    code = cli.main(["--database-url", db_url, *command])
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and "Traceback" not in out.err
    assert out.err.strip().splitlines()[-1] == _behind()
    assert _revision(db_url) == OLD, "a read command migrated the database"


def test_db_upgrade_then_the_read_commands_work(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _at(db_url, OLD)
    assert cli.main(["--database-url", db_url, "db", "upgrade"]) == 0
    assert _revision(db_url) == head_revision()
    capsys.readouterr()
    for command in READ_COMMANDS:
        assert cli.main(["--database-url", db_url, *command]) == 0, command
    assert "PROBLEM" not in capsys.readouterr().out


def test_poll_still_migrates(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _at(db_url, OLD)
    code = cli.main(["--database-url", db_url, "poll", "--once", "--dry-run"])
    assert code == 2 and "no source is enabled" in capsys.readouterr().err  # after migrating: nothing to poll here
    assert _revision(db_url) == head_revision()


@contextmanager
def _lock_held(url: str) -> Iterator[Connection]:
    """Another session holding the migration lock, as a replica does while it migrates."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock_all()"))
                conn.commit()
    finally:
        engine.dispose()


def _ticketpager(url: str, *argv: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TICKETPAGER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "ticketpager", "--database-url", url, *argv],
        env=clean | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    """Kill ``process`` if it still runs (it hung), and reap it with its pipes."""
    if process.poll() is None:
        process.kill()
    process.communicate()


@pytest.mark.postgres
def test_status_check_never_waits_for_the_migration_lock(postgres_url: str) -> None:
    """It used to hang, silently, for as long as another session held the lock."""
    _at(postgres_url, OLD)
    with _lock_held(postgres_url):
        check = _ticketpager(postgres_url, "status", "--check")
        try:
            out, err = check.communicate(timeout=PROMPT_SECONDS)
        finally:
            _stop(check)
    assert check.returncode == 2 and out == ""
    assert err.strip().splitlines()[-1] == _behind()
    assert _revision(postgres_url) == OLD


@pytest.mark.postgres
def test_a_migration_waiting_for_the_lock_says_so_then_migrates(postgres_url: str) -> None:
    _at(postgres_url, OLD)
    with _lock_held(postgres_url) as lock:
        upgrading = _ticketpager(postgres_url, "db", "upgrade")
        try:
            assert upgrading.stderr is not None
            deadline = time.monotonic() + PROMPT_SECONDS
            said = []
            while time.monotonic() < deadline:  # its lines, up to the one saying it waits (it waits until we let go)
                line = upgrading.stderr.readline()
                said.append(line)
                if "waiting for the migration lock" in line or not line:
                    break
            assert said[-1].rstrip().endswith("ticketpager.db: waiting for the migration lock held by another process")
            assert upgrading.poll() is None, "it waits while the lock is held"
            assert _revision(postgres_url) == OLD
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID})
            lock.commit()
            out, _ = upgrading.communicate(timeout=PROMPT_SECONDS)
        finally:
            _stop(upgrading)
    assert upgrading.returncode == 0 and f"database at revision {head_revision()}" in out
    assert _revision(postgres_url) == head_revision()


def test_a_migration_that_finds_the_lock_free_says_nothing_of_it(
    db_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _at(db_url, OLD)
    assert cli.main(["--database-url", db_url, "db", "upgrade"]) == 0
    assert "waiting for the migration lock" not in caplog.text + capsys.readouterr().err
