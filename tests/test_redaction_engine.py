"""A change the engine cannot process keeps its error in the database (``changes.error``): that stored
text passes the one redaction too (issue 13, item 5). A database error carries the statement's parameters,
and the outbox row's parameters are the routing key and the event body."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kernel.clock import FakeClock
from tests.factories import ROUTING_KEY, change, ticket
from tests.harness import make_service, receive


def test_a_failed_change_stores_its_error_without_the_routing_key(
    tmp_path: Path, rules_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "tp.db"
    svc = make_service(f"sqlite:///{db}", rules_path, "http://127.0.0.1:9/v2/enqueue", clock)
    try:
        with sqlite3.connect(db) as conn:  # the database refuses the page's outbox row (a constraint, say)
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'refused'); END")
        receive(svc, [change(ticket("10001"))])
        svc.engine.drain()
    finally:
        svc.store.dispose()
    with sqlite3.connect(db) as conn:
        ((status, error),) = conn.execute("SELECT status, error FROM changes").fetchall()
    assert status == "failed"
    assert "IntegrityError" in error and "refused" in error, "the error still says what failed"
    assert ROUTING_KEY not in error, error
