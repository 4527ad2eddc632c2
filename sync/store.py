"""The durable state store: the connection and transaction handling, and the read-side questions.

One :class:`Store` per process wraps a SQLAlchemy engine. Writes that must happen together (a poll page
and its cursor; an engine step's outbox rows, links and decision) take a connection from
:meth:`Store.begin` and call the repositories (:mod:`sync.repos`, the only SQL) inside that one transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from kernel.model import TicketChange
from kernel.redact import redact
from sync import db
from sync.repos import changes, cursors, outbox, tickets
from sync.writelock import BACKGROUND, Lane, PriorityLock


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
        self._write_conn: Connection | None = None  # SQLite: every write's, in turn under the write lock (_writer)
        if self.write_lock is not None:  # the webhook writer's INSERT compiled now: a driver it cannot run on fails
            changes.prepare_sqlite_insert(self.engine.dialect)
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
    def begin(self, urgent: bool = False, *, lane: Lane = BACKGROUND) -> Iterator[Connection]:
        """A write transaction. On SQLite, where every write runs on :meth:`_writer`'s connection, it waits for its
        turn in the write lock: ``urgent`` (the webhook writer) goes first, and the other lanes (``lane``: the
        engine's, everything else's) share the turns it leaves (:mod:`sync.writelock`). PostgreSQL's transactions
        run side by side, each on a connection of its own from the pool, whose pre-ping replaces a connection a
        restarted server dropped."""
        if self.write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self.write_lock.hold(urgent, lane=lane):
            if self._disposed:  # closed: nothing is kept any more
                with self.engine.connect() as conn, db.begin_write(conn):
                    yield conn
                return
            conn = self._writer()
            try:
                with db.begin_write(conn):
                    yield conn
            except BaseException:
                self._drop_write_connection()
                raise

    def webhook_rows(self, batch: Sequence[TicketChange]) -> list[Any]:
        """``batch`` made ready for :meth:`store_webhook_rows`. The HTTP handler calls this, so the
        serialization is done before the writer thread's turn and its commit cycle stays short."""
        return changes.insert_rows(self.engine.dialect, batch)

    def store_webhook_rows(self, groups: Sequence[Sequence[Any]]) -> list[int]:
        """Store several webhook requests' rows (from :meth:`webhook_rows`) durably in one transaction;
        per request, how many were new (the rest were duplicates). On SQLite the group commit runs on the driver
        connection of :meth:`_writer` (no SQLAlchemy transaction per commit), under the write lock it is served
        first by."""
        if self.write_lock is None:
            with self.engine.begin() as conn:
                return changes.insert_rows_returning(conn, groups)
        with self.write_lock.hold(urgent=True):
            if self._disposed:
                raise RuntimeError("the store is closed")
            raw: Any = self._writer().connection.driver_connection  # sqlite3.Connection, autocommit mode
            try:
                raw.execute("BEGIN IMMEDIATE")
                counts = changes.insert_rows_sqlite(self.engine.dialect, raw, groups)
                raw.execute("COMMIT")
            except sqlite3.Error as exc:  # BEGIN or COMMIT (locked, I/O): raised as SQLAlchemy's, as the INSERT's
                self._drop_write_connection()
                raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
            except BaseException:
                self._drop_write_connection()
                raise
            return counts

    def _writer(self) -> Connection:
        """SQLite: the one connection every write uses in turn, under the write lock, kept open between them (with
        the engine's PRAGMAs, in the driver's autocommit mode). A pool checkout, a new ``Connection`` and a
        check-in per transaction were a fifth of a delivery mark's transaction (docs/performance.md, the twelfth
        session). Taken when first needed; dropped after a failed write, and at dispose."""
        if self._write_conn is None:
            self._write_conn = self.engine.connect()
        return self._write_conn

    def _drop_write_connection(self) -> None:
        """After a failed write, and at dispose: roll back what is still open, close and forget :meth:`_writer`'s
        connection (the next write takes a fresh one). Under the write lock."""
        conn, self._write_conn = self._write_conn, None
        if conn is None:
            return
        try:
            if not conn.invalidated:
                raw: Any = conn.connection.driver_connection
                if raw.in_transaction:  # the webhook writer's BEGIN (SQLAlchemy's own is rolled back by now)
                    raw.execute("ROLLBACK")
            conn.close()
        except Exception:  # noqa: BLE001 - a broken connection: the pool must not hand it out again
            with contextlib.suppress(Exception):
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
                self._drop_write_connection()
        self.engine.dispose()

    # -- read side -------------------------------------------------------------------------------
    def status(self) -> Status:
        with self.engine.connect() as conn:
            incidents = tickets.open_links_by_trigger(conn)
            pending, oldest = outbox.depth(conn)
            return Status(
                tickets=tickets.count(conn),
                open_incidents=incidents.get("open", 0),
                incidents_pending=incidents.get("pending", 0),
                incidents_dead=incidents.get("dead", 0),
                incidents_dry_run=incidents.get("dry_run", 0),
                changes_pending=changes.count(conn, "pending"),
                changes_failed=changes.count(conn, "failed"),
                outbox_pending=pending,
                outbox_oldest=oldest,
                dead_letters=outbox.count(conn, "dead"),
                cursors=[
                    {
                        "source": r["source"],
                        "last_success_at": r["last_success_at"].isoformat() if r["last_success_at"] else None,
                        "last_error": redact(r["last_error"]) if r["last_error"] else None,
                        "last_error_kind": r["last_error_kind"],
                        "last_error_at": r["last_error_at"].isoformat() if r["last_error_at"] else None,
                    }
                    for r in cursors.all_cursors(conn)
                ],
            )

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return outbox.dead_letters(conn, limit)

    def retry_dead(self, ids: Sequence[int] | None, now: datetime) -> tuple[int, int]:
        """Put dead letters back in the queue (all of them when ``ids`` is None).

        A trigger or acknowledge whose incident has moved on since — the link (never pruned) is resolved or
        at a later generation, e.g. the ticket was resolved after the trigger died — is not re-sent: that
        would open an incident for a finished ticket. It is marked ``superseded``. Resolves are always
        re-sent (an incident left open is worse). Returns (queued, superseded).
        """
        with self.begin() as conn:
            return outbox.retry_dead(conn, ids, now)

    def last_polls(self) -> dict[str, datetime | None]:
        """Per source, when the last poll succeeded (for the poll-lag gauge)."""
        with self.engine.connect() as conn:
            return cursors.last_polls(conn)

    def sends_elsewhere(self, destination: str, limit_key: str, since: datetime, mine: str) -> list[datetime]:
        """When rows of ``destination`` for ``limit_key`` (a routing key) were sent after ``since`` by workers
        other than this process's (``claimed_by`` not starting with ``mine``): the rate limiter's view of the
        other replicas."""
        with self.engine.connect() as conn:
            return outbox.sends_elsewhere(conn, destination, limit_key, since, mine)

    def permanent_poll_errors(self) -> dict[str, str]:
        """Sources whose last poll failed for good (a revoked token): readiness asks this on every probe,
        so it reads the few cursor rows only, not the whole status."""
        with self.engine.connect() as conn:
            return cursors.permanent_poll_errors(conn)

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by kind: ``event`` (a page that did not go out) and ``writeback`` (a ticket note)."""
        with self.engine.connect() as conn:
            return outbox.dead_letter_counts(conn)

    def outbox_depth(self, now: datetime) -> tuple[int, float]:
        """(pending rows, age in seconds of the oldest) — for metrics."""
        with self.engine.connect() as conn:
            pending, oldest = outbox.depth(conn)
        return pending, (now - oldest).total_seconds() if oldest else 0.0

    def decisions_for(
        self, source: str, ticket_id: str, limit: int = 20, *, connection: str | None = None
    ) -> list[dict[str, Any]]:
        """The latest decisions about ticket ``ticket_id`` of ``connection`` (default: the system's default
        connection, named after it), newest first."""
        with self.engine.connect() as conn:
            return tickets.decisions_for(conn, source, connection or source, ticket_id, limit)

    def prune(self, before: datetime, chunk: int = 5000) -> tuple[int, int]:
        """Retention: drop decision-log rows, processed change payloads and sent events older than ``before``.

        Deletes in chunks, one short transaction each, so a first prune over a large history never holds
        the (SQLite) write lock for long. Returns (decisions, changes) deleted.
        """
        counts = []
        for prune_chunk in (tickets.prune_decisions, changes.prune, outbox.prune):
            total = 0
            while True:
                with self.begin() as conn:
                    gone = prune_chunk(conn, before, chunk)
                total += gone
                if gone < chunk:
                    break
            counts.append(total)
        return counts[0], counts[1]
