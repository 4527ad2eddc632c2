"""SQLite takes exactly one ``serve``: a second one on the same file says so in one warning naming the first (its
heartbeat tells), and still starts (a killed previous process's heartbeat stays recent for the replica timeout: its
restart must not be refused). Replicas on PostgreSQL are told nothing."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from tests.factories import RULES
from tests.harness import make_service
from tests.serve_proc import Serve, cli_env
from tests.test_crash_recovery import serve_env

DEAD_PD = "http://127.0.0.1:9/v2/enqueue"
WARNING = "another ticketpager serve heartbeats on this SQLite database: "


def test_a_second_serve_on_one_sqlite_file_warns_naming_the_first(tmp_path: Path) -> None:
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    db_url = f"sqlite:///{tmp_path / 'tp.db'}"
    env = cli_env(tmp_path, rules=rules, pagerduty_url=DEAD_PD, **serve_env(db_url, rules, DEAD_PD))
    first = Serve(env).start()
    try:
        second = Serve(env).start()
        assert second.stop() == 0
    finally:
        assert first.stop() == 0
    instance = re.search(r"ticketpager (\S+) on http://", first.output())
    assert instance is not None, first.output()
    [line] = [line for line in second.output().splitlines() if WARNING in line]
    assert " WARNING " in line and f"{WARNING}{instance.group(1)} (heartbeat " in line, line
    assert "SQLite takes exactly one process" in line
    assert WARNING not in first.output()


@pytest.mark.postgres
def test_replicas_on_postgresql_are_not_warned(
    postgres_url: str, rules_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    one = make_service(postgres_url, rules_path, DEAD_PD, clock)
    two = make_service(postgres_url, rules_path, DEAD_PD, clock)
    try:
        with caplog.at_level(logging.INFO, logger="ticketpager"):
            one.refuse_to_share(register=True)
            two.refuse_to_share(register=True)
        assert WARNING not in caplog.text
    finally:
        one.store.dispose()
        two.store.dispose()
