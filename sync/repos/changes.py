"""SQL of the ``changes`` table: the changes received (webhooks, polls), claimed and processed by the engine.
A change is deduplicated per (source, connection, delivery id): two instances of one system may send the same
delivery id (a poll's ``poll:<id>:<updated>``) for two different tickets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Dialect, Select, and_, bindparam, delete, exists, func, select, update

from kernel import jsonutil
from kernel.model import TicketChange, stored_delivery_id
from sync.db import insert_ignore
from sync.prepared import Prepared, Row
from sync.schema import changes

_B = bindparam
#: "is anything pending?": the engine's read before it takes a write transaction (an idle engine takes none)
ANY_PENDING = select(changes.c.id).where(changes.c.status == "pending").limit(1)
FINISH = update(changes).where(changes.c.id == _B("i")).values(status=_B("status"), processed_at=_B("at"))
FAIL = (
    update(changes)
    .where(changes.c.id == _B("i"), changes.c.status == "pending")
    .values(status="failed", error=_B("error"), processed_at=_B("at"))
)
_FINISH = Prepared(FINISH)
SELECT_PAYLOAD = select(changes.c.payload).where(changes.c.id == _B("i"))
_SQLITE_INSERT = (
    "INSERT INTO changes (source, connection, delivery_id, ticket_id, ticket_updated, origin, received_at, payload, "
    "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending') ON CONFLICT DO NOTHING"
)


# -- insert ----------------------------------------------------------------------------------------
def change_row(change: TicketChange) -> dict[str, Any]:
    return {
        "source": change.ticket.source,
        "connection": change.ticket.connection,
        "delivery_id": stored_delivery_id(change.delivery_id),
        "ticket_id": change.ticket.id,
        "ticket_updated": change.ticket.updated,
        "origin": change.origin.value,
        "received_at": change.received_at,
        "payload": jsonutil.dumps(change.to_json()),
        "status": "pending",
    }


def insert_changes(conn: Connection, batch: Sequence[TicketChange]) -> int:
    """Store changes, skipping ones already received (same source, connection and delivery id). Returns how many
    are new."""
    return insert_changes_each(conn, [batch])[0]


def insert_changes_each(conn: Connection, groups: Sequence[Sequence[TicketChange]]) -> list[int]:
    """Store several requests' changes with one multi-row INSERT; per group, how many were new.

    A delivery id already stored, or repeated earlier in the same call, counts as a duplicate.
    """
    stamp = stamper(conn.dialect)
    rows = [insert_rows(conn.dialect, stamp, group) for group in groups]
    if conn.dialect.name == "sqlite":  # the transaction's own driver connection
        return insert_rows_sqlite(conn.connection.driver_connection, rows)
    return insert_rows_returning(conn, rows)


def insert_rows(dialect: Dialect, stamp: Callable[[Any], Any], batch: Sequence[TicketChange]) -> list[Any]:
    """``batch`` as the dialect's insert takes it: parameter tuples for SQLite's prepared INSERT, column
    dicts for PostgreSQL's multi-row INSERT … RETURNING."""
    if dialect.name == "sqlite":
        return [sqlite_change_row(c, stamp) for c in batch]
    return [change_row(c) for c in batch]


def stamper(dialect: Dialect) -> Callable[[Any], Any]:
    """The dialect's own bind processor of the datetime columns (SQLite: the exact text SQLAlchemy stores,
    ``2026-11-27 09:00:00.000000``; the generic type's would leave a ``datetime`` for the driver to format,
    without the zero microseconds, which then compares differently in SQL)."""
    stamp = changes.c.ticket_updated.type.dialect_impl(dialect).bind_processor(dialect)
    assert stamp is not None  # UTCDateTime always converts
    return stamp


def insert_rows_returning(conn: Connection, groups: Sequence[Sequence[dict[str, Any]]]) -> list[int]:
    """PostgreSQL: one multi-row INSERT for every group; per group, how many rows were new."""
    rows = [row for group in groups for row in group]
    if not rows:
        return [0] * len(groups)
    # RETURNING names what was inserted (executemany rowcount is unreliable on psycopg)
    stmt = insert_ignore(conn, changes).returning(changes.c.source, changes.c.connection, changes.c.delivery_id)
    inserted = {(source, connection, delivery) for source, connection, delivery in conn.execute(stmt, rows).all()}
    counts: list[int] = []
    seen: set[tuple[str, str, str]] = set()
    index = 0
    for group in groups:
        new = 0
        for _row in group:
            key = (rows[index]["source"], rows[index]["connection"], rows[index]["delivery_id"])
            index += 1
            if key in inserted and key not in seen:
                new += 1
            seen.add(key)
        counts.append(new)
    return counts


def sqlite_change_row(change: TicketChange, stamp: Callable[[Any], Any]) -> tuple[Any, ...]:
    """The parameters of :data:`_SQLITE_INSERT` for ``change``. Datetimes go through the column type's own
    bind processor (``stamp``), so the stored text is exactly what SQLAlchemy writes and reads."""
    ticket = change.ticket
    return (
        ticket.source,
        ticket.connection,
        stored_delivery_id(change.delivery_id),
        ticket.id,
        stamp(ticket.updated),
        change.origin.value,
        stamp(change.received_at),
        jsonutil.dumps(change.to_json()),
    )


def insert_rows_sqlite(raw: Any, groups: Sequence[Sequence[tuple[Any, ...]]]) -> list[int]:
    """SQLite: one prepared INSERT per row on the driver (``sqlite3``) connection, inside the caller's
    transaction; its rowcount says new (1) or duplicate (0). SQLAlchemy's per-statement machinery cost
    more than SQLite itself on this path (measured)."""
    cursor = raw.cursor()
    counts: list[int] = []
    try:
        for group in groups:
            new = 0
            for row in group:
                cursor.execute(_SQLITE_INSERT, row)
                new += cursor.rowcount
            counts.append(new)
    finally:
        cursor.close()
    return counts


# -- the engine's side -----------------------------------------------------------------------------
def claim_statement(limit: int, *, skip_locked: bool) -> Select[Any]:
    """The oldest claimable pending changes: a ticket's changes are processed in arrival order, so a change
    is never claimed while an earlier change of the same ticket is still pending (maybe claimed by another
    replica)."""
    earlier = changes.alias("earlier")
    stmt = (
        select(changes.c.id, changes.c.source, changes.c.connection, changes.c.ticket_id, changes.c.payload)
        .where(
            changes.c.status == "pending",
            ~exists().where(
                earlier.c.source == changes.c.source,
                earlier.c.connection == changes.c.connection,
                earlier.c.ticket_id == changes.c.ticket_id,
                earlier.c.status == "pending",
                earlier.c.id < changes.c.id,
            ),
        )
        .order_by(changes.c.id)
        .limit(limit)
    )
    return stmt.with_for_update(skip_locked=True) if skip_locked else stmt


#: built once per (limit, dialect): building it cost more than the query when the engine woke for every
#: webhook commit (issue 19)
_claim = cache(lambda limit, skip_locked: Prepared(claim_statement(limit, skip_locked=skip_locked)))
_ANY_PENDING = Prepared(ANY_PENDING)


def any_pending(conn: Connection) -> bool:
    return bool(_ANY_PENDING.rows(conn))


def claim(conn: Connection, limit: int) -> list[Row]:
    """Up to ``limit`` claimable changes (id, source, connection, ticket_id, payload); on PostgreSQL locked,
    skipping rows another replica holds."""
    return _claim(limit, conn.dialect.name == "postgresql").rows(conn)


def finished(change_id: int, status: str, at: datetime) -> dict[str, Any]:
    """One row's parameters for :func:`finish`."""
    return {"i": change_id, "status": status, "at": at}


def finish(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Mark changes processed (or stale, same_version…): rows from :func:`finished`, one executemany."""
    _FINISH.executemany(conn, rows)


def fail(conn: Connection, change_id: int, error: str, at: datetime) -> None:
    """Mark a still pending change ``failed`` with its (already redacted) error text."""
    conn.execute(FAIL, {"i": change_id, "error": error, "at": at})


def payload(conn: Connection, change_id: int) -> str | None:
    """The stored payload of a change (``None``: pruned by retention)."""
    value = conn.execute(SELECT_PAYLOAD, {"i": change_id}).scalar_one_or_none()
    return None if value is None else str(value)


def count(conn: Connection, status: str) -> int:
    return int(conn.execute(select(func.count()).select_from(changes).where(changes.c.status == status)).scalar_one())


def prune(conn: Connection, before: datetime, chunk: int) -> int:
    """Delete up to ``chunk`` processed (or failed) changes received before ``before``; returns how many."""
    ids = select(changes.c.id).where(and_(changes.c.received_at < before, changes.c.status != "pending"))
    return int(conn.execute(delete(changes).where(changes.c.id.in_(ids.limit(chunk).scalar_subquery()))).rowcount or 0)
