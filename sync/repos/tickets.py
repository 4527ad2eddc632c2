"""SQL of a ticket's aggregate: its last processed version (``tickets``), its links to incidents (``links``,
one per rule) and the decision log (``decisions``). A ticket is (source, connection, ticket_id): its system,
the instance of that system it came from, and the vendor's id.

On PostgreSQL :func:`lock` / :func:`lock_many` take the ticket's row lock (inserting a placeholder row for a new
ticket), so two replicas never process two changes of one ticket at the same time.

The engine reads and writes a whole batch of tickets at once (:func:`lock_many`, :func:`links_of_many`,
:func:`save_tickets`, :func:`save_links`): SQLAlchemy's cost per statement (~70 µs) was most of the engine's CPU
per change when each change ran its own seven statements (issue 19); one executemany per kind of write is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, delete, exists, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping

from kernel.model import IncidentState, LinkState
from sync.prepared import Prepared, Row
from sync.schema import decisions, links, outbox, tickets

NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # "updated" of a ticket row that only holds a lock
TicketKey = tuple[str, str, str]  # (source, connection, ticket_id)

# Statements built once with bind parameters; values come with each execute. (Building a statement with
# literal ``.values(...)`` per change cost more than the database work: SQLAlchemy re-derives its cache key.)
_B = bindparam
_THIS_TICKET = (tickets.c.source == _B("s"), tickets.c.connection == _B("c"), tickets.c.ticket_id == _B("t"))
SELECT_TICKET = select(tickets).where(*_THIS_TICKET)


def _of_tickets(table: Any) -> tuple[Any, ...]:
    """Rows of ``table`` whose (source, connection, ticket_id) is in the cross product of :func:`_any_of`'s lists:
    SQLite searches its key index for these (``(a, b, c) IN (VALUES …)`` is a full scan there); the caller keeps
    the keys it asked for."""
    return (
        table.c.source.in_(_B("sources", expanding=True)),
        table.c.connection.in_(_B("connections", expanding=True)),
        table.c.ticket_id.in_(_B("ids", expanding=True)),
    )


def _any_of(keys: Sequence[TicketKey]) -> dict[str, list[str]]:
    """The parameters of :func:`_of_tickets` for ``keys``."""
    return {
        "sources": sorted({k[0] for k in keys}),
        "connections": sorted({k[1] for k in keys}),
        "ids": sorted({k[2] for k in keys}),
    }


SELECT_TICKETS = select(tickets).where(*_of_tickets(tickets))
_lock_insert = pg_insert(tickets).values(
    source=_B("s"), connection=_B("c"), ticket_id=_B("t"), key="", status_category="new", updated=NEVER,
    version_hash="", snapshot=None, processed_at=_B("at"),
)  # fmt: skip
# ON CONFLICT DO UPDATE takes the row lock (a no-op update) and RETURNING hands back the current row
LOCK_TICKET_PG = _lock_insert.on_conflict_do_update(
    index_elements=[tickets.c.source, tickets.c.connection, tickets.c.ticket_id],
    set_={"source": _lock_insert.excluded.source},
).returning(*tickets.c)
TICKET_COLUMNS = (
    "key", "status_category", "updated", "version_hash", "snapshot", "last_change_id", "open_incidents",
    "recheck", "processed_at",
)  # fmt: skip


def _upsert_ticket(insert_into: Any) -> Any:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` of every :data:`TICKET_COLUMNS` (a new ticket, a placeholder row
    of :func:`lock`, or a processed one alike)."""
    stmt = insert_into(tickets)
    keys = [tickets.c.source, tickets.c.connection, tickets.c.ticket_id]
    return stmt.on_conflict_do_update(index_elements=keys, set_={n: stmt.excluded[n] for n in TICKET_COLUMNS})


UPSERT_TICKET = {"postgresql": _upsert_ticket(pg_insert), "sqlite": _upsert_ticket(sqlite_insert)}
SET_OPEN_INCIDENTS = (
    update(tickets).where(*_THIS_TICKET).values(open_incidents=_B("open_incidents"), recheck=_B("recheck"))
)
_THIS_TICKETS_LINKS = (links.c.source == _B("s"), links.c.connection == _B("c"), links.c.ticket_id == _B("t"))
SELECT_LINKS = select(links).where(*_THIS_TICKETS_LINKS)
SELECT_LINKS_OF_TICKETS = select(links).where(*_of_tickets(links))
INSERT_LINK = insert(links)
LINK_VALUES = ("generation", "dedup_key", "routing_key", "state", "updated_at")  # what an event moves on
UPDATE_LINK = (
    update(links)
    .where(*_THIS_TICKETS_LINKS, links.c.rule == _B("r"))
    .values(
        generation=_B("generation"),
        dedup_key=_B("dedup_key"),
        routing_key=_B("routing_key"),
        state=_B("state"),
        updated_at=_B("updated_at"),
        hold_version=None,  # a new event for the link ends a hold (see kernel.lifecycle.content_digest)
    )
)
INSERT_DECISION = insert(decisions)
_SELECT_TICKETS, _SELECT_LINKS_OF_TICKETS = Prepared(SELECT_TICKETS), Prepared(SELECT_LINKS_OF_TICKETS)
_SAVE_TICKETS = {name: Prepared(stmt) for name, stmt in UPSERT_TICKET.items()}
_INSERT_LINKS, _UPDATE_LINKS = Prepared(INSERT_LINK), Prepared(UPDATE_LINK)
_INSERT_DECISIONS = Prepared(INSERT_DECISION)


# -- tickets ---------------------------------------------------------------------------------------
def lock(conn: Connection, source: str, connection: str, ticket_id: str, now: datetime) -> RowMapping | None:
    """Lock this ticket's row for the rest of the transaction and read it; ``None`` if it was never processed.

    On PostgreSQL a placeholder row is inserted if there is none (a lock on a row that does not exist yet
    would not serialize two replicas processing the first two changes of a new ticket).
    """
    row: RowMapping | None
    if conn.dialect.name == "postgresql":  # insert-or-lock and read in one round trip
        row = conn.execute(LOCK_TICKET_PG, {"s": source, "c": connection, "t": ticket_id, "at": now}).mappings().one()
    else:  # SQLite: this process holds the only write lock already
        row = conn.execute(SELECT_TICKET, {"s": source, "c": connection, "t": ticket_id}).mappings().one_or_none()
    return None if row is None or row["snapshot"] is None else row


def lock_many(conn: Connection, keys: Sequence[TicketKey], now: datetime) -> dict[TicketKey, Row]:
    """:func:`lock` for several tickets in one statement: the processed ones by key (a ticket never processed is
    absent). ``keys`` must be distinct.

    On PostgreSQL the rows are inserted-or-locked in the order of ``keys`` (one multi-row ``INSERT … ON CONFLICT``
    takes its rows in order): the caller passes them in the fixed lock order, so two replicas never deadlock.
    """
    if not keys:
        return {}
    rows: Sequence[Row]
    if conn.dialect.name == "postgresql":
        params = [{"s": s, "c": c, "t": t, "at": now} for s, c, t in keys]
        rows = conn.execute(LOCK_TICKET_PG, params).mappings().all()
    else:  # SQLite: this process holds the only write lock already
        rows = _SELECT_TICKETS.rows(conn, _any_of(keys))
    wanted = set(keys)
    found = {(r["source"], r["connection"], r["ticket_id"]): r for r in rows if r["snapshot"] is not None}
    return {key: row for key, row in found.items() if key in wanted}


def ticket_row(key: TicketKey, values: Mapping[str, Any]) -> dict[str, Any]:
    """One row for :func:`save_tickets`: the ticket ``key`` and ``values`` (every column of
    :data:`TICKET_COLUMNS`)."""
    return {"source": key[0], "connection": key[1], "ticket_id": key[2], **values}


def save_tickets(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store processed versions (rows from :func:`ticket_row`, one per ticket), inserted or updated (a new ticket,
    :func:`lock`'s placeholder row, or a processed one): one executemany."""
    if rows:
        _SAVE_TICKETS[conn.dialect.name].executemany(conn, rows)


def set_open_incidents(
    conn: Connection, source: str, connection: str, ticket_id: str, open_count: int, *, keep_recheck: bool = True
) -> None:
    """After a recheck paged: the ticket's open incidents; it stays flagged for rechecks only with none open
    (and only if it was flagged: a ticket re-evaluated because its silence ended keeps its flag as it was)."""
    key = {"s": source, "c": connection, "t": ticket_id}
    recheck = keep_recheck and open_count == 0
    conn.execute(SET_OPEN_INCIDENTS, {**key, "open_incidents": open_count, "recheck": recheck})


def stored(conn: Connection, source: str, connection: str, ticket_id: str) -> bool:
    """Whether the ticket has a stored row (retention may have pruned it)."""
    return conn.execute(SELECT_TICKET, {"s": source, "c": connection, "t": ticket_id}).first() is not None


def recheck_keys(conn: Connection, after: tuple[str, str, str], chunk: int) -> list[tuple[str, str, str]]:
    """Up to ``chunk`` (source, connection, ticket id) of tickets flagged for rechecks, in key order after
    ``after``."""
    key = (tickets.c.source, tickets.c.connection, tickets.c.ticket_id)
    rows = conn.execute(
        select(*key).where(tickets.c.recheck.is_(True), tuple_(*key) > tuple_(*after)).order_by(*key).limit(chunk)
    ).all()
    return [(str(source), str(connection), str(ticket_id)) for source, connection, ticket_id in rows]


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(tickets)).scalar_one() or 0)


# -- links -----------------------------------------------------------------------------------------
def links_of(conn: Connection, source: str, connection: str, ticket_id: str) -> dict[str, LinkState]:
    """The ticket's links by rule."""
    rows = conn.execute(SELECT_LINKS, {"s": source, "c": connection, "t": ticket_id}).mappings()
    return {r["rule"]: link_state(r) for r in rows}


def links_of_many(conn: Connection, keys: Sequence[TicketKey]) -> dict[TicketKey, dict[str, LinkState]]:
    """:func:`links_of` for several tickets in one statement: every key of ``keys``, with its links by rule (none:
    an empty mapping)."""
    found: dict[TicketKey, dict[str, LinkState]] = {key: {} for key in keys}
    if keys:
        for r in _SELECT_LINKS_OF_TICKETS.rows(conn, _any_of(keys)):
            states = found.get((r["source"], r["connection"], r["ticket_id"]))
            if states is not None:  # not a ticket of another key that the lists' cross product names
                states[r["rule"]] = link_state(r)
    return found


def link_state(row: Row) -> LinkState:
    """A ``links`` row as the lifecycle sees it."""
    return LinkState(
        rule=row["rule"],
        dedup_key=row["dedup_key"],
        routing_key=row["routing_key"],
        state=IncidentState(row["state"]),
        generation=row["generation"],
        hold_version=row["hold_version"],
    )


def link_row(key: TicketKey, rule: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """One link for :func:`save_links`: the ticket ``key``, the ``rule`` and ``values`` (:data:`LINK_VALUES`, and
    ``created_at`` for a new one)."""
    return {"source": key[0], "connection": key[1], "ticket_id": key[2], "rule": rule, **values}


def save_links(conn: Connection, new: Sequence[Mapping[str, Any]], moved: Sequence[Mapping[str, Any]]) -> None:
    """Create the ``new`` links (rows from :func:`link_row` with ``created_at``) and move the ``moved`` ones on
    (rows from :func:`link_row`); the caller read which exist with the ticket's row locked. One executemany
    each."""
    if new:
        _INSERT_LINKS.executemany(conn, new)
    if moved:
        _UPDATE_LINKS.executemany(conn, [_moved_link(row) for row in moved])


def _moved_link(row: Mapping[str, Any]) -> dict[str, Any]:
    """A :func:`link_row` as :data:`UPDATE_LINK`'s parameters (only its own: any other key named like a column
    would be SET too)."""
    where = {"s": row["source"], "c": row["connection"], "t": row["ticket_id"], "r": row["rule"]}
    return where | {name: row[name] for name in LINK_VALUES}


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
OPEN_LINKS_BY_TRIGGER = (
    select(_INCIDENT_STATE, func.count()).where(links.c.state != "resolved").group_by(_INCIDENT_STATE)
)


def open_links_by_trigger(conn: Connection) -> dict[str, int]:
    """Unresolved links counted by their trigger's fate: ``open``, ``dry_run``, ``pending``, ``dead``."""
    return {str(k): int(n) for k, n in conn.execute(OPEN_LINKS_BY_TRIGGER).all()}


# -- decisions -------------------------------------------------------------------------------------
def insert_decisions(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append decision-log rows (one executemany)."""
    _INSERT_DECISIONS.executemany(conn, rows)


def decisions_for(conn: Connection, source: str, connection: str, ticket_id: str, limit: int) -> list[dict[str, Any]]:
    """A ticket's latest decisions, newest first."""
    this = (decisions.c.source == source, decisions.c.connection == connection, decisions.c.ticket_id == ticket_id)
    rows = conn.execute(select(decisions).where(*this).order_by(decisions.c.id.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in rows]


def prune_decisions(conn: Connection, before: datetime, chunk: int) -> int:
    """Delete up to ``chunk`` decision-log rows older than ``before``; returns how many."""
    ids = select(decisions.c.id).where(and_(decisions.c.at < before)).limit(chunk).scalar_subquery()
    return int(conn.execute(delete(decisions).where(decisions.c.id.in_(ids))).rowcount or 0)
