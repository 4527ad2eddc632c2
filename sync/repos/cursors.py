"""SQL of the coordination state: poll cursors and poll errors per source, leases (one scheduler or poller
across replicas) and replica heartbeats (who is alive, see :mod:`sync.heartbeat`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, exists, func, or_, select, update
from sqlalchemy.engine import RowMapping

from kernel.redact import redact
from sync.db import insert_ignore
from sync.schema import cursors, leases, replicas


# -- cursors and poll errors -----------------------------------------------------------------------
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
        conn.execute(insert_ignore(conn, cursors), {"source": source, **values})
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
        conn.execute(insert_ignore(conn, cursors), {"source": source, **values})


def all_cursors(conn: Connection) -> list[RowMapping]:
    """Every source's cursor row, by source (the ``status`` report)."""
    return list(conn.execute(select(cursors).order_by(cursors.c.source)).mappings().all())


def last_polls(conn: Connection) -> dict[str, datetime | None]:
    """Per source, when the last poll succeeded."""
    rows = conn.execute(select(cursors.c.source, cursors.c.last_success_at)).all()
    return {str(source): last for source, last in rows}


def permanent_poll_errors(conn: Connection) -> dict[str, str]:
    """Sources whose last poll failed for good, with the (redacted) error: the few cursor rows only."""
    rows = conn.execute(
        select(cursors.c.source, cursors.c.last_error).where(cursors.c.last_error_kind == "permanent")
    ).all()
    return {str(source): redact(str(error)) for source, error in rows}


# -- leases ----------------------------------------------------------------------------------------
def acquire_lease(
    conn: Connection, name: str, holder: str, now: datetime, seconds: float, stale_before: datetime | None = None
) -> bool:
    """Take or renew the lease ``name`` for ``holder`` unless another holder's lease is still valid. With
    ``stale_before``, a lease whose holder's heartbeat is older than that is free too (the holder died)."""
    until = now + timedelta(seconds=seconds)
    conn.execute(insert_ignore(conn, leases), {"name": name, "holder": holder, "expires_at": until})
    free = [leases.c.holder == holder, leases.c.expires_at < now]
    if stale_before is not None:
        free.append(lease_holder_dead(leases.c.holder, stale_before))
    got = conn.execute(update(leases).where(leases.c.name == name, or_(*free)).values(holder=holder, expires_at=until))
    return bool(got.rowcount)


def release_lease(conn: Connection, name: str, holder: str) -> None:
    conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


# -- replica heartbeats ----------------------------------------------------------------------------
def claim_holder_dead(
    claimed_by: ColumnElement[Any], stale_before: datetime | ColumnElement[Any]
) -> ColumnElement[bool]:
    """SQL: the replica that holds this claim (``<instance>/<worker>``) stopped heartbeating before
    ``stale_before``."""
    prefix = replicas.c.instance + "/"
    return exists().where(
        replicas.c.heartbeat_at < stale_before,
        func.substr(claimed_by, 1, func.length(prefix)) == prefix,
    )


def lease_holder_dead(holder: ColumnElement[Any], stale_before: datetime) -> ColumnElement[bool]:
    """SQL: the replica holding this lease (``holder`` = its instance) stopped heartbeating before
    ``stale_before``."""
    return exists().where(replicas.c.instance == holder, replicas.c.heartbeat_at < stale_before)


def record_beat(conn: Connection, instance: str, now: datetime, *, dry_run: bool = False) -> None:
    """Upsert ``instance``'s heartbeat (an UPDATE; an INSERT only the first time, saying whether it runs in dry
    run)."""
    done = conn.execute(update(replicas).where(replicas.c.instance == instance).values(heartbeat_at=now))
    if not done.rowcount:
        row = {"instance": instance, "started_at": now, "heartbeat_at": now, "dry_run": dry_run}
        conn.execute(insert_ignore(conn, replicas), row)


def replicas_alive(conn: Connection, instance: str, since: datetime) -> list[RowMapping]:
    """The replicas other than ``instance`` that heartbeated after ``since`` (``instance``, ``heartbeat_at``,
    ``dry_run``), oldest first."""
    alive = (
        select(replicas.c.instance, replicas.c.heartbeat_at, replicas.c.dry_run)
        .where(replicas.c.instance != instance, replicas.c.heartbeat_at > since)
        .order_by(replicas.c.started_at, replicas.c.instance)
    )
    return list(conn.execute(alive).mappings())


def others_alive(conn: Connection, instance: str, since: datetime) -> int:
    """How many replicas other than ``instance`` heartbeated after ``since``."""
    alive = select(func.count()).where(replicas.c.instance != instance, replicas.c.heartbeat_at > since)
    return int(conn.execute(alive).scalar_one())


def forget_silent_replicas(conn: Connection, before: datetime) -> None:
    """Delete the rows of replicas whose last heartbeat is older than ``before``."""
    conn.execute(delete(replicas).where(replicas.c.heartbeat_at < before))


def forget_replica(conn: Connection, instance: str) -> None:
    conn.execute(delete(replicas).where(replicas.c.instance == instance))
