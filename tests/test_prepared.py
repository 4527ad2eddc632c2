"""The engine's statements run on SQLite's driver connection (sync.prepared, issue 19) store and read exactly what
SQLAlchemy Core stores and reads, and fail with Core's errors: each check writes or reads one twin through Core
and compares the database's own text (datetimes, booleans, NULLs, a statement's own constants, lists of keys).
On PostgreSQL every statement is Core's: the same checks run there through the same functions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError, StatementError

from sync.prepared import Prepared
from sync.repos import changes as change_repo
from sync.repos import outbox as outbox_repo
from sync.repos import silences as silence_repo
from sync.repos import tickets as ticket_repo
from sync.schema import changes, links, outbox, tickets
from sync.store import Store
from tests.factories import change, ticket

T = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.upgrade()
    yield s
    s.dispose()


def _stored(conn: Connection, table: str, where: str) -> list[tuple[Any, ...]]:
    """The rows as the database holds them (its own text for datetimes and booleans), key columns left out."""
    rows = conn.exec_driver_sql(f"SELECT * FROM {table} WHERE {where}").all()  # noqa: S608 - the test's own text
    return [tuple(v for v in row[3:]) for row in rows]


def _ticket(tid: str, *, updated: datetime, recheck: bool, snapshot: str | None) -> dict[str, Any]:
    return ticket_repo.ticket_row(
        ("jira", "main", tid),
        {
            "key": "OPS-1",
            "status_category": "new",
            "updated": updated,
            "version_hash": "v" * 64,
            "snapshot": snapshot,
            "last_change_id": None,
            "open_incidents": 2,
            "recheck": recheck,
            "processed_at": updated + timedelta(microseconds=1),
        },
    )


def test_a_ticket_saved_and_saved_again_is_stored_as_core_stores_it(store: Store) -> None:
    upsert = ticket_repo.UPSERT_TICKET[store.dialect]
    with store.begin() as conn:
        for recheck, snapshot, minutes in ((True, '{"a": 1}', 0), (False, None, 7)):  # inserted, then updated
            at = T + timedelta(minutes=minutes)
            Prepared(upsert).executemany(conn, [_ticket("fast", updated=at, recheck=recheck, snapshot=snapshot)])
            conn.execute(upsert, [_ticket("core", updated=at, recheck=recheck, snapshot=snapshot)])
            fast = _stored(conn, "tickets", "ticket_id = 'fast'")
            assert len(fast) == 1
            assert fast == _stored(conn, "tickets", "ticket_id = 'core'")
    with store.engine.connect() as conn:
        row = conn.execute(select(tickets).where(tickets.c.ticket_id == "fast")).mappings().one()
    assert (row["recheck"], row["snapshot"], row["updated"]) == (False, None, T + timedelta(minutes=7))


def test_reads_by_lists_of_keys_return_what_core_returns(store: Store) -> None:
    with store.begin() as conn:
        rows = [_ticket(str(i), updated=T + timedelta(seconds=i), recheck=i % 2 == 0, snapshot=None) for i in range(6)]
        ticket_repo.save_tickets(conn, rows)
    statement = ticket_repo.SELECT_TICKETS
    prepared = Prepared(statement)
    with store.engine.connect() as conn:
        for keys in (["1"], ["0", "3", "5"], [str(i) for i in range(6)], ["absent"]):
            params = ticket_repo._any_of([("jira", "main", k) for k in keys])  # noqa: SLF001 - the engine's own lists
            got = sorted((dict(r) for r in prepared.rows(conn, params)), key=lambda r: r["ticket_id"])
            core = sorted((dict(r) for r in conn.execute(statement, params).mappings()), key=lambda r: r["ticket_id"])
            assert got == core
            assert [r["ticket_id"] for r in got] == sorted(k for k in keys if k != "absent")
            assert all(isinstance(r["recheck"], bool) and r["updated"].tzinfo is not None for r in got)
        assert prepared.rows(conn, {"sources": [], "connections": [], "ids": []}) == []  # an empty list: Core's


def test_a_statements_own_values_are_bound_as_core_binds_them(store: Store) -> None:
    """``UPDATE_LINK`` clears ``hold_version`` (a constant of the statement); a claim compares with 'pending' and
    limits by its own number."""
    with store.begin() as conn:
        for rule in ("fast", "core"):
            link = ticket_repo.link_row(
                ("jira", "main", "1"),
                rule,
                {"generation": 1, "dedup_key": f"d-{rule}", "routing_key": "R" * 32, "state": "triggered"},
            )
            conn.execute(ticket_repo.INSERT_LINK, [{**link, "created_at": T, "updated_at": T, "hold_version": "h"}])
        moved = {"s": "jira", "c": "main", "t": "1", "generation": 2, "routing_key": "R" * 32, "state": "resolved"}
        Prepared(ticket_repo.UPDATE_LINK).executemany(
            conn, [{**moved, "r": "fast", "dedup_key": "d-fast", "updated_at": T + timedelta(hours=1)}]
        )
        conn.execute(
            ticket_repo.UPDATE_LINK, {**moved, "r": "core", "dedup_key": "d-core", "updated_at": T + timedelta(hours=1)}
        )
        fast, core = (conn.execute(select(links).where(links.c.rule == r)).mappings().one() for r in ("fast", "core"))
    assert (fast["hold_version"], fast["generation"], fast["state"]) == (None, 2, "resolved")
    assert {k: v for k, v in fast.items() if k not in ("id", "rule", "dedup_key")} == {
        k: v for k, v in core.items() if k not in ("id", "rule", "dedup_key")
    }


def test_a_claim_returns_the_oldest_change_per_ticket_as_core_does(store: Store) -> None:
    batch = [change(ticket(str(i % 4), minutes=i)) for i in range(10)]  # four tickets, later changes behind
    with store.begin() as conn:
        change_repo.insert_changes(conn, batch)
    for limit in (1, 3, 50):
        statement = change_repo.claim_statement(limit, skip_locked=store.dialect == "postgresql")
        with store.begin() as conn:
            got = [dict(r) for r in change_repo.claim(conn, limit)]
            assert got == [dict(r) for r in conn.execute(statement).mappings()]
        assert [r["ticket_id"] for r in got] == ["0", "1", "2", "3"][:limit]


def test_driver_errors_are_sqlalchemys_so_the_engine_tells_them_from_a_bad_change(store: Store) -> None:
    """A database error propagates as Core's (the engine retries the batch) instead of a bare ``sqlite3``
    error, which the engine would take for the change's own fault and mark the change failed."""
    row = _ticket("dup", updated=T, recheck=False, snapshot=None)
    with pytest.raises(IntegrityError), store.begin() as conn:
        Prepared(tickets.insert()).executemany(conn, [row, row])
    with store.begin() as conn:
        conn.execute(text("DROP TABLE silenced_tickets"))
        conn.execute(text("DROP TABLE silences"))
    expected = OperationalError if store.dialect == "sqlite" else ProgrammingError  # as each driver reports it
    with pytest.raises(expected), store.engine.connect() as conn:
        silence_repo.active_silences(conn, T)


def test_a_missing_value_is_refused_as_core_refuses_it_not_stored_as_null(store: Store) -> None:
    with store.begin() as conn:
        change_repo.insert_changes(conn, [change(ticket("1"))])
        (claimed,) = change_repo.claim(conn, 1)
    with pytest.raises(StatementError, match="'at'"), store.begin() as conn:
        Prepared(change_repo.FINISH).executemany(conn, [{"i": claimed["id"], "status": "processed"}])
    with store.engine.connect() as conn:
        assert change_repo.count(conn, "pending") == 1


def test_a_delivery_claim_returns_and_takes_what_core_would(store: Store) -> None:
    """The claim's rows (with the arrival of the change that queued each, a labelled subquery) are Core's rows,
    and the rows it takes (a list of ids) are the worker's afterwards."""
    with store.begin() as conn:
        change_repo.insert_changes(conn, [change(ticket("1"))])
        (queued_by,) = change_repo.claim(conn, 1)
        for n in range(4):
            values = {"kind": "incident", "destination": "pagerduty", "source": "jira", "connection": "main"}
            outbox_repo.enqueue(
                conn, **values, ticket_id=str(n), ticket_key=f"OPS-{n}", rule="r", action="trigger",
                dedup_key=f"d{n}", generation=1, limit_key="R" * 32, body="{}",
                change_id=queued_by["id"] if n % 2 else None, now=T + timedelta(seconds=n),
            )  # fmt: skip
    claims = outbox_repo.Claims(takeover=False)
    now = T + timedelta(minutes=1)
    with store.begin() as conn:
        statement = claims.statement(store.dialect, 3).statement
        core = [dict(r) for r in conn.execute(statement, {"now": now, "stale": now}).mappings()]
        got = [dict(r) for r in claims.claim(conn, 3, now, now, worker="w/0", until=now + timedelta(minutes=1))]
    assert got == core
    assert [r["ticket_id"] for r in got] == ["0", "1", "2"]
    assert [r["change_received_at"] is not None for r in got] == [False, True, False]
    with store.engine.connect() as conn:
        held = conn.execute(select(outbox.c.ticket_id).where(outbox.c.claimed_by == "w/0").order_by(outbox.c.id))
        assert list(held.scalars()) == ["0", "1", "2"]


HOT = {  # the statements of an engine batch and of a delivery worker's claim and marks, with their parameters
    "claim": (change_repo.claim_statement(50, skip_locked=False), ()),
    "any pending": (change_repo.ANY_PENDING, ()),
    "finish": (change_repo.FINISH, ("i", "status", "at")),
    "tickets": (ticket_repo.SELECT_TICKETS, ("sources", "connections", "ids")),
    "links": (ticket_repo.SELECT_LINKS_OF_TICKETS, ("sources", "connections", "ids")),
    "save tickets": (ticket_repo.UPSERT_TICKET["sqlite"], tuple(_ticket("1", updated=T, recheck=False, snapshot=None))),
    "insert links": (ticket_repo.INSERT_LINK, ("source", "connection", "ticket_id", "rule", "generation")),
    "update links": (
        ticket_repo.UPDATE_LINK,
        ("s", "c", "t", "r", "generation", "dedup_key", "routing_key", "state", "updated_at"),
    ),  # fmt: skip
    "decisions": (ticket_repo.INSERT_DECISION, ("source", "connection", "ticket_id", "outcome")),
    "silences": (silence_repo.ACTIVE_SILENCES, ("now",)),
    "outbox": (outbox_repo.INSERT, ("kind", "destination", "body", "next_attempt_at")),
    "delivery claim": (outbox_repo.Claims(takeover=True).statement("sqlite", 10).statement, ("now", "stale")),
    "take": (outbox_repo.TAKE, ("ids", "until", "worker")),
    "mark sent": (outbox_repo.MARK_SENT, ("i", "worker", "now", "dry_run")),
    "renew": (outbox_repo.RENEW, ("i", "worker", "until")),
}


@pytest.mark.parametrize("name", sorted(HOT))
def test_sqlite_runs_the_hot_statements_on_its_driver(name: str, tmp_path: Path) -> None:
    """What the speed rests on (an upgrade of SQLAlchemy that changed how it compiles these would quietly send
    them back through Core): ``bench.callgrind`` counts what it saves."""
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    statement, keys = HOT[name]
    try:
        assert Prepared(statement).on_driver(store.engine.dialect, keys)
    finally:
        store.dispose()


def test_the_webhook_writer_stores_every_column_as_cores_insert_does(tmp_path: Path) -> None:
    """The writer's INSERT (its own ``BEGIN IMMEDIATE`` on the driver) is compiled from Core by ``Prepared``: a change
    it stores reads back, every column, as the same change inserted by Core; a second delivery is a duplicate."""
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    store.upgrade()
    try:
        ours, cores = change(ticket("1", minutes=0.5), "by-writer"), change(ticket("1", minutes=0.5), "by-core")
        assert store.store_webhook_rows([store.webhook_rows([ours]), store.webhook_rows([ours])]) == [1, 0]
        with store.begin() as conn:
            conn.execute(changes.insert(), [change_repo.change_row(cores)])
        with store.engine.connect() as conn:
            stored = {r["delivery_id"]: dict(r) for r in conn.execute(select(changes)).mappings()}
            as_text = dict(conn.execute(text("SELECT delivery_id, ticket_updated || received_at FROM changes")).all())
        written, inserted = stored["by-writer"], stored["by-core"]
        for row in (written, inserted):  # the payload names its delivery id too
            row["payload"] = row["payload"].replace(row.pop("delivery_id"), "")
            del row["id"]
        assert written == inserted
        assert as_text["by-writer"] == as_text["by-core"], "the same stored text, which SQLite's ranges compare"
    finally:
        store.dispose()


def test_what_core_would_name_itself_or_read_row_by_row_is_read_as_core_reads_it(store: Store) -> None:
    """Columns that share a name are left to Core, which tells them apart; an error on a later row (SQLite reads
    the first with the statement, the rest as they are fetched) is Core's error too."""
    with store.begin() as conn:
        change_repo.insert_changes(conn, [change(ticket(str(i))) for i in range(3)])
    both = select(changes.c.id, tickets.c.ticket_id, changes.c.ticket_id).select_from(changes.outerjoin(
        tickets, tickets.c.ticket_id == changes.c.ticket_id
    ))  # fmt: skip
    with store.engine.connect() as conn:
        assert [dict(r) for r in Prepared(both).rows(conn)] == [dict(r) for r in conn.execute(both).mappings()]
        assert len(Prepared(both).rows(conn)[0]) == 3  # three columns, two of them named ticket_id
    with store.begin() as conn:
        conn.execute(changes.update().where(changes.c.id == 3).values(id=-(2**63)))
    overflow = select(func.abs(changes.c.id).label("n")).order_by(changes.c.id.desc())  # 2, 1, then -2**63
    with pytest.raises(DBAPIError), store.engine.connect() as conn:
        Prepared(overflow).rows(conn)


def test_a_write_outside_a_transaction_begins_one_as_core_does(store: Store) -> None:
    """Rolled back with it, not committed on its own by the driver."""
    with store.begin() as conn:
        change_repo.insert_changes(conn, [change(ticket("1"))])
    with store.engine.connect() as conn:
        rows = [{"i": 1, "status": "processed", "at": T}]
        assert Prepared(change_repo.FINISH).executemany(conn, rows) == 1
        conn.rollback()
    with store.engine.connect() as conn:
        assert change_repo.count(conn, "pending") == 1
