"""The reverse direction's SQL, in one place: the PagerDuty webhook inbox and the incident correlation table
(``pagerduty_inbox`` and ``incidents`` in :mod:`sync.schema`), and the few reads and writes of links, tickets,
outbox and decision log the reverse worker (:mod:`sync.reverse`) needs; and the engine's look-up of a link's
incident and escalation policy when a ticket's group changes (:func:`incidents_by_dedup_key`,
:func:`expect_policy`).

Every function takes the caller's connection, so the worker's writes for one webhook (incident row, link
state, outbox rows, decision, inbox row done) commit together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import Connection, delete, exists, func, insert, select, update

from kernel import jsonutil
from kernel.model import IncidentState, IncidentUpdate, LinkState, Ticket
from sync.db import insert_ignore
from sync.repos.tickets import link_state
from sync.schema import decisions, incidents, links, outbox, pagerduty_inbox, tickets
from sync.store import Store


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    webhook_id: str
    event_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class LinkRow:
    """A link found by its ``dedup_key``: which ticket and the link state."""

    source: str
    connection: str
    ticket_id: str
    link: LinkState
    hold_version: str | None


@dataclass(frozen=True, slots=True)
class InboxStatus:
    pending: int
    failed: int
    last_received_at: datetime | None
    last_event_type: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "failed": self.failed,
            "last_received_at": self.last_received_at.isoformat() if self.last_received_at else None,
            "last_event_type": self.last_event_type,
        }


# -- inbox ---------------------------------------------------------------------------------------------------
def insert_event(
    conn: Connection,
    *,
    webhook_id: str,
    event_id: str,
    event_type: str,
    incident_id: str | None,
    occurred_at: datetime | None,
    received_at: datetime,
    body: bytes,
) -> bool:
    """Store one verified webhook; False when its ``X-Webhook-Id`` is already stored (a redelivery)."""
    row = {
        "webhook_id": webhook_id,
        "event_id": event_id,
        "event_type": event_type,
        "incident_id": incident_id,
        "occurred_at": occurred_at,
        "received_at": received_at,
        "body": body.decode("utf-8"),
        "status": "pending",
    }
    # RETURNING says whether the row went in (a driver's rowcount for ON CONFLICT DO NOTHING is not reliable)
    return conn.execute(insert_ignore(conn, pagerduty_inbox).returning(pagerduty_inbox.c.id), row).first() is not None


def pending_events(conn: Connection, limit: int) -> list[InboxRow]:
    """The oldest pending webhooks, in arrival order (PagerDuty keeps order per subscription and incident)."""
    rows = conn.execute(
        select(pagerduty_inbox.c.id, pagerduty_inbox.c.webhook_id, pagerduty_inbox.c.event_type, pagerduty_inbox.c.body)
        .where(pagerduty_inbox.c.status == "pending")
        .order_by(pagerduty_inbox.c.id)
        .limit(limit)
    ).all()
    return [InboxRow(int(r.id), str(r.webhook_id), str(r.event_type), str(r.body).encode("utf-8")) for r in rows]


def finish_event(
    conn: Connection, row_id: int, outcome: str, now: datetime, *, failed: bool = False, error: str | None = None
) -> bool:
    """Mark a pending webhook handled; False when it no longer is pending (another replica finished it: the
    caller's transaction must then write nothing). On PostgreSQL the update locks the row until commit."""
    done = conn.execute(
        update(pagerduty_inbox)
        .where(pagerduty_inbox.c.id == row_id, pagerduty_inbox.c.status == "pending")
        .values(status="failed" if failed else "done", outcome=outcome, processed_at=now, error=error)
    )
    return bool(done.rowcount)


def set_outcome(conn: Connection, row_id: int, outcome: str) -> None:
    conn.execute(update(pagerduty_inbox).where(pagerduty_inbox.c.id == row_id).values(outcome=outcome))


def inbox_status(conn: Connection) -> InboxStatus:
    rows = conn.execute(
        select(pagerduty_inbox.c.status, func.count())
        .where(pagerduty_inbox.c.status.in_(("pending", "failed")))
        .group_by(pagerduty_inbox.c.status)
    ).all()
    counts = {str(status): int(n) for status, n in rows}
    last = conn.execute(
        select(pagerduty_inbox.c.received_at, pagerduty_inbox.c.event_type)
        .order_by(pagerduty_inbox.c.id.desc())
        .limit(1)
    ).first()
    return InboxStatus(
        pending=int(counts.get("pending", 0)),
        failed=int(counts.get("failed", 0)),
        last_received_at=last.received_at if last else None,
        last_event_type=str(last.event_type) if last else None,
    )


def read_inbox_status(store: Store) -> InboxStatus:
    """The ``status`` report's ``pagerduty_inbox`` section."""
    with store.engine.connect() as conn:
        return inbox_status(conn)


ANY_PENDING = select(pagerduty_inbox.c.id).where(pagerduty_inbox.c.status == "pending").limit(1)


def has_pending(store: Store) -> bool:
    with store.engine.connect() as conn:
        return pending_in(conn)


def pending_in(conn: Connection, incident_id: str | None = None) -> bool:
    """Any PagerDuty webhook waiting for the reverse worker (on the caller's connection); of one incident only
    when ``incident_id`` is given (the one being handled is no longer pending)."""
    stmt = ANY_PENDING if incident_id is None else ANY_PENDING.where(pagerduty_inbox.c.incident_id == incident_id)
    return conn.execute(stmt).first() is not None


def store_event(store: Store, **values: Any) -> bool:
    """:func:`insert_event` in its own transaction, served before background work (the webhook waits)."""
    with store.begin(urgent=True) as conn:
        return insert_event(conn, **values)


def prune_events(conn: Connection, before: datetime) -> int:
    """Retention: processed webhooks received before ``before`` (pending and failed ones stay)."""
    gone = conn.execute(
        delete(pagerduty_inbox).where(pagerduty_inbox.c.received_at < before, pagerduty_inbox.c.status == "done")
    )
    return int(gone.rowcount or 0)


# -- correlation ---------------------------------------------------------------------------------------------
def incident_dedup_key(conn: Connection, incident_id: str) -> str | None:
    return conn.execute(
        select(incidents.c.dedup_key).where(incidents.c.incident_id == incident_id)
    ).scalar_one_or_none()


class EventMarks(NamedTuple):
    """How far an incident's news was applied (:func:`event_marks`)."""

    snapshot_at: datetime | None  # the newest applied event that carried the incident (its status, policy)
    moved_at: datetime | None  # the newest applied event of the kinds that move the link (``state_event_at``)
    status: str | None  # the incident's status as that newest event carried it
    policy: str | None = None  # … and its escalation policy
    group_edit_at: datetime | None = None  # a person's newest group change on the ticket (:func:`note_group_edit`)
    group_edit: GroupEdit | None = None  # … and the incident update it asked for (None: it asked for none)
    reconciled_status: str | None = None  # a state move the incident check applied from the REST API: its status
    reconciled_at: datetime | None = None  # … and when PagerDuty says it changed (``last_status_change_at``)


def event_marks(conn: Connection, incident_id: str) -> EventMarks:
    """The incident's :class:`EventMarks`; all None when none of its events was applied yet."""
    row = conn.execute(
        select(
            incidents.c.last_event_at,
            incidents.c.state_event_at,
            incidents.c.status,
            incidents.c.escalation_policy_id,
            incidents.c.group_edit_at,
            incidents.c.group_edit_update,
            incidents.c.reconciled_status,
            incidents.c.reconciled_at,
        ).where(incidents.c.incident_id == incident_id)
    ).first()
    if row is None:
        return EventMarks(None, None, None)
    return EventMarks(row[0], row[1], row[2], row[3], row[4], _group_edit_from_json(row[5]), row[6], row[7])


def _set(conn: Connection, incident_id: str, **values: Any) -> None:
    """Write ``values`` onto the incident's row."""
    conn.execute(update(incidents).where(incidents.c.incident_id == incident_id).values(**values))


def set_reconciled(conn: Connection, incident_id: str, status: str | None, at: datetime | None) -> None:
    """The incident check applied a change to ``status`` that PagerDuty dates ``at`` (None: its webhook came)."""
    _set(conn, incident_id, reconciled_status=status, reconciled_at=at)


class ToCheck(NamedTuple):
    """An open link's incident the incident check asks PagerDuty about (:func:`incidents_to_check`)."""

    incident_id: str
    dedup_key: str
    link_state: IncidentState
    moved_at: datetime | None  # the newest state news applied (``state_event_at``)


def incidents_to_check(conn: Connection, quiet_before: datetime, limit: int) -> list[ToCheck]:
    """Up to ``limit`` incidents of open links with no news (and no check) since ``quiet_before`` and none waiting
    in the inbox, the least recently checked first. Open links only: a lost resolve is what leaves a ticket behind
    its incident."""
    rows = conn.execute(
        select(incidents.c.incident_id, incidents.c.dedup_key, links.c.state, incidents.c.state_event_at)
        .join(links, links.c.dedup_key == incidents.c.dedup_key)
        .where(
            links.c.state != IncidentState.RESOLVED.value,
            incidents.c.updated_at < quiet_before,
            (incidents.c.checked_at.is_(None)) | (incidents.c.checked_at < quiet_before),
            ~exists().where(  # news of it waits in the inbox: the reverse worker is behind, nothing was lost
                pagerduty_inbox.c.status == "pending", pagerduty_inbox.c.incident_id == incidents.c.incident_id
            ),
        )
        .order_by(incidents.c.checked_at.is_not(None), incidents.c.checked_at, incidents.c.incident_id)
        .limit(limit)
    ).all()
    return [ToCheck(str(r[0]), str(r[1]), IncidentState(r[2]), r[3]) for r in rows]


def mark_checked(conn: Connection, incident_id: str, now: datetime) -> None:
    _set(conn, incident_id, checked_at=now)


@dataclass(frozen=True, slots=True)
class GroupEdit:
    """The incident update a person's group edit on the ticket asked for (reassign, or add responders), and where
    it stands (:func:`note_group_edit`):

    - ``sent``: the engine sent it at once, or the reverse worker later;
    - ``owed``: not sent, the incident looked there already;
    - ``due``: a move in PagerDuty older than the edit arrived late: once no news of the incident waits in the
      inbox, the reverse worker sends it if PagerDuty's newest news shows the incident elsewhere."""

    update: IncidentUpdate
    state: Literal["sent", "owed", "due"]


def note_group_edit(conn: Connection, incident_id: str, group: str, at: datetime, *, edit: GroupEdit | None) -> None:
    """A person's ticket change moved the ticket to ``group`` at ``at`` (the ticket's own time): PagerDuty news
    older than ``at``, delivered late, then sets no group when the edit asked for an update (``edit``), and that
    update, if not sent yet (the incident looked there already), is sent when a late move shows the incident
    elsewhere (:class:`GroupEdit`)."""
    conn.execute(
        update(incidents)
        .where(
            incidents.c.incident_id == incident_id,
            (incidents.c.group_edit_at.is_(None)) | (incidents.c.group_edit_at <= at),
        )
        .values(group_edit_at=at, group_edit_update=_group_edit_to_json(edit))
    )


#: how long a group our set_group wrote waits for its ticket webhook: the write-back's retry budget (a write still
#: failing by then is a dead letter, and a person's change to that group afterwards is theirs)
MIRROR_SECONDS = 3600.0
#: the mirrored groups kept per incident at most (a person moving an incident this often within an hour is rare)
MIRRORED_GROUPS = 8


def mirror_group(conn: Connection, incident_id: str, group: str, now: datetime) -> None:
    """The reverse worker queued ``set_group`` (``group``) from a PagerDuty move: its echo is not a person's edit."""
    entries = _mirrored(conn, incident_id, now)
    _set_mirrored(conn, incident_id, [*entries, (group, now)][-MIRRORED_GROUPS:])


def pending_group(conn: Connection, incident_id: str, now: datetime) -> str | None:
    """The group our last ``set_group`` wrote whose ticket webhook has not come back yet (None: none)."""
    entries = _mirrored(conn, incident_id, now)
    return entries[-1][0] if entries else None


def our_group_echo(conn: Connection, incident_id: str, group: str, now: datetime) -> bool:
    """The ticket's group changed to ``group`` because our ``set_group`` wrote it. That entry is consumed with every
    one written before it (a ticketing system that delivers two versions out of order shows only the newer: the
    older one's webhook never comes), so a later change to one of those groups by a person is theirs."""
    entries = _mirrored(conn, incident_id, now)
    at = next((i for i, (g, _) in enumerate(entries) if g == group), None)
    if at is None:
        return False
    _set_mirrored(conn, incident_id, entries[at + 1 :])
    return True


def _mirrored(conn: Connection, incident_id: str, now: datetime) -> list[tuple[str, datetime]]:
    """The entries not older than :data:`MIRROR_SECONDS`, oldest first."""
    text = conn.execute(
        select(incidents.c.mirrored_group).where(incidents.c.incident_id == incident_id)
    ).scalar_one_or_none()
    try:  # ours alone writes it; anything else there (a hand edit) counts as no entry, never as a failure
        data = jsonutil.loads(text) if text else []
        items = [(str(g), datetime.fromisoformat(str(at))) for g, at in data]
    except (ValueError, TypeError):
        return []
    return [(g, at) for g, at in items if at.tzinfo is not None and (now - at).total_seconds() <= MIRROR_SECONDS]


def _set_mirrored(conn: Connection, incident_id: str, entries: list[tuple[str, datetime]]) -> None:
    value = jsonutil.dumps([[g, at.isoformat()] for g, at in entries]) if entries else None
    _set(conn, incident_id, mirrored_group=value)


def set_group_edit(conn: Connection, incident_id: str, edit: GroupEdit) -> None:
    """The group edit's update moved on (``due``: a late move older than it arrived; ``sent``: queued)."""
    _set(conn, incident_id, group_edit_update=_group_edit_to_json(edit))


def drop_group_edit(conn: Connection, incident_id: str) -> None:
    """A person's move in PagerDuty newer than the group edit: that move is the newer word from now on."""
    _set(conn, incident_id, group_edit_update=None)


def _group_edit_to_json(edit: GroupEdit | None) -> str | None:
    if edit is None:
        return None
    u = edit.update
    return jsonutil.dumps(
        {
            "incident_id": u.incident_id,
            "dedup_key": u.dedup_key,
            "marker": u.marker,
            "reassign_to_policy": u.reassign_to_policy,
            "responder_policies": list(u.responder_policies),
            "note": u.note,
            "state": edit.state,
        }
    )


def _group_edit_from_json(text: str | None) -> GroupEdit | None:
    """Ours alone writes it; anything else there (a hand edit) counts as no edit, never as a failure."""
    if not text:
        return None
    try:
        data = jsonutil.loads(text)
        update_ = IncidentUpdate(
            incident_id=str(data["incident_id"]),
            dedup_key=str(data["dedup_key"]),
            marker=str(data["marker"]),
            reassign_to_policy=data.get("reassign_to_policy"),
            responder_policies=tuple(str(p) for p in data.get("responder_policies") or ()),
            note=data.get("note"),
        )
        state = data.get("state")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return GroupEdit(update_, state=state if state in ("sent", "owed", "due") else "sent")


def mark_state_event(conn: Connection, incident_id: str, occurred_at: datetime) -> None:
    """Record that an event of ``occurred_at`` moved the incident's link (forward only)."""
    conn.execute(
        update(incidents)
        .where(
            incidents.c.incident_id == incident_id,
            (incidents.c.state_event_at.is_(None)) | (incidents.c.state_event_at < occurred_at),
        )
        .values(state_event_at=occurred_at)
    )


def incident_url(conn: Connection, incident_id: str) -> str | None:
    """The incident's link as stored from an earlier webhook (note and responder webhooks carry none)."""
    return conn.execute(select(incidents.c.html_url).where(incidents.c.incident_id == incident_id)).scalar_one_or_none()


def save_incident(
    conn: Connection,
    incident_id: str,
    dedup_key: str,
    learned_by: str,
    now: datetime,
    *,
    occurred_at: datetime | None = None,
    number: int | None = None,
    html_url: str | None = None,
    status: str | None = None,
    escalation_policy_id: str | None = None,
) -> None:
    """Create or update the incident's row; fields given as None keep their stored value. ``occurred_at`` moves
    ``last_event_at`` forward only (a retried older event never moves the incident backwards)."""
    conn.execute(
        insert_ignore(conn, incidents),
        {"incident_id": incident_id, "dedup_key": dedup_key, "learned_by": learned_by, "updated_at": now},
    )
    values: dict[str, Any] = {"updated_at": now}
    for name, value in (
        ("number", number),
        ("html_url", html_url or None),
        ("status", status or None),
        ("escalation_policy_id", escalation_policy_id),
    ):
        if value is not None:
            values[name] = value
    stmt = update(incidents).where(incidents.c.incident_id == incident_id)
    if occurred_at is not None:
        conn.execute(stmt.values(**values))
        conn.execute(
            stmt.where((incidents.c.last_event_at.is_(None)) | (incidents.c.last_event_at < occurred_at)).values(
                last_event_at=occurred_at
            )
        )
    else:
        conn.execute(stmt.values(**values))


@dataclass(frozen=True, slots=True)
class KnownIncident:
    """What the engine needs of a link's incident: its id and the escalation policy it is on (as PagerDuty last
    said, or as we last asked: see :func:`expect_policy`)."""

    incident_id: str
    escalation_policy_id: str | None


def incidents_by_dedup_key(conn: Connection, dedup_keys: Iterable[str]) -> dict[str, KnownIncident]:
    """The known incident of each of ``dedup_keys`` (the engine's forward reassignment); the most recently
    updated one if PagerDuty ever made two for one key."""
    wanted = sorted({k for k in dedup_keys if k})
    if not wanted:
        return {}
    rows = conn.execute(
        select(incidents.c.dedup_key, incidents.c.incident_id, incidents.c.escalation_policy_id)
        .where(incidents.c.dedup_key.in_(wanted))
        .order_by(incidents.c.updated_at, incidents.c.incident_id)
    ).all()
    return {str(r.dedup_key): KnownIncident(str(r.incident_id), r.escalation_policy_id) for r in rows}


def expect_policy(conn: Connection, incident_id: str, policy_id: str, now: datetime) -> None:
    """The engine queued a move of ``incident_id`` to ``policy_id``: record it as the incident's policy now, so a
    second group change before the echo arrives compares with where the incident is going (its echo, or any
    newer webhook, then says where it is)."""
    _set(conn, incident_id, escalation_policy_id=policy_id, updated_at=now)


def known_dedup_keys(conn: Connection, keys: Iterable[str]) -> list[str]:
    """Which of ``keys`` are the dedup key of one of our links (any state)."""
    wanted = sorted({k for k in keys if k})
    if not wanted:
        return []
    found = conn.execute(select(links.c.dedup_key).where(links.c.dedup_key.in_(wanted))).scalars().all()
    return sorted(set(found))


def open_dedup_keys_by_ticket_key(conn: Connection, ticket_keys: Iterable[str]) -> list[str]:
    """The dedup keys of the unresolved links of tickets whose key is one of ``ticket_keys``."""
    wanted = sorted({k for k in ticket_keys if k})
    if not wanted:
        return []
    rows = conn.execute(
        select(links.c.dedup_key)
        .join(
            tickets,
            (tickets.c.source == links.c.source)
            & (tickets.c.connection == links.c.connection)
            & (tickets.c.ticket_id == links.c.ticket_id),
        )
        .where(tickets.c.key.in_(wanted), links.c.state != IncidentState.RESOLVED.value)
    ).scalars()
    return sorted(set(rows))


def link_by_dedup_key(conn: Connection, dedup_key: str) -> LinkRow | None:
    """The link whose *current* incident has ``dedup_key`` (None: no such link, or it moved to a newer one)."""
    row = conn.execute(select(links).where(links.c.dedup_key == dedup_key).limit(1)).mappings().first()
    if row is None:
        return None
    return LinkRow(row["source"], row["connection"], row["ticket_id"], link_state(row), row["hold_version"])


def set_link_state(
    conn: Connection, dedup_key: str, state: IncidentState, now: datetime, *, hold_version: str | None
) -> None:
    """What PagerDuty says of the link's incident; ``hold_version`` set or cleared with it (see
    :func:`kernel.lifecycle.content_digest`)."""
    conn.execute(
        update(links)
        .where(links.c.dedup_key == dedup_key)
        .values(state=state.value, hold_version=hold_version, updated_at=now)
    )


def lock_ticket(conn: Connection, source: str, connection: str, ticket_id: str) -> Ticket | None:
    """The ticket's last processed version, its row locked on PostgreSQL (the engine locks it too: the two
    never move one ticket's links at the same time); None if it was never processed."""
    stmt = select(tickets.c.snapshot).where(
        tickets.c.source == source, tickets.c.connection == connection, tickets.c.ticket_id == ticket_id
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    snapshot = conn.execute(stmt).scalar_one_or_none()
    return Ticket.from_json(jsonutil.loads(snapshot)) if snapshot else None


# -- what the worker writes ----------------------------------------------------------------------------------
def enqueue(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(outbox), list(rows))


def record_decision(conn: Connection, row: Mapping[str, Any]) -> None:
    conn.execute(insert(decisions), dict(row))
