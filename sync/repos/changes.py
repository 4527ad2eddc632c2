"""SQL of the ``changes`` table: the changes received (webhooks, polls), claimed and processed by the engine.
A change is deduplicated per (source, connection, delivery id): two instances of one system may send the same
delivery id (a poll's ``poll:<id>:<updated>``) for two different tickets."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Dialect, Select, and_, bindparam, delete, exists, func, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

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


# -- insert ----------------------------------------------------------------------------------------
#: the webhook writer's INSERT on SQLite, which it runs on the driver connection in its own ``BEGIN IMMEDIATE``
#: (:func:`insert_rows_sqlite`): written here in Core, compiled to SQLite's text and parameter order by ``Prepared``
_INSERT_IGNORE = Prepared(sqlite.insert(changes).on_conflict_do_nothing())
#: the names of :func:`change_row`'s values
_ROW_KEYS: tuple[str, ...] = (
    "source", "connection", "delivery_id", "ticket_id", "ticket_updated", "origin", "received_at", "payload", "status",
)  # fmt: skip


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
    rows = [insert_rows(conn.dialect, group) for group in groups]
    if conn.dialect.name == "sqlite":  # the transaction's own driver connection
        return insert_rows_sqlite(conn.dialect, conn.connection.driver_connection, rows)
    return insert_rows_returning(conn, rows)


def insert_rows(dialect: Dialect, batch: Sequence[TicketChange]) -> list[Any]:
    """``batch`` as the dialect's insert takes it: parameter lists for SQLite's prepared INSERT (the columns' bind
    processors applied: the stored text is exactly what SQLAlchemy writes and reads, ``2026-11-27 09:00:00.000000``),
    column dicts for PostgreSQL's multi-row INSERT … RETURNING."""
    if dialect.name == "sqlite":
        params = prepare_sqlite_insert(dialect)[1]
        return [params(change_row(c)) for c in batch]
    return [change_row(c) for c in batch]


def prepare_sqlite_insert(dialect: Dialect) -> tuple[str, Callable[[Mapping[str, Any]], list[Any]]]:
    """The SQL text of :data:`_INSERT_IGNORE` on SQLite and the function that makes a row's parameters (compiled
    once; the store asks at start, so a driver the writer cannot run on is refused before the first webhook)."""
    form = _INSERT_IGNORE.driver_statement(dialect, _ROW_KEYS)
    if form is None:  # another SQLite driver than sqlite3, which the writer's raw transaction needs
        raise RuntimeError(f"the webhook writer needs SQLite's sqlite3 driver, not {dialect.driver!r}")
    return form


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


def insert_rows_sqlite(dialect: Dialect, raw: Any, groups: Sequence[Sequence[Sequence[Any]]]) -> list[int]:
    """SQLite: one prepared INSERT per row (from :func:`insert_rows`) on the driver (``sqlite3``) connection,
    inside the caller's transaction; its rowcount says new (1) or duplicate (0). SQLAlchemy's per-statement
    machinery cost more than SQLite itself on this path (measured)."""
    sql = prepare_sqlite_insert(dialect)[0]
    cursor = raw.cursor()
    counts: list[int] = []
    try:
        for group in groups:
            new = 0
            for row in group:
                cursor.execute(sql, row)
                new += cursor.rowcount
            counts.append(new)
    except sqlite3.Error as exc:  # raised as SQLAlchemy's, as every recovery path expects; never with the rows
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True) from exc
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
