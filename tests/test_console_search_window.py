"""A console title search reads a bounded window of tickets per page (newest first): a search that matches
nothing on a million tickets answers in bounded time, and "Search older tickets" continues where the window
ended until the oldest ticket has been read (issue 18: pages < 200 ms at 1 M tickets, bench/console.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from sync.repos import console as q
from sync.schema import tickets
from sync.store import Store

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.upgrade()
    titles = [f"Routine request {n}" for n in range(10)]
    titles[0] = "Payments gateway down"  # the oldest ticket: only a search that reads to the end finds it
    with s.begin() as conn:
        conn.execute(
            insert(tickets),
            [
                {
                    "source": "jira",
                    "connection": "jira",
                    "ticket_id": str(1000 + n),
                    "key": f"OPS-{n}",
                    "status_category": "new",
                    "updated": START + timedelta(minutes=n),
                    "version_hash": f"v{n}",
                    "snapshot": json.dumps({"title": title}),
                    "processed_at": START,
                }
                for n, title in enumerate(titles)
            ],
        )
    yield s
    s.dispose()


def test_a_title_search_reads_one_window_then_continues_to_the_oldest_ticket(store: Store) -> None:
    pages = 0
    after = None
    found: list[str] = []
    with store.engine.connect() as conn:
        while True:
            pages += 1
            window = q.title_search_window(conn, after=after, window=3)
            rows = q.search_tickets(conn, title="gateway", after=after, until=window.until)
            found += [r.key for r in rows]
            if window.until is None:
                break
            after = window.until
            assert pages < 10, "the windows never reached the oldest ticket"
    assert found == ["OPS-0"]
    assert pages == 4  # 10 tickets, 3 per window: the match is in the fourth window


def test_an_unbounded_search_and_a_windowed_one_agree_on_what_matches(store: Store) -> None:
    with store.engine.connect() as conn:
        everything = [r.key for r in q.search_tickets(conn, title="request")]
        window = q.title_search_window(conn, window=4)
        first = [r.key for r in q.search_tickets(conn, title="request", until=window.until)]
    assert everything == [f"OPS-{n}" for n in range(9, 0, -1)]
    assert first == ["OPS-9", "OPS-8", "OPS-7", "OPS-6"]  # the newest four tickets, all matching
