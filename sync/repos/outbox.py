"""SQL of the outbox: outbound actions queued by the engine (and write-back notes queued by delivery), claimed
and sent by the delivery workers, dead letters and their re-drive, and what the rate limiter and the metrics
read of it."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import aliased

from kernel.model import IncidentAction, IncidentUpdate, TicketNote, TicketUpdate
from kernel.redact import redact
from sync.prepared import Prepared, Row
from sync.repos.cursors import claim_holder_dead
from sync.schema import UTCDateTime, changes, links, outbox

_B = bindparam
_NOW = bindparam("now", type_=UTCDateTime())  # the claim's time
_STALE = bindparam("stale", type_=UTCDateTime())  # a claimer whose heartbeat is older than this is dead

INSERT = insert(outbox)
_INSERT = Prepared(INSERT)
#: a row this worker claimed and that is still pending: every write after the claim is fenced with it
_OURS = (outbox.c.id == _B("i"), outbox.c.claimed_by == _B("worker"), outbox.c.status == "pending")
RENEW = update(outbox).where(*_OURS).values(claimed_until=_B("until"))
MARK_SENT = (
    update(outbox)
    .where(*_OURS)
    .values(
        status="sent",
        sent_at=_B("now"),
        dry_run=_B("dry_run"),
        last_error=None,
        claimed_until=None,
        attempts=outbox.c.attempts + 1,
    )
)
TAKE = (
    update(outbox)
    .where(outbox.c.id.in_(_B("ids", expanding=True)))
    .values(claimed_until=_B("until"), claimed_by=_B("worker"))
)
UNCLAIM = (
    update(outbox)
    .where(
        outbox.c.id.in_(_B("ids", expanding=True)), outbox.c.claimed_by == _B("worker"), outbox.c.status == "pending"
    )
    .values(claimed_until=None)
)
SENDS_ELSEWHERE = select(outbox.c.sent_at).where(
    outbox.c.routing_key == _B("key"),
    outbox.c.sent_at > _B("since"),
    outbox.c.destination == _B("destination"),
    ~outbox.c.claimed_by.like(_B("mine")),
)

_TAKE, _UNCLAIM, _RENEW, _MARK_SENT = Prepared(TAKE), Prepared(UNCLAIM), Prepared(RENEW), Prepared(MARK_SENT)
_SENDS_ELSEWHERE = Prepared(SENDS_ELSEWHERE)


# -- the engine's side -----------------------------------------------------------------------------
def enqueue(conn: Connection, **values: Any) -> None:
    """Queue one rendered action (the keywords of :func:`row`)."""
    enqueue_rows(conn, [row(**values)])


def row(
    *,
    kind: str,
    destination: str,
    source: str,
    connection: str,
    ticket_id: str,
    ticket_key: str,
    rule: str,
    action: str,
    dedup_key: str,
    generation: int,
    limit_key: str,
    body: str,
    change_id: int | None,
    now: datetime,
) -> dict[str, Any]:
    """One rendered action for ``destination``, due now, about the ticket (``source``, ``connection``,
    ``ticket_id``), as :func:`enqueue_rows` takes it. ``limit_key``: the destination's rate-limit key (stored as
    ``routing_key``)."""
    return {
        "kind": kind,
        "destination": destination,
        "source": source,
        "connection": connection,
        "ticket_id": ticket_id,
        "ticket_key": ticket_key,
        "rule": rule,
        "action": action,
        "dedup_key": dedup_key,
        "generation": generation,
        "routing_key": limit_key,
        "body": body,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "change_id": change_id,
        "created_at": now,
    }


def queued_in_dry_run(rows: Sequence[dict[str, Any]]) -> None:
    """Mark ``rows`` (from :func:`row`, or built alike) as queued in dry run, before they are queued: a dry run on this
    database later tells them from a live instance's (:func:`live_rows`)."""
    for queued in rows:
        queued["dry_run"] = True


def live_rows(conn: Connection) -> tuple[int, int]:
    """(rows pending that were not queued in dry run, rows sent for real or refused for good): a live instance's
    work, which a dry run on this database would take and mark sent without sending."""
    live = outbox.c.dry_run.is_(False)
    pending = select(func.count()).where(live, outbox.c.status == "pending")
    done = select(func.count()).where(live, or_(outbox.c.status == "sent", outbox.c.status == "dead"))
    return int(conn.execute(pending).scalar_one()), int(conn.execute(done).scalar_one())


def enqueue_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Queue rows from :func:`row` in one executemany. Their ids follow the order of ``rows`` (the delivery
    workers send the events of one ``dedup_key`` in id order: pass them in the order they were planned)."""
    if rows:
        _INSERT.executemany(conn, rows)


# -- the delivery workers' side --------------------------------------------------------------------
def _of_kinds(column: ColumnElement[str], kinds: Collection[str]) -> ColumnElement[bool]:
    """``column`` is one of ``kinds``: one ``=`` per kind, not ``IN``, whose list SQLAlchemy renders again into the
    statement at every execution (``expanding`` parameters; 0.7 % of a page's instructions in ``bench.callgrind``)."""
    if not kinds:
        return false()
    return or_(*(column == kind for kind in sorted(kinds)))


def _claimable(takeover: bool, kinds: Collection[str] | None) -> list[Any]:
    """A pending row a worker may claim (once due): unclaimed or its claim expired (or, with ``takeover``, its
    holder's heartbeat older than ``:stale``); of ``kinds`` only (None: any). Binds ``now`` (and ``stale``)."""
    free = [outbox.c.claimed_until.is_(None), outbox.c.claimed_until < _NOW]
    if takeover:
        free.append(claim_holder_dead(outbox.c.claimed_by, _STALE))
    which = [] if kinds is None else [_of_kinds(outbox.c.kind, kinds)]
    return [outbox.c.status == "pending", or_(*free), *which]


class Claims:
    """A delivery worker's claim queries, built once (the idle read runs every ``idle_seconds`` per worker,
    and building it cost more than running it). ``takeover``: rows claimed by a replica that stopped
    heartbeating are free too, not only expired claims."""

    def __init__(self, *, takeover: bool, kinds: Collection[str] | None = None) -> None:
        """``kinds``: the outbox kinds this worker sends (None: all)."""
        self._due = (*_claimable(takeover, kinds), outbox.c.next_attempt_at <= _NOW)
        self._kinds = kinds
        self._anything_due = Prepared(select(outbox.c.id).where(*self._due).limit(1))
        self._statements: dict[tuple[str, int], Prepared] = {}

    def anything_due(self, conn: Connection, now: datetime, stale: datetime) -> bool:
        return bool(self._anything_due.rows(conn, {"now": now, "stale": stale}))

    def claim(
        self, conn: Connection, limit: int, now: datetime, stale: datetime, *, worker: str, until: datetime
    ) -> list[Row]:
        """Claim up to ``limit`` due rows for ``worker`` until ``until``; returns them as they were before the
        claim (``claimed_by`` / ``claimed_until`` tell whose claim was taken over), each with the
        ``change_received_at`` of the change that queued it (None for rows without one)."""
        rows = self.statement(conn.dialect.name, limit).rows(conn, {"now": now, "stale": stale})
        if rows:
            _TAKE.execute(conn, {"ids": [r["id"] for r in rows], "until": until, "worker": worker})
        return rows

    def statement(self, dialect: str, limit: int) -> Prepared:
        """The claim query, built once per dialect and batch size: due rows, oldest first, each only when no
        earlier row of its ``dedup_key`` and its side (:data:`ORDERED_KINDS`) is pending."""
        key = (dialect, limit)
        prepared = self._statements.get(key)
        if prepared is None:
            blocked = _waits_for_an_earlier_row(self._kinds)
            # the change's arrival rides along (the delivery-latency metric): no query per sent event for it
            received = (
                select(changes.c.received_at).where(changes.c.id == outbox.c.change_id).scalar_subquery()
            ).label("change_received_at")
            stmt = (
                select(outbox, received)
                .where(*self._due, ~blocked)
                .order_by(outbox.c.next_attempt_at, outbox.c.id)
                .limit(limit)
            )
            if dialect == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True, of=outbox)
            prepared = self._statements[key] = Prepared(stmt)
        return prepared


def unclaim(conn: Connection, row_ids: Sequence[int], worker: str) -> None:
    """Hand ``worker``'s still pending rows back at once (their claim ends now)."""
    _UNCLAIM.execute(conn, {"ids": list(row_ids), "worker": worker})


def renew(conn: Connection, row_id: int, worker: str, until: datetime) -> bool:
    """Extend ``worker``'s claim; False if the row is no longer its own (fencing)."""
    return bool(_RENEW.execute(conn, {"i": row_id, "worker": worker, "until": until}))


def mark_sent_many(conn: Connection, sends: Sequence[tuple[int, datetime, bool]], worker: str) -> set[int]:
    """Record ``worker``'s sends, (row id, when, dry run) each, in one executemany (one statement per send cost
    SQLAlchemy's overhead per send: issue 19); returns the ids not marked because the row was taken over meanwhile
    (read back only when the rows marked fall short: the rows ``worker`` holds and that are sent count as marked,
    so a mark retried after a commit whose outcome was unknown counts as marked again, and queues its note again,
    which the note's marker keeps from reaching the ticket twice)."""
    if not sends:
        return set()
    params = [{"i": i, "worker": worker, "now": at, "dry_run": dry_run} for i, at, dry_run in sends]
    marked = _MARK_SENT.executemany(conn, params)
    if marked == len(params) and conn.dialect.supports_sane_multi_rowcount:
        return set()
    ids = [i for i, _, _ in sends]
    ours = select(outbox.c.id).where(outbox.c.id.in_(ids), outbox.c.claimed_by == worker, outbox.c.status == "sent")
    return set(ids) - set(conn.execute(ours).scalars())


def mark(conn: Connection, row_id: int, worker: str, **values: Any) -> None:
    """Update a row ``worker`` still holds (a retry's next attempt, a dead letter, a rate-limit hold); its claim
    ends unless ``values`` say otherwise."""
    values.setdefault("claimed_until", None)
    conn.execute(
        update(outbox)
        .where(outbox.c.id == row_id, outbox.c.status == "pending", outbox.c.claimed_by == worker)
        .values(**values)
    )


#: a row free to ``worker``: unclaimed, its claim expired, or ``worker``'s own (never one another live worker holds)
_FREE_TO_WORKER = or_(
    outbox.c.claimed_until.is_(None), outbox.c.claimed_until < _NOW, outbox.c.claimed_by == _B("worker")
)
#: one row of a held backlog to its slot, fenced: still pending and free to the worker; the worker's claim ends
RESCHEDULE = (
    update(outbox)
    .where(outbox.c.id == _B("i"), outbox.c.status == "pending", _FREE_TO_WORKER)
    .values(next_attempt_at=_B("at", type_=UTCDateTime()), claimed_until=None)
)


def reschedule(
    conn: Connection,
    *,
    destination: str | None,
    kind: str,
    limit_key: str,
    worker: str,
    now: datetime,
    times: Sequence[datetime],
) -> list[RowMapping]:
    """Reschedule the held backlog of ``destination`` for ``limit_key`` (a rate limit's key) to ``times`` (the
    limiter's slots, earliest first): its pending rows free to ``worker`` (unclaimed, claim expired, or
    ``worker``'s own: never a row another live worker holds), in arrival order (``id``: a new event waits behind
    the backlog, and the backlog's rows keep their slots as it drains), get one slot each — never earlier than
    they were already due (a retry's backoff, a ``Retry-After``) — and ``worker``'s claim on them ends. At most
    ``len(times)`` rows: the rows after them that would come due before the last slot are moved to after it (a
    slot span later), left to a later hold.
    ``destination`` None: rows an older version wrote without one (of ``kind``).

    Three statements at most: the read of the rows, one UPDATE of the rest, one executemany of (id, time) for
    the rows whose time changes. On PostgreSQL rows other transactions have locked are skipped. Returns the
    rows rescheduled (``id``, ``kind``, ``action``)."""
    if not times:
        return []
    if destination is None:
        which = and_(outbox.c.destination.is_(None), outbox.c.kind == kind)
    else:
        which = outbox.c.destination == destination
    cond = (outbox.c.status == "pending", outbox.c.routing_key == limit_key, which, _FREE_TO_WORKER)
    params = {"now": now, "worker": worker}
    pg = conn.dialect.name == "postgresql"
    stmt = (
        select(
            outbox.c.id,
            outbox.c.next_attempt_at,
            outbox.c.kind,
            outbox.c.action,
            outbox.c.claimed_by,
            outbox.c.claimed_until,
        )
        .where(*cond)
        .order_by(outbox.c.id)
        .limit(len(times))
    )
    if pg:
        stmt = stmt.with_for_update(skip_locked=True, of=outbox)
    rows = conn.execute(stmt, params).mappings().all()
    if not rows:
        return []
    if len(rows) == len(times):  # maybe more: those due before the last slot go after it, not with the first ones
        last, end = rows[-1], times[-1]
        rest = select(outbox.c.id).where(*cond, outbox.c.id > last["id"], outbox.c.next_attempt_at < end)
        if pg:
            rest = rest.with_for_update(skip_locked=True, of=outbox)
        conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(rest.scalar_subquery()))
            .values(next_attempt_at=end + (end - times[0]), claimed_until=None),
            params,
        )
    slots = [max(at, r["next_attempt_at"]) for r, at in zip(rows, times, strict=False)]  # never pulled forward
    moved = [
        {"i": r["id"], "at": at, "now": now, "worker": worker}
        for r, at in zip(rows, slots, strict=False)
        if r["next_attempt_at"] != at or (r["claimed_by"] == worker and r["claimed_until"] is not None)
    ]
    if moved:
        conn.execute(RESCHEDULE, moved)
    return list(rows)


def sends_elsewhere(conn: Connection, destination: str, limit_key: str, since: datetime, mine: str) -> list[datetime]:
    """When rows of ``destination`` for ``limit_key`` were sent after ``since`` by workers whose ``claimed_by``
    does not start with ``mine``."""
    params = {"key": limit_key, "since": since, "destination": destination, "mine": f"{mine}/%"}
    return [row["sent_at"] for row in _SENDS_ELSEWHERE.rows(conn, params)]


# -- dead letters ----------------------------------------------------------------------------------
def dead_letters(conn: Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(select(outbox).where(outbox.c.status == "dead").order_by(outbox.c.id).limit(limit)).mappings()
    # redacted as shown, too: rows stored by a version that did not redact them
    return [{**r, "last_error": r["last_error"] and redact(r["last_error"], r["routing_key"])} for r in rows.all()]


def retry_dead(conn: Connection, ids: Sequence[int] | None, now: datetime) -> tuple[int, int]:
    """Put dead letters back in the queue (all of them when ``ids`` is None); see
    :meth:`sync.store.Store.retry_dead`. Returns (queued, superseded)."""
    cond = outbox.c.status == "dead"
    if ids is not None:
        cond = and_(cond, outbox.c.id.in_(list(ids)))
    moved_on = exists().where(
        links.c.source == outbox.c.source,
        links.c.connection == outbox.c.connection,
        links.c.ticket_id == outbox.c.ticket_id,
        links.c.rule == outbox.c.rule,
        or_(links.c.generation > outbox.c.generation, links.c.state == "resolved"),
    )
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


def dead_letter_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(outbox.c.kind, func.count()).where(outbox.c.status == "dead").group_by(outbox.c.kind))
    return {"event": 0, "writeback": 0} | {str(kind): int(n) for kind, n in rows.all()}


# -- read side and retention -----------------------------------------------------------------------
def count(conn: Connection, status: str) -> int:
    return int(conn.execute(select(func.count()).select_from(outbox).where(outbox.c.status == status)).scalar_one())


def depth(conn: Connection) -> tuple[int, datetime | None]:
    """(pending rows, when the oldest was queued)."""
    row = conn.execute(select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.status == "pending")).one()
    return int(row[0] or 0), row[1]


def prune(conn: Connection, before: datetime, chunk: int) -> int:
    """Delete up to ``chunk`` sent (or superseded) rows queued before ``before``; returns how many."""
    cond = and_(outbox.c.status.in_(("sent", "superseded")), outbox.c.created_at < before)
    ids = select(outbox.c.id).where(cond).limit(chunk).scalar_subquery()
    return int(conn.execute(delete(outbox).where(outbox.c.id.in_(ids))).rowcount or 0)


# -- when the next row comes due (issue 19) ------------------------------------------------------------
def next_due_statement(takeover: bool, kinds: Collection[str] | None = None) -> Select[Any]:
    """The earliest ``next_attempt_at`` of a pending row a worker could claim once it is due: unclaimed, its
    claim expired (or, with ``takeover``, its holder's heartbeat older than ``:stale``), and not waiting for
    an earlier pending row of its ``dedup_key`` (:data:`ORDERED_KINDS`); of ``kinds`` only (None: any). Binds
    ``now`` (and ``stale``). The service's idle look runs it to sleep until then instead of polling (the partial index
    ``ix_outbox_due`` serves the order)."""
    blocked = _waits_for_an_earlier_row(kinds)
    return (
        select(outbox.c.next_attempt_at)
        .where(*_claimable(takeover, kinds), ~blocked)
        .order_by(outbox.c.next_attempt_at, outbox.c.id)
        .limit(1)
    )


def next_due(conn: Connection, statement: Select[Any], now: datetime, takeover_after: float | None) -> datetime | None:
    """When the next claimable row comes due (maybe already past); ``None`` when nothing is pending."""
    params = {"now": now, "stale": now - timedelta(seconds=takeover_after or 0.0)}
    due: datetime | None = conn.execute(statement, params).scalar_one_or_none()
    return due


#: what PagerDuty is sent (incident events, incident updates) and what the ticketing systems are sent (notes,
#: ticket updates): the service runs separate workers for each, so a ticketing system that hangs never holds
#: a page up behind one of its notes (issue 17)
INCIDENT_KINDS = frozenset({IncidentAction.KIND, IncidentUpdate.KIND})
TICKET_KINDS = frozenset({TicketNote.KIND, TicketUpdate.KIND})
#: what each side's rows of one ``dedup_key`` wait for, in id order: PagerDuty's events for earlier events (a resolve
#: never overtakes its trigger), the tickets' notes and updates for earlier ones of theirs (an acknowledgement's
#: transition never lands after the resolve's; the note that the ticket paged comes first when it was queued first)
ORDERED_KINDS = (frozenset({IncidentAction.KIND}), TICKET_KINDS)


def waiting_on(rows: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """What the claims' rule (:func:`_waits_for_an_earlier_row`) holds back among ``rows`` (outbox rows with their
    ``id``, ``kind``, ``dedup_key`` and ``status``, one ticket's, say): pending row id → the first pending row of its
    ``dedup_key`` and side (:data:`ORDERED_KINDS`), which it waits behind (that one is retrying, held by the rate
    limit, or on its way). The console says so: else such a row shows only ``pending`` and 0 attempts."""
    first: dict[tuple[str, frozenset[str]], int] = {}
    behind: dict[int, int] = {}
    for row in sorted(rows, key=lambda r: int(r["id"])):
        side = next((kinds for kinds in ORDERED_KINDS if row["kind"] in kinds), None)
        if side is None or row["status"] != "pending":
            continue
        head = first.setdefault((str(row["dedup_key"]), side), int(row["id"]))
        if head != row["id"]:
            behind[int(row["id"])] = head
    return behind


def _waits_for_an_earlier_row(claimed: Collection[str] | None) -> ColumnElement[bool]:
    """An outbox row that waits: an earlier row of its ``dedup_key`` and of its side (:data:`ORDERED_KINDS`) is
    still pending. Incident updates (PagerDuty's REST API) do not wait. ``claimed``: the kinds the query takes
    (None: all); a side it never takes is left out of the statement."""
    earlier = aliased(outbox)
    waits = []
    for kinds in ORDERED_KINDS:
        if claimed is not None and not kinds & set(claimed):
            continue
        pending_before = exists().where(
            earlier.c.dedup_key == outbox.c.dedup_key,
            _of_kinds(earlier.c.kind, kinds),
            earlier.c.id < outbox.c.id,
            earlier.c.status == "pending",
        )
        waits.append(and_(_of_kinds(outbox.c.kind, kinds), pending_before))
    return or_(*waits) if waits else false()
