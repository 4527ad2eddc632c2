"""The engine's statements per batch do not grow with the batch's changes (issue 19, goal 2): a batch's tickets
and links are read in one statement each, and its outbox rows, links, ticket versions, finished changes and
decisions are written by one executemany each. SQLAlchemy's cost per statement (~70 µs) was most of the
engine's CPU per change when each change ran its own seven.

Counted at the database driver's boundary: a ``before_cursor_execute`` listener on the service's real engine
(an executemany is one cursor call, whatever its rows)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event

from kernel.clock import FakeClock
from kernel.model import StatusCategory
from sync.repos import outbox, tickets
from tests.factories import T0, change, ticket
from tests.harness import make_service, receive
from ticketpager.service import Service


@contextmanager
def counting(svc: Service) -> Iterator[list[str]]:
    """The SQL statements the service's engine sends to the driver while inside."""
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(svc.store.engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(svc.store.engine, "before_cursor_execute", count)


def statements_of_one_batch(db_url: str, rules_path: Path, n: int, follow_up: bool) -> int:
    """Statements of one engine batch of ``n`` changes of ``n`` tickets, each planning an event: new tickets
    paging (a trigger, a new link), or (``follow_up``) the same tickets moved to in progress (an acknowledge,
    a link moved on)."""
    svc = make_service(db_url, rules_path, "http://127.0.0.1:9/v2/enqueue", FakeClock(T0), dry_run=True)
    assert svc.engine.batch_size == 50  # what _same_for_1_and_50 counts on
    try:
        ids = [f"{n}-{i}" for i in range(n)]  # tickets of their own: the database is shared by the calls
        assert receive(svc, [change(ticket(i)) for i in ids]) == n
        if follow_up:
            assert svc.engine.run_once() == n
            moved = [ticket(i, status="In Progress", category=StatusCategory.IN_PROGRESS, minutes=5) for i in ids]
            assert receive(svc, [change(t) for t in moved]) == n
        with svc.store.engine.connect() as conn:
            queued, stored = outbox.depth(conn)[0], tickets.count(conn)
        with counting(svc) as sent:
            assert svc.engine.run_once() == n
        with svc.store.engine.connect() as conn:
            assert outbox.depth(conn)[0] == queued + n  # a trigger, or an acknowledge, each
            assert tickets.count(conn) == stored + (0 if follow_up else n)
        return len(sent)
    finally:
        svc.store.dispose()


def _same_for_1_and_50(count: Callable[[int], int]) -> None:
    one, forty_nine, fifty = count(1), count(49), count(50)
    assert forty_nine == one, f"statements per batch: {one} for 1 change, {forty_nine} for 49"
    # 50 is the batch size: a full batch needs no look for what is left (it is claimed again at once)
    assert fifty == one - 1, f"statements per batch: {one} for 1 change, {fifty} for a full batch of 50"
    # the idle probe, a claim, two reads, five writes, the look for what is left, one more; on both databases (SQLite's
    # BEGIN is not a statement of the engine's: the dialect's do_begin runs it on the driver)
    assert one <= 11, one


def test_a_batch_of_new_paging_tickets_costs_as_many_statements_as_one(db_url: str, rules_path: Path) -> None:
    _same_for_1_and_50(lambda n: statements_of_one_batch(db_url, rules_path, n, follow_up=False))


def test_a_batch_of_follow_ups_costs_as_many_statements_as_one(db_url: str, rules_path: Path) -> None:
    _same_for_1_and_50(lambda n: statements_of_one_batch(db_url, rules_path, n, follow_up=True))


def test_the_batch_reads_return_only_the_tickets_asked_for(db_url: str) -> None:
    """:func:`tickets.lock_many` and :func:`tickets.links_of_many` search the key index with one list per key
    column: a stored ticket that the lists' cross product also names (another connection's ticket 2) is left
    out."""
    from sync.store import Store

    store = Store(db_url)
    try:
        store.upgrade()
        a1, a2, b1, b2 = ("jira", "a", "1"), ("jira", "a", "2"), ("jira", "b", "1"), ("jira", "b", "2")
        values = {"key": "OPS-1", "status_category": "new", "updated": T0, "version_hash": "v", "snapshot": "{}",
                  "last_change_id": None, "open_incidents": 0, "recheck": False, "processed_at": T0}  # fmt: skip
        link = {"generation": 1, "dedup_key": "dk", "routing_key": "rk", "state": "triggered", "updated_at": T0}
        with store.begin() as conn:
            tickets.save_tickets(conn, [tickets.ticket_row(k, values) for k in (a1, a2, b1, b2)])
            new = [tickets.link_row(k, "r", {**link, "dedup_key": "-".join(k), "created_at": T0}) for k in (a2, b1)]
            tickets.save_links(conn, new, [])
        with store.begin() as conn:
            assert set(tickets.lock_many(conn, [a1, b2], T0)) == {a1, b2}
            assert tickets.links_of_many(conn, [a1, b2]) == {a1: {}, b2: {}}
            assert tickets.links_of_many(conn, [a2])[a2]["r"].dedup_key == "jira-a-2"
    finally:
        store.dispose()
