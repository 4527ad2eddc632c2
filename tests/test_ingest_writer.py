"""The group-commit writer against a real SQLite file: a batch with one row the database refuses still
stores the others, the refused request hears the error, and the writer's connection recovers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.dialects import sqlite

from sync.ingest import Writer
from sync.schema import changes
from sync.store import Store
from tests.factories import change, ticket


def test_a_refused_row_fails_only_its_own_request_and_the_writer_recovers(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    store.upgrade()
    with store.engine.begin() as conn:  # the database itself refuses one delivery (like a disk or constraint error)
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON changes WHEN NEW.delivery_id = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    writer = Writer(store)

    async def batch() -> list[int | BaseException]:
        # all three are queued before the writer thread starts: they reach it as one group commit
        pending = [
            asyncio.ensure_future(writer.submit([change(ticket(str(n)), delivery)]))
            for n, delivery in ((1, "good-1"), (2, "bad"), (3, "good-1"))
        ]
        await asyncio.sleep(0)
        writer.start()
        return await asyncio.gather(*pending, return_exceptions=True)

    async def later() -> int:
        return await writer.submit([change(ticket("4"), "good-2")])

    try:
        first, refused, duplicate = asyncio.run(batch())
        assert first == 1 and duplicate == 0  # the same delivery id again: a duplicate, not a second row
        assert isinstance(refused, Exception) and "refused by the test" in str(refused)
        assert asyncio.run(later()) == 1  # the failed transaction left the writer's connection usable
        with store.engine.connect() as conn:
            stored = conn.execute(select(changes.c.delivery_id).order_by(changes.c.id)).scalars().all()
        assert stored == ["good-1", "good-2"]
    finally:
        writer.stop()
        store.dispose()


def test_the_writer_stores_datetimes_exactly_as_sqlalchemy_does(tmp_path: Path) -> None:
    """Whole seconds included: SQLite compares the stored text, so '09:00:00' and '09:00:00.000000' differ
    in every range query (retention, ordering) even though both read back as the same datetime."""
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    store.upgrade()
    try:
        whole, fraction = ticket("1"), ticket("2", minutes=0.0001)
        assert store.store_webhook_rows([store.webhook_rows([change(whole, "a"), change(fraction, "b")])]) == [2]
        with store.engine.begin() as conn:  # the same values through SQLAlchemy Core
            for t, delivery in ((whole, "c"), (fraction, "d")):
                conn.execute(
                    changes.insert(),
                    {
                        "source": "jira", "connection": "jira", "delivery_id": delivery, "ticket_id": t.id,
                        "ticket_updated": t.updated,
                        "origin": "webhook", "received_at": t.updated, "payload": "{}", "status": "pending",
                    },
                )
            stored = dict(
                conn.exec_driver_sql("SELECT delivery_id, ticket_updated || '|' || received_at FROM changes").all()
            )
        assert stored["a"] == stored["c"] and stored["b"] == stored["d"], stored
        assert stored["a"].endswith(".000000")
    finally:
        store.dispose()


ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), ZoneInfo("Europe/Paris")]
)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=ZONES, allow_imaginary=False
    )
)
def test_a_stored_datetime_is_the_text_sqlalchemys_own_datetime_writes(value: datetime) -> None:
    """The store formats SQLite's datetime text itself (one step, issue 19): it must stay the very text
    SQLAlchemy's DATETIME wrote before, or rows of an existing database compare wrongly against new ones."""
    dialect = sqlite.dialect()
    column = changes.c.ticket_updated.type.dialect_impl(dialect)
    ours = column.bind_processor(dialect)
    theirs = sqlite.DATETIME().bind_processor(dialect)
    assert ours is not None and theirs is not None
    stored = ours(value)
    assert stored == theirs(value.astimezone(UTC).replace(tzinfo=None))
    back = column.result_processor(dialect, None)
    assert back is not None and back(stored) == value.astimezone(UTC)  # the same instant, in UTC


def test_a_datetime_written_as_an_sql_literal_is_the_same_text(tmp_path: Path) -> None:
    """``literal_binds`` (``alembic --sql``, a statement printed to debug) renders the stored text, and the
    statement finds the row it names."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    stmt = select(changes.c.delivery_id).where(changes.c.received_at == when)
    sql = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    assert "'2026-01-02 01:04:05.000000'" in sql
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    store.upgrade()
    try:
        with store.engine.begin() as conn:
            conn.execute(
                changes.insert(),
                {
                    "source": "jira", "connection": "jira", "delivery_id": "lit", "ticket_id": "1",
                    "ticket_updated": when,
                    "origin": "webhook", "received_at": when, "payload": "{}", "status": "pending",
                },
            )
            assert conn.exec_driver_sql(sql).scalars().all() == ["lit"]
    finally:
        store.dispose()
