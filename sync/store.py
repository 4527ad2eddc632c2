"""The durable state store: every read and write of ticketpager's tables goes through here.

One :class:`Store` per process wraps a SQLAlchemy engine. Writes that must happen together (a poll page
and its cursor; an engine step's outbox rows, links and decision) take a connection from
:meth:`Store.begin` and use the functions of this module inside that one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, and_, bindparam, case, delete, exists, func, or_, select, update
from sqlalchemy.pool import PoolProxiedConnection

from kernel import jsonutil
from kernel.model import TicketChange, stored_delivery_id
from kernel.redact import redact
from sync import db
from sync.db import insert_ignore as _insert_ignore  # the engine's and delivery's name for it
from sync.heartbeat import lease_holder_dead
from sync.schema import changes, cursors, decisions, leases, links, outbox, tickets
from sync.writelock import PriorityLock


def change_row(change: TicketChange) -> dict[str, Any]:
    return {
        "source": change.ticket.source,
        "delivery_id": stored_delivery_id(change.delivery_id),
        "ticket_id": change.ticket.id,
        "ticket_updated": change.ticket.updated,
        "origin": change.origin.value,
        "received_at": change.received_at,
        "payload": jsonutil.dumps(change.to_json()),
        "status": "pending",
    }


def insert_changes(conn: Connection, batch: Sequence[TicketChange]) -> int:
    """Store changes, skipping ones already received (same source and delivery id). Returns how many are new."""
    return insert_changes_each(conn, [batch])[0]


def insert_changes_each(conn: Connection, groups: Sequence[Sequence[TicketChange]]) -> list[int]:
    """Store several requests' changes with one multi-row INSERT; per group, how many were new.

    A delivery id already stored, or repeated earlier in the same call, counts as a duplicate.
    """
    stamp = _stamp(conn.dialect)
    rows = [_rows(conn.dialect, stamp, group) for group in groups]
    if conn.dialect.name == "sqlite":  # the transaction's own driver connection
        return _insert_rows_sqlite(conn.connection.driver_connection, rows)
    return _insert_rows_returning(conn, rows)


def _rows(dialect: Dialect, stamp: Callable[[Any], Any], batch: Sequence[TicketChange]) -> list[Any]:
    """``batch`` as the dialect's insert takes it: parameter tuples for SQLite's prepared INSERT, column
    dicts for PostgreSQL's multi-row INSERT … RETURNING."""
    if dialect.name == "sqlite":
        return [sqlite_change_row(c, stamp) for c in batch]
    return [change_row(c) for c in batch]


_SENDS_ELSEWHERE = (
    select(outbox.c.sent_at)
    .where(
        outbox.c.routing_key == bindparam("key"),
        outbox.c.sent_at > bindparam("since"),
        outbox.c.kind == "event",
        ~outbox.c.claimed_by.like(bindparam("mine")),
    )
)


def _stamp(dialect: Dialect) -> Callable[[Any], Any]:
    """The dialect's own bind processor of the datetime columns (SQLite: the exact text SQLAlchemy stores,
    ``2026-11-27 09:00:00.000000``; the generic type's would leave a ``datetime`` for the driver to format,
    without the zero microseconds, which then compares differently in SQL)."""
    stamp = changes.c.ticket_updated.type.dialect_impl(dialect).bind_processor(dialect)
    assert stamp is not None  # UTCDateTime always converts
    return stamp


def _insert_rows_returning(conn: Connection, groups: Sequence[Sequence[dict[str, Any]]]) -> list[int]:
    """PostgreSQL: one multi-row INSERT for every group; per group, how many rows were new."""
    rows = [row for group in groups for row in group]
    if not rows:
        return [0] * len(groups)
    # RETURNING names what was inserted (executemany rowcount is unreliable on psycopg)
    stmt = _insert_ignore(conn, changes).returning(changes.c.source, changes.c.delivery_id)
    inserted = {(source, delivery) for source, delivery in conn.execute(stmt, rows).all()}
    counts: list[int] = []
    seen: set[tuple[str, str]] = set()
    index = 0
    for group in groups:
        new = 0
        for _row in group:
            key = (rows[index]["source"], rows[index]["delivery_id"])
            index += 1
            if key in inserted and key not in seen:
                new += 1
            seen.add(key)
        counts.append(new)
    return counts


_SQLITE_INSERT_CHANGE = (
    "INSERT INTO changes (source, delivery_id, ticket_id, ticket_updated, origin, received_at, payload, status) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending') ON CONFLICT DO NOTHING"
)


def sqlite_change_row(change: TicketChange, stamp: Callable[[Any], Any]) -> tuple[Any, ...]:
    """The parameters of :data:`_SQLITE_INSERT_CHANGE` for ``change``. Datetimes go through the column
    type's own bind processor (``stamp``), so the stored text is exactly what SQLAlchemy writes and reads."""
    ticket = change.ticket
    return (
        ticket.source,
        stored_delivery_id(change.delivery_id),
        ticket.id,
        stamp(ticket.updated),
        change.origin.value,
        stamp(change.received_at),
        jsonutil.dumps(change.to_json()),
    )


def _insert_rows_sqlite(raw: Any, groups: Sequence[Sequence[tuple[Any, ...]]]) -> list[int]:
    """SQLite: one prepared INSERT per row on the driver (``sqlite3``) connection, inside the caller's
    transaction; its rowcount says new (1) or duplicate (0). SQLAlchemy's per-statement machinery cost
    more than SQLite itself on this path (measured)."""
    cursor = raw.cursor()
    counts: list[int] = []
    try:
        for group in groups:
            new = 0
            for row in group:
                cursor.execute(_SQLITE_INSERT_CHANGE, row)
                new += cursor.rowcount
            counts.append(new)
    finally:
        cursor.close()
    return counts


def save_cursor(conn: Connection, source: str, cursor: Mapping[str, Any] | None, now: datetime) -> None:
    values = {
        "cursor": None if cursor is None else json.dumps(cursor, default=str),
        "updated_at": now,
        "last_success_at": now,
        "last_error": None,
        "last_error_kind": None,
        "last_error_at": None,
    }
    done = conn.execute(update(cursors).where(cursors.c.source == source).values(**values))
    if not done.rowcount:
        conn.execute(_insert_ignore(conn, cursors), {"source": source, **values})
        conn.execute(update(cursors).where(cursors.c.source == source).values(**values))


def load_cursor(conn: Connection, source: str) -> dict[str, Any] | None:
    raw = conn.execute(select(cursors.c.cursor).where(cursors.c.source == source)).scalar_one_or_none()
    return None if raw is None else json.loads(raw)


def record_poll_error(conn: Connection, source: str, message: str, kind: str, now: datetime) -> None:
    """Remember why the last poll failed (shown by ``status`` and ``/readyz``); the cursor is untouched.
    The text is redacted before it is stored: the database never holds a secret a vendor echoed."""
    values = {"last_error": redact(message)[:2000], "last_error_kind": kind, "last_error_at": now}
    done = conn.execute(update(cursors).where(cursors.c.source == source).values(**values))
    if not done.rowcount:
        conn.execute(_insert_ignore(conn, cursors), {"source": source, **values})


def acquire_lease(
    conn: Connection, name: str, holder: str, now: datetime, seconds: float, stale_before: datetime | None = None
) -> bool:
    """Take or renew the lease ``name`` for ``holder`` unless another holder's lease is still valid. With
    ``stale_before``, a lease whose holder's heartbeat is older than that is free too (the holder died)."""
    until = now + timedelta(seconds=seconds)
    conn.execute(_insert_ignore(conn, leases), {"name": name, "holder": holder, "expires_at": until})
    free = [leases.c.holder == holder, leases.c.expires_at < now]
    if stale_before is not None:
        free.append(lease_holder_dead(leases.c.holder, stale_before))
    got = conn.execute(
        update(leases).where(leases.c.name == name, or_(*free)).values(holder=holder, expires_at=until)
    )
    return bool(got.rowcount)


def release_lease(conn: Connection, name: str, holder: str) -> None:
    conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


def _trigger_is(*conditions: Any) -> Any:
    """EXISTS an outbox trigger row of the link's incident (same dedup key: one per generation) such that …"""
    return exists().where(
        outbox.c.dedup_key == links.c.dedup_key, outbox.c.kind == "event", outbox.c.action == "trigger", *conditions
    )


#: Unresolved links by what became of their trigger. A sent trigger may since have been pruned by retention
#: (only sent rows are), so a link without any trigger row left is open at PagerDuty too.
_INCIDENT_STATE = case(
    (_trigger_is(outbox.c.status == "sent", outbox.c.dry_run.is_(False)), "open"),
    (_trigger_is(outbox.c.status == "sent"), "dry_run"),
    (_trigger_is(outbox.c.status == "pending"), "pending"),
    (_trigger_is(outbox.c.status == "dead"), "dead"),
    else_="open",
).label("incident")
_OPEN_LINKS_BY_TRIGGER = (
    select(_INCIDENT_STATE, func.count()).where(links.c.state != "resolved").group_by(_INCIDENT_STATE)
)


@dataclass(frozen=True)
class Status:
    """The ``status`` report. Incidents are counted by what PagerDuty was told: ``open_incidents`` only
    those whose trigger was sent; a trigger still waiting in the outbox is ``incidents_pending``, one
    PagerDuty refused (a dead letter) ``incidents_dead``, one only logged in dry run ``incidents_dry_run``."""

    tickets: int
    open_incidents: int
    changes_pending: int
    changes_failed: int
    outbox_pending: int
    outbox_oldest: datetime | None
    dead_letters: int
    cursors: list[dict[str, Any]]
    incidents_pending: int = 0
    incidents_dead: int = 0
    incidents_dry_run: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "tickets_tracked": self.tickets,
            "open_incidents": self.open_incidents,
            "incidents_pending": self.incidents_pending,
            "incidents_dead": self.incidents_dead,
            "incidents_dry_run": self.incidents_dry_run,
            "changes_pending": self.changes_pending,
            "changes_failed": self.changes_failed,
            "outbox_pending": self.outbox_pending,
            "outbox_oldest": self.outbox_oldest.isoformat() if self.outbox_oldest else None,
            "dead_letters": self.dead_letters,
            "cursors": self.cursors,
        }


class Store:
    """Owns the engine; hands out transactions; answers the read-side questions (status, dead letters)."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine: Engine = db.make_engine(url, **engine_kwargs)
        # SQLite: serialize writers in-process (webhook writer first) instead of in SQLite's busy handler
        self.write_lock: PriorityLock | None = PriorityLock() if self.engine.dialect.name == "sqlite" else None
        self._webhook_conn: PoolProxiedConnection | None = None  # SQLite: the webhook writer's own connection
        self._stamp = _stamp(self.engine.dialect)
        self._disposed = False

    def __repr__(self) -> str:
        return f"<Store {self.engine.url.render_as_string(hide_password=True)}>"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def upgrade(self) -> bool:
        """Migrate to this version's schema; False when a newer release already migrated it further."""
        return db.upgrade(self.engine)

    @contextmanager
    def begin(self, urgent: bool = False) -> Iterator[Connection]:
        """A write transaction. ``urgent`` (the webhook writer) goes before background work on SQLite."""
        if self.write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with (
            self.write_lock.hold(urgent),
            self.engine.connect().execution_options(**{db.WRITE_OPTION: True}) as conn,
            conn.begin(),
        ):
            yield conn

    def webhook_rows(self, changes: Sequence[TicketChange]) -> list[Any]:
        """``changes`` made ready for :meth:`store_webhook_rows`. The HTTP handler calls this, so the
        serialization is done before the writer thread's turn and its commit cycle stays short."""
        return _rows(self.engine.dialect, self._stamp, changes)

    def store_webhook_rows(self, groups: Sequence[Sequence[Any]]) -> list[int]:
        """Store several webhook requests' rows (from :meth:`webhook_rows`) durably in one transaction;
        per request, how many were new (the rest were duplicates). On SQLite the webhook writer keeps one
        driver connection open for this (no pool checkout, no SQLAlchemy transaction events per commit),
        under the write lock it is served first by."""
        if self.write_lock is None:
            with self.engine.begin() as conn:
                return _insert_rows_returning(conn, groups)
        with self.write_lock.hold(urgent=True):
            if self._disposed:
                raise RuntimeError("the store is closed")
            if self._webhook_conn is None:
                self._webhook_conn = self.engine.raw_connection()  # with the engine's PRAGMAs, autocommit mode
            raw: Any = self._webhook_conn.driver_connection  # sqlite3.Connection
            try:
                raw.execute("BEGIN IMMEDIATE")
                counts = _insert_rows_sqlite(raw, groups)
                raw.execute("COMMIT")
            except BaseException:
                self._drop_webhook_connection()
                raise
            return counts

    def _drop_webhook_connection(self) -> None:
        """After a failure: roll back and forget the connection (the next commit takes a fresh one)."""
        conn, self._webhook_conn = self._webhook_conn, None
        if conn is None:
            return
        raw: Any = conn.driver_connection
        try:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            conn.close()
        except Exception:  # noqa: BLE001 - a broken connection: the pool must not hand it out again
            conn.invalidate()

    def should_yield(self) -> bool:
        """True when a background transaction should commit now to let the webhook writer in."""
        return self.write_lock is not None and self.write_lock.urgent()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        if self.write_lock is not None:
            with self.write_lock.hold(urgent=True):
                self._disposed = True
                self._drop_webhook_connection()
        self.engine.dispose()

    # -- read side -------------------------------------------------------------------------------
    def status(self) -> Status:
        with self.engine.connect() as conn:
            count = lambda stmt: int(conn.execute(stmt).scalar_one() or 0)  # noqa: E731
            cursor_rows = conn.execute(select(cursors).order_by(cursors.c.source)).mappings().all()
            incidents = {str(k): int(n) for k, n in conn.execute(_OPEN_LINKS_BY_TRIGGER).all()}
            return Status(
                tickets=count(select(func.count()).select_from(tickets)),
                open_incidents=incidents.get("open", 0),
                incidents_pending=incidents.get("pending", 0),
                incidents_dead=incidents.get("dead", 0),
                incidents_dry_run=incidents.get("dry_run", 0),
                changes_pending=count(select(func.count()).select_from(changes).where(changes.c.status == "pending")),
                changes_failed=count(select(func.count()).select_from(changes).where(changes.c.status == "failed")),
                outbox_pending=count(select(func.count()).select_from(outbox).where(outbox.c.status == "pending")),
                outbox_oldest=conn.execute(
                    select(func.min(outbox.c.created_at)).where(outbox.c.status == "pending")
                ).scalar_one_or_none(),
                dead_letters=count(select(func.count()).select_from(outbox).where(outbox.c.status == "dead")),
                cursors=[
                    {
                        "source": r["source"],
                        "last_success_at": r["last_success_at"].isoformat() if r["last_success_at"] else None,
                        "last_error": redact(r["last_error"]) if r["last_error"] else None,
                        "last_error_kind": r["last_error_kind"],
                        "last_error_at": r["last_error_at"].isoformat() if r["last_error_at"] else None,
                    }
                    for r in cursor_rows
                ],
            )

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(select(outbox).where(outbox.c.status == "dead").order_by(outbox.c.id).limit(limit))
                .mappings()
                .all()
            )
            # redacted as shown, too: rows stored by a version that did not redact them
            return [{**r, "last_error": r["last_error"] and redact(r["last_error"], r["routing_key"])} for r in rows]

    def retry_dead(self, ids: Sequence[int] | None, now: datetime) -> tuple[int, int]:
        """Put dead letters back in the queue (all of them when ``ids`` is None).

        A trigger or acknowledge whose incident has moved on since — the link (never pruned) is resolved or
        at a later generation, e.g. the ticket was resolved after the trigger died — is not re-sent: that
        would open an incident for a finished ticket. It is marked ``superseded``. Resolves are always
        re-sent (an incident left open is worse). Returns (queued, superseded).
        """
        cond = outbox.c.status == "dead"
        if ids is not None:
            cond = and_(cond, outbox.c.id.in_(list(ids)))
        moved_on = exists().where(
            links.c.source == outbox.c.source,
            links.c.ticket_id == outbox.c.ticket_id,
            links.c.rule == outbox.c.rule,
            or_(links.c.generation > outbox.c.generation, links.c.state == "resolved"),
        )
        with self.begin() as conn:
            superseded = conn.execute(
                update(outbox)
                .where(cond, outbox.c.kind == "event", outbox.c.action != "resolve", moved_on)
                .values(status="superseded", claimed_until=None)
            )
            done = conn.execute(
                update(outbox)
                .where(cond)
                .values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    claimed_until=None,
                    claimed_by=None,
                    first_attempt_at=None,
                )
            )
            return int(done.rowcount or 0), int(superseded.rowcount or 0)

    def last_polls(self) -> dict[str, datetime | None]:
        """Per source, when the last poll succeeded (for the poll-lag gauge)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(cursors.c.source, cursors.c.last_success_at)).all()
        return {str(source): last for source, last in rows}

    def sends_elsewhere(self, routing_key: str, since: datetime, mine: str) -> list[datetime]:
        """When events for ``routing_key`` were sent after ``since`` by workers other than this process's
        (``claimed_by`` not starting with ``mine``): the rate limiter's view of the other replicas."""
        with self.engine.connect() as conn:
            rows = conn.execute(_SENDS_ELSEWHERE, {"key": routing_key, "since": since, "mine": f"{mine}/%"}).all()
        return [sent for (sent,) in rows]

    def permanent_poll_errors(self) -> dict[str, str]:
        """Sources whose last poll failed for good (a revoked token): readiness asks this on every probe,
        so it reads the few cursor rows only, not the whole status."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(cursors.c.source, cursors.c.last_error).where(cursors.c.last_error_kind == "permanent")
            ).all()
        return {str(source): redact(str(error)) for source, error in rows}

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by kind: ``event`` (a page that did not go out) and ``writeback`` (a ticket note)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.kind, func.count()).where(outbox.c.status == "dead").group_by(outbox.c.kind)
            ).all()
        return {"event": 0, "writeback": 0} | {str(kind): int(n) for kind, n in rows}

    def outbox_depth(self, now: datetime) -> tuple[int, float]:
        """(pending rows, age in seconds of the oldest) — for metrics."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.status == "pending")
            ).one()
        oldest = row[1]
        return int(row[0] or 0), (now - oldest).total_seconds() if oldest else 0.0

    def decisions_for(self, source: str, ticket_id: str, limit: int = 20) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(decisions)
                    .where(decisions.c.source == source, decisions.c.ticket_id == ticket_id)
                    .order_by(decisions.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]

    def prune(self, before: datetime, chunk: int = 5000) -> tuple[int, int]:
        """Retention: drop decision-log rows, processed change payloads and sent events older than ``before``.

        Deletes in chunks, one short transaction each, so a first prune over a large history never holds
        the (SQLite) write lock for long. Returns (decisions, changes) deleted.
        """
        targets = (
            (decisions, decisions.c.at < before),
            (changes, and_(changes.c.received_at < before, changes.c.status != "pending")),
            (outbox, and_(outbox.c.status.in_(("sent", "superseded")), outbox.c.created_at < before)),
        )
        counts = []
        for table, cond in targets:
            total = 0
            while True:
                with self.begin() as conn:
                    ids = select(table.c.id).where(cond).limit(chunk).scalar_subquery()
                    gone = int(conn.execute(delete(table).where(table.c.id.in_(ids))).rowcount or 0)
                total += gone
                if gone < chunk:
                    break
            counts.append(total)
        return counts[0], counts[1]
