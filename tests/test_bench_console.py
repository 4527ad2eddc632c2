"""The console bench (bench/console.py) runs with a small fill on SQLite, and on PostgreSQL when
TICKETPAGER_TEST_POSTGRES_URL is set, so it cannot rot unnoticed (it once built a 3-part keyset position after
the ticket list needed 4, and read timelines without the connection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import console as bench
from sync.store import Store
from tests.conftest import PG_SKIP, PG_URL

NAMES = {
    "tickets: connection filter (1 ticket in 30)",
    "tickets: connection filter (1 ticket in 3000)",
    "tickets: connection + title 'VPN', one window",
    "timeline: named connection's ticket",
    "tickets: next page (keyset)",
}


def test_every_case_runs_on_a_small_sqlite_fill(tmp_path: Path) -> None:
    lines: list[str] = []
    before, after = bench.run(f"sqlite:///{tmp_path / 'bench.db'}", tickets=3000, decisions=6000, runs=1,
                              print_=lines.append)  # fmt: skip
    assert NAMES <= set(before) and after == {}
    assert all(ms >= 0 for ms in before.values())
    assert sum(line.startswith("| ") for line in lines) == len(before)  # one row per case


def test_the_connection_cases_read_that_connections_rows(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'bench.db'}")
    try:
        store.upgrade()
        with store.engine.begin() as conn:
            bench.fill_rows(conn, 3000, 6000)
        with store.engine.connect() as conn:
            results = {name: case() for name, case in bench.cases(conn)}
    finally:
        store.dispose()
    acme = results["tickets: connection filter (1 ticket in 30)"]
    assert acme and {r.connection for r in acme} == {"acme-zendesk"}
    assert [r.connection for r in results["tickets: connection filter (1 ticket in 3000)"]] == ["tiny-zendesk"]
    timeline = results["timeline: named connection's ticket"]
    assert timeline is not None and timeline["connection"] == "acme-zendesk" and timeline["entries"]
    first = results["tickets: newest first"]
    assert results["tickets: next page (keyset)"][0].updated < first[-1].updated


def test_the_postgresql_fill_runs_with_small_figures() -> None:
    if not PG_URL:
        pytest.skip(PG_SKIP)
    before, _ = bench.run(PG_URL, tickets=3000, decisions=6000, runs=1, print_=lambda _line: None)
    assert NAMES <= set(before)
