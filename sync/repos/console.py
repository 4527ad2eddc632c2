"""The admin console's read model: every query the console's pages run, in one place (``ticketpager/console``).

Read-only, one function per question, each taking a ``Connection``. Lists are paginated by keyset (``after`` /
``before`` a row's sort key, never OFFSET) so the 1000th page costs what the first does, and every query is
answered by an index (``bench/console.py`` times them on 1 M tickets and 10 M decision-log rows). The few that
need an index the schema does not have yet name it in their docstring (see docs/console.md, "Indexes").
Nothing here writes: the console's actions go through their aggregates' repositories (``sync.repos.outbox.retry_dead``,
``sync.repos.silences``), each with its ``sync.repos.audit`` entry in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, cast, func, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB

from kernel.model import web_url
from kernel.redact import mask, redact
from sync.schema import changes, cursors, decisions, incidents, links, outbox, tickets

#: rows per page of every list
PAGE = 50


# ------------------------------------------------------------------------------------------------ overview


@dataclass(frozen=True)
class SourceHealth:
    source: str
    last_success_at: datetime | None
    lag_seconds: float | None
    last_error: str | None
    last_error_kind: str | None
    last_error_at: datetime | None


def source_health(conn: Connection, now: datetime) -> list[SourceHealth]:
    """Each polled source's last poll, lag and last error (redacted). A handful of rows (primary key)."""
    rows = conn.execute(select(cursors).order_by(cursors.c.source)).mappings().all()
    return [
        SourceHealth(
            source=r["source"],
            last_success_at=r["last_success_at"],
            lag_seconds=(now - r["last_success_at"]).total_seconds() if r["last_success_at"] else None,
            last_error=redact(r["last_error"]) if r["last_error"] else None,
            last_error_kind=r["last_error_kind"],
            last_error_at=r["last_error_at"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Backlog:
    outbox_pending: int
    oldest_pending_seconds: float | None
    dead_letters: int
    open_incidents: int
    changes_pending: int


def backlog(conn: Connection, now: datetime) -> Backlog:
    """Counts from partial indexes only (``ix_outbox_due``, ``ix_outbox_dead``, ``ix_links_open``,
    ``ix_changes_pending``): each is as large as the backlog, never the history."""
    pending, oldest = conn.execute(
        select(func.count(), func.min(outbox.c.next_attempt_at)).where(outbox.c.status == "pending")
    ).one()
    oldest_created = None
    if pending:
        oldest_created = conn.execute(
            select(func.min(outbox.c.created_at)).where(outbox.c.status == "pending")
        ).scalar_one_or_none()
    dead = conn.execute(select(func.count()).select_from(outbox).where(outbox.c.status == "dead")).scalar_one()
    open_links = conn.execute(select(func.count()).select_from(links).where(links.c.state != "resolved")).scalar_one()
    waiting = conn.execute(select(func.count()).select_from(changes).where(changes.c.status == "pending")).scalar_one()
    return Backlog(
        outbox_pending=int(pending or 0),
        oldest_pending_seconds=(now - oldest_created).total_seconds() if oldest_created else None,
        dead_letters=int(dead or 0),
        open_incidents=int(open_links or 0),
        changes_pending=int(waiting or 0),
    )


def _hour(conn: Connection, column: Any) -> ColumnElement[Any]:
    """The hour a timestamp falls in, as text ``YYYY-MM-DD HH`` on both dialects."""
    if conn.dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d %H", column)
    return func.to_char(func.date_trunc("hour", column), "YYYY-MM-DD HH24")


def _seconds_between(conn: Connection, start: Any, end: Any) -> ColumnElement[Any]:
    if conn.dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


@dataclass(frozen=True)
class HourStats:
    hour: datetime  # the start of the hour (UTC)
    pages: int
    latency_seconds: float | None  # mean time from queued to sent of the events sent that hour


def hourly(conn: Connection, now: datetime, hours: int = 24) -> list[HourStats]:
    """Pages (decisions that queued an event) and mean delivery latency per hour over the last ``hours``.

    Ranges over ``decisions.at`` (``ix_decisions_at``) and ``outbox.sent_at``. Proposed indexes for 10 M rows:
    ``ix_decisions_paged_at (at) WHERE outcome = 'paged'`` and ``ix_outbox_sent_at (sent_at) WHERE kind = 'event'``.
    """
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    since = end - timedelta(hours=hours)
    hour = _hour(conn, decisions.c.at)
    pages: dict[str, int] = dict(
        conn.execute(
            select(hour, func.count()).where(decisions.c.at >= since, decisions.c.outcome == "paged").group_by(hour)
        ).all()
    )
    sent_hour = _hour(conn, outbox.c.sent_at)
    latency: dict[str, float] = dict(
        conn.execute(
            select(sent_hour, func.avg(_seconds_between(conn, outbox.c.created_at, outbox.c.sent_at)))
            .where(outbox.c.sent_at >= since, outbox.c.kind == "event", outbox.c.status == "sent")
            .group_by(sent_hour)
        ).all()
    )
    out = []
    for i in range(hours):
        start = since + timedelta(hours=i)
        label = start.strftime("%Y-%m-%d %H")
        value = latency.get(label)
        out.append(HourStats(start, int(pages.get(label, 0)), None if value is None else float(value)))
    return out


# ------------------------------------------------------------------------------------------------- tickets


def _title(conn: Connection) -> ColumnElement[Any]:
    """The ticket's title, read from its stored snapshot (JSON)."""
    if conn.dialect.name == "sqlite":
        return func.json_extract(tickets.c.snapshot, "$.title")
    return cast(tickets.c.snapshot, JSONB)["title"].astext


@dataclass(frozen=True)
class TicketRow:
    source: str
    connection: str
    ticket_id: str
    key: str
    title: str
    status_category: str
    updated: datetime
    open_incidents: int

    @property
    def cursor(self) -> str:
        """The keyset position after this row (``updated|source|connection|ticket_id``)."""
        return _cursor((self.updated, self.source, self.ticket_id, self.connection))


#: a ticket's keyset position in the list: (updated, source, ticket_id, connection) — the connection last, so
#: ``ix_tickets_updated`` (updated, source, ticket_id) still orders the rows (two connections of one system may
#: share an id: the connection tells them apart)
Position = tuple[datetime, str, str, str]


def _cursor(position: Position) -> str:
    when, source, ticket_id, connection = position
    return f"{when.isoformat()}|{source}|{connection}|{ticket_id}"


def parse_cursor(text: str) -> Position | None:
    try:
        when, source, connection, ticket_id = text.split("|", 3)
        return datetime.fromisoformat(when), source, ticket_id, connection
    except ValueError:
        return None


#: the list's order, newest first (see :data:`Position`)
_ORDER = (tickets.c.updated, tickets.c.source, tickets.c.ticket_id, tickets.c.connection)


#: a title search without a key prefix reads at most this many tickets per page (newest first), so a search
#: that matches nothing answers in bounded time on a million tickets; the page then offers to search older ones
SCAN_WINDOW = 20_000


@dataclass(frozen=True)
class TicketSearchWindow:
    """How far a title search read: ``until`` is the keyset position of the last ticket it read (the next page
    searches older tickets from there), None when it read to the end."""

    until: Position | None

    @property
    def cursor(self) -> str | None:
        return None if self.until is None else _cursor(self.until)


def title_search_window(
    conn: Connection,
    *,
    source: str = "",
    connection: str = "",
    state: str = "",
    after: Position | None = None,
    window: int = SCAN_WINDOW,
) -> TicketSearchWindow:
    """The keyset position of the ``window``-th ticket after ``after`` (same order and source/state filters as
    :func:`search_tickets`), read from the index alone (``ix_tickets_updated`` / ``ix_tickets_source_state``);
    the window a title search may read."""
    order = _ORDER
    stmt = select(*order)
    if source:
        stmt = stmt.where(tickets.c.source == source)
    if connection:
        stmt = stmt.where(tickets.c.connection == connection)
    if state:
        stmt = stmt.where(tickets.c.status_category == state)
    if after is not None:
        stmt = stmt.where(tuple_(*order) < tuple_(*after))
    stmt = stmt.order_by(*(c.desc() for c in order)).offset(window - 1).limit(1)
    row = conn.execute(stmt).first()
    return TicketSearchWindow(None if row is None else (row[0], row[1], row[2], row[3]))


def search_tickets(
    conn: Connection,
    *,
    key: str = "",
    title: str = "",
    source: str = "",
    connection: str = "",
    state: str = "",
    after: Position | None = None,
    limit: int = PAGE,
    until: Position | None = None,
) -> list[TicketRow]:
    """Tickets, most recently updated first, filtered; the next page starts ``after`` the last row's key.

    ``key`` is a prefix of the human key (``OPS-12`` finds OPS-12 and OPS-120…), ``title`` a substring
    (case-insensitive). Proposed indexes: ``ix_tickets_updated (updated, source, ticket_id)`` for the
    ordering, ``ix_tickets_key (key)`` (``text_pattern_ops`` on PostgreSQL) for the prefix; a title search
    scans snapshots (on PostgreSQL a ``pg_trgm`` GIN index on the title expression would answer it).
    """
    title_col = _title(conn)
    stmt = select(
        tickets.c.source,
        tickets.c.connection,
        tickets.c.ticket_id,
        tickets.c.key,
        title_col.label("title"),
        tickets.c.status_category,
        tickets.c.updated,
        tickets.c.open_incidents,
    )
    if key:
        stmt = stmt.where(tickets.c.key.startswith(key.strip(), autoescape=True))
    if title:
        pattern = f"%{_escape_like(title.strip())}%"
        stmt = stmt.where(title_col.ilike(pattern, escape="\\"))
        if not any(c in title for c in '"\\') and title.isprintable():  # spelled the same inside the JSON text:
            # the snapshot's text is matched first (cheap), the title (parses the JSON) only on the rows left
            stmt = stmt.where(tickets.c.snapshot.ilike(pattern, escape="\\"))
    if source:
        stmt = stmt.where(tickets.c.source == source)
    if connection:
        stmt = stmt.where(tickets.c.connection == connection)
    if state:
        stmt = stmt.where(tickets.c.status_category == state)
    if after is not None:
        stmt = stmt.where(tuple_(*_ORDER) < tuple_(*after))
    if until is not None:  # the window of a title search (title_search_window): no further back than this
        stmt = stmt.where(tuple_(*_ORDER) >= tuple_(*until))
    stmt = stmt.order_by(*(c.desc() for c in _ORDER)).limit(limit)
    return [
        TicketRow(
            source=r["source"],
            connection=r["connection"],
            ticket_id=r["ticket_id"],
            key=r["key"],
            title=r["title"] or "",
            status_category=r["status_category"],
            updated=r["updated"],
            open_incidents=int(r["open_incidents"] or 0),
        )
        for r in conn.execute(stmt).mappings()
    ]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def system_of(conn: Connection, connection: str, ticket_id: str, systems: Sequence[str]) -> str | None:
    """The system (``source``) of a stored ticket of ``connection``, by primary key or ``ix_decisions_ticket``:
    connection names are unique across systems, so at most one of ``systems`` has it."""
    for table in (tickets, decisions):
        found = conn.execute(
            select(table.c.source)
            .where(table.c.source.in_(list(systems)), table.c.connection == connection, table.c.ticket_id == ticket_id)
            .limit(1)
        ).scalar_one_or_none()
        if found is not None:
            return str(found)
    return None


def ticket_snapshot(conn: Connection, source: str, connection: str, ticket_id: str) -> dict[str, Any] | None:
    """The ticket's row with its last processed snapshot (JSON text), by primary key."""
    row = (
        conn.execute(
            select(tickets).where(
                tickets.c.source == source, tickets.c.connection == connection, tickets.c.ticket_id == ticket_id
            )
        )
        .mappings()
        .one_or_none()
    )
    return None if row is None else dict(row)


def decisions_of(
    conn: Connection, source: str, connection: str, ticket_id: str, before_id: int | None = None, limit: int = PAGE
) -> list[dict[str, Any]]:
    """The ticket's decision-log rows, newest first (``ix_decisions_ticket``)."""
    stmt = select(decisions).where(
        decisions.c.source == source, decisions.c.connection == connection, decisions.c.ticket_id == ticket_id
    )
    if before_id is not None:
        stmt = stmt.where(decisions.c.id < before_id)
    return [dict(r) for r in conn.execute(stmt.order_by(decisions.c.id.desc()).limit(limit)).mappings()]


def change_payloads(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Stored changes by id (primary key): payload (JSON text, ``None`` once pruned), origin, received_at."""
    if not ids:
        return {}
    rows = conn.execute(
        select(changes.c.id, changes.c.payload, changes.c.origin, changes.c.received_at, changes.c.status).where(
            changes.c.id.in_(list(ids))
        )
    ).mappings()
    return {int(r["id"]): dict(r) for r in rows}


def change_before(
    conn: Connection, source: str, connection: str, ticket_id: str, decision_id: int
) -> dict[str, Any] | None:
    """The change of the ticket's last decision before ``decision_id`` (for the diff of the oldest one shown)."""
    change_id = conn.execute(
        select(decisions.c.change_id)
        .where(
            decisions.c.source == source,
            decisions.c.connection == connection,
            decisions.c.ticket_id == ticket_id,
            decisions.c.id < decision_id,
            decisions.c.change_id.is_not(None),
        )
        .order_by(decisions.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if change_id is None else change_payloads(conn, [int(change_id)]).get(int(change_id))


def links_of(conn: Connection, source: str, connection: str, ticket_id: str) -> list[dict[str, Any]]:
    """The ticket's incident links, one per rule (``uq_links_source_connection_ticket_id_rule``); keys masked."""
    rows = conn.execute(
        select(links)
        .where(links.c.source == source, links.c.connection == connection, links.c.ticket_id == ticket_id)
        .order_by(links.c.rule)
    ).mappings()
    return [{**r, "routing_key": mask(r["routing_key"])} for r in rows]


def pagerduty_incidents(conn: Connection, dedup_keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What PagerDuty told us (its webhooks, or the REST lookups of two-way sync) about the incident of each of
    ``dedup_keys``: id, number, status, link (``http(s)`` only, else None), when; the most recently updated if
    PagerDuty ever made two for one key. Keys it never told us about are absent (``ix_incidents_dedup_key``)."""
    wanted = sorted({k for k in dedup_keys if k})
    if not wanted:
        return {}
    rows = conn.execute(
        select(
            incidents.c.dedup_key,
            incidents.c.incident_id,
            incidents.c.number,
            incidents.c.status,
            incidents.c.html_url,
            incidents.c.updated_at,
        )
        .where(incidents.c.dedup_key.in_(wanted))
        .order_by(incidents.c.updated_at, incidents.c.incident_id)
    ).mappings()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        url = r["html_url"] or ""
        out[str(r["dedup_key"])] = {
            "incident_id": r["incident_id"],
            "number": r["number"],
            "status": r["status"] or "",
            "html_url": web_url(url),
            "updated_at": r["updated_at"],
        }
    return out


def outbox_of(conn: Connection, connection: str, dedup_keys: Sequence[str], limit: int = 500) -> list[dict[str, Any]]:
    """Every event and note sent (or waiting) for these incidents of ``connection``'s ticket, oldest first
    (``ix_outbox_dedup_key``).

    The keys come from the ticket's links (every generation of each), so no scan by ticket is needed.
    Routing keys are masked and stored error text redacted again (rows written before redaction existed).
    """
    if not dedup_keys:
        return []
    rows = conn.execute(
        select(
            outbox.c.id,
            outbox.c.kind,
            outbox.c.destination,
            outbox.c.rule,
            outbox.c.action,
            outbox.c.dedup_key,
            outbox.c.generation,
            outbox.c.routing_key,
            outbox.c.body,
            outbox.c.status,
            outbox.c.attempts,
            outbox.c.last_error,
            outbox.c.change_id,
            outbox.c.created_at,
            outbox.c.sent_at,
            outbox.c.dry_run,
            outbox.c.next_attempt_at,
            outbox.c.claimed_until,
        )
        .where(outbox.c.dedup_key.in_(list(dedup_keys)), outbox.c.connection == connection)
        .order_by(outbox.c.id)
        .limit(limit)
    ).mappings()
    return [_shown_outbox(dict(r)) for r in rows]


def _shown_outbox(row: dict[str, Any]) -> dict[str, Any]:
    key = str(row.get("routing_key") or "")
    extra = (key,) if key else ()
    row["last_error"] = row["last_error"] and redact(row["last_error"], *extra)
    if row.get("body"):
        row["body"] = _shown_body(row["body"], extra)
    row["routing_key"] = mask(key) if key else ""
    return row


def _shown_body(body: str, keys: tuple[str, ...]) -> str:
    """A stored body as the console shows it: JSON pretty-printed with its routing key masked, redacted."""
    try:
        data = json.loads(body)
    except ValueError:
        return redact(body, *keys)
    if isinstance(data, dict) and "routing_key" in data:
        data["routing_key"] = mask(str(data["routing_key"]))
    return redact(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False), *keys)


# ---------------------------------------------------------------------------------------------- dead letters


def dead_letters(conn: Connection, after_id: int | None = None, limit: int = PAGE) -> list[dict[str, Any]]:
    """Dead letters, oldest first, from the partial index ``ix_outbox_dead``; keys masked, errors redacted."""
    stmt = select(
        outbox.c.id,
        outbox.c.kind,
        outbox.c.destination,
        outbox.c.source,
        outbox.c.connection,
        outbox.c.ticket_id,
        outbox.c.ticket_key,
        outbox.c.rule,
        outbox.c.action,
        outbox.c.routing_key,
        outbox.c.attempts,
        outbox.c.last_error,
        outbox.c.created_at,
    ).where(outbox.c.status == "dead")
    if after_id is not None:
        stmt = stmt.where(outbox.c.id > after_id)
    return [_shown_outbox(dict(r)) for r in conn.execute(stmt.order_by(outbox.c.id).limit(limit)).mappings()]


def dead_letter_ids(conn: Connection, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` are dead letters now."""
    if not ids:
        return set()
    stmt = select(outbox.c.id).where(outbox.c.status == "dead", outbox.c.id.in_(list(ids)))
    return {int(i) for i in conn.execute(stmt).scalars()}


# ------------------------------------------------------------------------------------------------ backtest


def stored_versions(
    conn: Connection,
    source: str,
    since: datetime,
    after_id: int | None,
    limit: int = 1000,
    *,
    connection: str | None = None,
) -> list[tuple[int, str]]:
    """(change id, payload JSON) of the stored changes of connection ``connection`` of system ``source`` (its
    default connection, named after it, when ``None``) received since ``since``, by id (keyset).

    The first page finds where ``since`` starts with ``ix_changes_received_at``; later pages walk the
    primary key. Payloads of processed changes are kept for ``retention_days``.
    """
    if after_id is None:
        first = conn.execute(
            # the lowest id among the earliest received (changes received at one instant come in any id order)
            select(changes.c.id)
            .where(changes.c.received_at >= since)
            .order_by(changes.c.received_at, changes.c.id)
            .limit(1)
        ).scalar_one_or_none()
        if first is None:
            return []
        after_id = int(first) - 1
    rows = conn.execute(
        select(changes.c.id, changes.c.payload)
        .where(
            changes.c.id > after_id,
            changes.c.received_at >= since,
            changes.c.source == source,
            changes.c.connection == (connection or source),
            changes.c.payload.is_not(None),
        )
        .order_by(changes.c.id)
        .limit(limit)
    ).all()
    return [(int(i), str(p)) for i, p in rows]


def paged_tickets(conn: Connection, source: str, since: datetime, *, connection: str | None = None) -> set[str]:
    """Ticket ids of connection ``connection`` of system ``source`` (its default one when ``None``) that paged
    since ``since`` (decision outcome ``paged``; ``ix_decisions_at``)."""
    rows = conn.execute(
        select(decisions.c.ticket_id)
        .where(
            decisions.c.at >= since,
            decisions.c.outcome == "paged",
            decisions.c.source == source,
            decisions.c.connection == (connection or source),
        )
        .distinct()
    ).scalars()
    return {str(t) for t in rows}


def known_sources(conn: Connection) -> list[str]:
    return [str(s) for s in conn.execute(select(cursors.c.source).order_by(cursors.c.source)).scalars()]


__all__ = [
    "PAGE",
    "Backlog",
    "HourStats",
    "SourceHealth",
    "TicketRow",
]
