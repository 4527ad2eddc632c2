"""Silences: mute paging for the tickets a matcher matches, for a time window (like Alertmanager's). All their SQL.

A silence is a row of ``silences`` (shared by every replica through the database): matchers (a rule's
``when`` mapping, validated by the rules language before :func:`add_silence` is called), a window
(``starts_at`` ≤ now < ``ends_at``, unless ``expired_at`` ended it early), a comment and an author.

The engine asks only when a rule is about to TRIGGER a new incident (:class:`BatchSilences`, loaded once per
engine batch, on the first trigger): a matching active silence holds the trigger — the decision log says
"silenced by #id", nothing is sent, acknowledge and resolve of open incidents still go out — and the ticket is
remembered in ``silenced_tickets`` until the silence's end. When that end passes (or the silence is expired),
:func:`due_releases` hands those tickets back (an index range on ``until``, never a scan of all tickets) and
the engine re-evaluates each once: a ticket that still matches a rule pages then, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, or_, select, tuple_, update

from kernel import jsonutil
from kernel.errors import ConfigError
from kernel.model import EventAction, PlannedEvent, Ticket
from kernel.ports import SilenceMatcher, SilenceMatchers
from kernel.redact import redact
from sync.db import insert_ignore
from sync.prepared import Prepared, Row
from sync.schema import UTCDateTime, silenced_tickets, silences

log = logging.getLogger("ticketpager.silences")

AUTHOR_MAX = 200  # the author / expired_by columns
COMMENT_MAX = 10_000
#: the longest window a silence may have: a longer one is a typo (``99999999999d``), not a plan
MAX_SILENCE_DAYS = 365
MAX_SILENCE = timedelta(days=MAX_SILENCE_DAYS)
_COMPILED_MAX = 1000  # compiled matchers kept per process (silences are few; ids are never reused)


class SilenceError(ValueError):
    """A silence that cannot be created or expired as asked; ``str()`` says why, for the admin."""


class UnknownSilence(SilenceError, LookupError):
    """No silence with that id."""


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    matchers: Mapping[str, Any]
    starts_at: datetime
    ends_at: datetime
    comment: str
    author: str
    created_at: datetime
    expired_at: datetime | None
    expired_by: str | None = None

    def ended_at(self) -> datetime:
        """When it stops (stopped) muting: its end, or when it was expired if that was earlier."""
        return self.ends_at if self.expired_at is None else min(self.ends_at, self.expired_at)

    def state(self, now: datetime) -> str:
        """``pending`` (starts later), ``active`` or ``expired``."""
        if self.ended_at() <= now:
            return "expired"
        return "pending" if self.starts_at > now else "active"

    def is_active(self, now: datetime) -> bool:
        return self.state(now) == "active"

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state(now),
            "matchers": dict(self.matchers),
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "comment": self.comment,
            "author": self.author,
            "created_at": self.created_at.isoformat(),
            "expired_at": self.expired_at.isoformat() if self.expired_at else None,
            "expired_by": self.expired_by,
        }


def _silence(row: Row) -> Silence:
    return Silence(
        id=row["id"],
        matchers=jsonutil.loads(row["matchers"]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        comment=row["comment"],
        author=row["author"],
        created_at=row["created_at"],
        expired_at=row["expired_at"],
        expired_by=row["expired_by"],
    )


def _text(value: str, name: str, limit: int) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise SilenceError(f"a silence needs a {name} (who and why, for whoever wonders why nothing paged)")
    if len(text) > limit:
        raise SilenceError(f"the {name} is longer than {limit} characters")
    return text


def too_long(length: timedelta) -> str:
    """Why a window of ``length`` is refused (the console's form and the CLI say the same)."""
    return f"a silence lasts at most {MAX_SILENCE_DAYS} days, not {length}: add another when it ends"


def add_silence(
    conn: Connection,
    matchers: Mapping[str, Any],
    starts_at: datetime,
    ends_at: datetime,
    comment: str,
    author: str,
    now: datetime,
) -> Silence:
    """Store a silence. ``matchers`` must already be validated (``rules.silence_match``); the window, the
    comment and the author are checked here (:class:`SilenceError`)."""
    if not matchers:
        raise SilenceError("a silence needs at least one matcher: it would mute every ticket")
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise SilenceError("a silence's start and end need a time zone")
    if ends_at <= starts_at:
        raise SilenceError(f"the silence ends ({ends_at.isoformat()}) before it starts ({starts_at.isoformat()})")
    if ends_at <= now:
        raise SilenceError(f"the silence would end in the past ({ends_at.isoformat()})")
    if ends_at - starts_at > MAX_SILENCE:
        raise SilenceError(too_long(ends_at - starts_at))
    values = {
        "matchers": jsonutil.dumps(dict(matchers), sort_keys=True),
        "starts_at": starts_at,
        "ends_at": ends_at,
        "comment": redact(_text(comment, "comment", COMMENT_MAX)),  # a pasted token stays out of pages and lists
        "author": _text(author, "author", AUTHOR_MAX),
        "created_at": now,
    }
    new_id = conn.execute(insert(silences).returning(silences.c.id), values).scalar_one()
    row = conn.execute(select(silences).where(silences.c.id == new_id)).mappings().one()
    return _silence(row)


def get_silence(conn: Connection, silence_id: int) -> Silence:
    row = conn.execute(select(silences).where(silences.c.id == silence_id)).mappings().one_or_none()
    if row is None:
        raise UnknownSilence(f"no silence #{silence_id} (see 'ticketpager silence list --all')")
    return _silence(row)


def _not_ended(now: Any) -> Any:
    """Not ended by ``now`` (a datetime, or a bound parameter)."""
    return and_(silences.c.ends_at > now, or_(silences.c.expired_at.is_(None), silences.c.expired_at > now))


def list_silences(conn: Connection, now: datetime, include_expired: bool = False) -> list[Silence]:
    """Active and pending silences (with ``include_expired``, the ended ones too), newest first."""
    stmt = select(silences).order_by(silences.c.id.desc())
    if not include_expired:
        stmt = stmt.where(_not_ended(now))
    return [_silence(r) for r in conn.execute(stmt).mappings()]


def silences_since(conn: Connection, since: datetime, limit: int) -> list[Silence]:
    """Silences that had not ended by ``since`` (active, pending, and those that ended after it), newest
    first, at most ``limit``: the console's list of current and recently ended silences."""
    stmt = select(silences).where(_not_ended(since)).order_by(silences.c.id.desc()).limit(limit)
    return [_silence(r) for r in conn.execute(stmt).mappings()]


#: the engine asks on every batch that plans a trigger: built once, ``now`` bound (building it cost more than
#: running it, issue 19)
_NOW = bindparam("now", type_=UTCDateTime())
ACTIVE_SILENCES = select(silences).where(_not_ended(_NOW), silences.c.starts_at <= _NOW).order_by(silences.c.id)
_ACTIVE_SILENCES = Prepared(ACTIVE_SILENCES)


def active_silences(conn: Connection, now: datetime) -> list[Silence]:
    """The silences muting now, oldest first (an index range on ``ends_at``)."""
    return [_silence(r) for r in _ACTIVE_SILENCES.rows(conn, {"now": now})]


def expire_silence(conn: Connection, silence_id: int, now: datetime, actor: str) -> Silence:
    """End a silence now; the tickets it held are re-evaluated at the engine's next release pass."""
    silence = get_silence(conn, silence_id)
    if silence.ended_at() <= now:
        raise SilenceError(f"silence #{silence_id} already ended at {silence.ended_at().isoformat()}")
    conn.execute(
        update(silences)
        .where(silences.c.id == silence_id)
        .values(expired_at=now, expired_by=_text(actor, "author", AUTHOR_MAX))
    )
    conn.execute(update(silenced_tickets).where(silenced_tickets.c.silence_id == silence_id).values(until=now))
    return get_silence(conn, silence_id)


# ------------------------------------------------------------------ tickets held, and their release


def hold(conn: Connection, silence: Silence, ticket: Ticket, now: datetime) -> bool:
    """Remember that ``silence`` held a trigger of ``ticket`` (once per silence and ticket); whether it is new."""
    stmt = insert_ignore(conn, silenced_tickets).returning(silenced_tickets.c.silence_id)  # rowcount: not portable
    values = {
        "source": ticket.source,
        "connection": ticket.connection,
        "ticket_id": ticket.id,
        "until": silence.ended_at(),
        "at": now,
    }
    return conn.execute(stmt, {"silence_id": silence.id, **values}).first() is not None


def due_releases(conn: Connection, now: datetime, limit: int) -> list[tuple[int, str, str, str]]:
    """(silence id, source, connection, ticket id) of held tickets whose silence has ended, oldest end first."""
    c = silenced_tickets.c
    stmt = (
        select(c.silence_id, c.source, c.connection, c.ticket_id)
        .where(c.until <= now)
        .order_by(c.until, c.silence_id, c.source, c.connection, c.ticket_id)
        .limit(limit)
    )
    return [(int(s), src, con, tid) for s, src, con, tid in conn.execute(stmt).all()]


def release(conn: Connection, keys: Sequence[tuple[int, str, str, str]]) -> None:
    """Forget held tickets once re-evaluated."""
    if keys:
        c = silenced_tickets.c
        held = tuple_(c.silence_id, c.source, c.connection, c.ticket_id)
        conn.execute(delete(silenced_tickets).where(held.in_(list(keys))))


# ------------------------------------------------------------------------------- the engine's view


class SilenceBook:
    """Compiles stored matchers once per silence (they never change) for every engine batch of this process.

    A silence whose stored matchers no longer compile (a source removed since) mutes nothing: it is logged,
    and the ticket pages — a paging tool errs on the side of paging."""

    def __init__(self, compile_matchers: SilenceMatchers) -> None:
        self._compile = compile_matchers
        self._compiled: dict[int, SilenceMatcher | None] = {}
        self._lock = threading.Lock()

    def matcher(self, silence: Silence) -> SilenceMatcher | None:
        with self._lock:
            if silence.id in self._compiled:
                return self._compiled[silence.id]
        try:
            compiled: SilenceMatcher | None = self._compile(silence.matchers)
        except ConfigError as exc:
            log.error("silence #%s mutes nothing: its matchers are no longer valid: %s", silence.id, exc)
            compiled = None
        with self._lock:
            if len(self._compiled) >= _COMPILED_MAX:
                self._compiled.clear()
            self._compiled[silence.id] = compiled
        return compiled

    def batch(self, conn: Connection, now: datetime) -> BatchSilences:
        return BatchSilences(self, conn, now)


class BatchSilences:
    """The silences of one engine transaction: read from the database on the first trigger planned (one
    indexed query per batch at most; none for a batch that triggers nothing), so a silence created by any
    replica counts from the next batch on."""

    def __init__(self, book: SilenceBook | None, conn: Connection, now: datetime) -> None:
        self._book = book
        self._conn = conn
        self._now = now
        self._active: list[tuple[Silence, SilenceMatcher]] | None = None
        self.new_hold = False  # the last hold() remembered a ticket no silence held before

    def _load(self) -> list[tuple[Silence, SilenceMatcher]]:
        if self._active is None:
            assert self._book is not None
            book = self._book
            pairs = [(s, book.matcher(s)) for s in active_silences(self._conn, self._now)]
            self._active = [(s, m) for s, m in pairs if m is not None]
        return self._active

    def matching(self, ticket: Ticket) -> Silence | None:
        """The first (oldest) active silence matching ``ticket``."""
        if self._book is None:
            return None
        for silence, matcher in self._load():
            if matcher.matches(ticket):
                return silence
        return None

    def hold(self, events: list[PlannedEvent], ticket: Ticket) -> tuple[list[PlannedEvent], list[dict[str, Any]]]:
        """The events to send, and what a silence held (for the decision log). Only new incidents are held:
        a trigger and the acknowledge planned with it; follow-ups of open incidents always go out."""
        self.new_hold = False
        triggers = [e for e in events if e.action is EventAction.TRIGGER]
        if not triggers or self._book is None:
            return events, []
        silence = self.matching(ticket)
        if silence is None:
            return events, []
        held = {e.dedup_key for e in triggers}
        self.new_hold = hold(self._conn, silence, ticket, self._now)
        why = f"silenced by #{silence.id} until {silence.ended_at().isoformat()}"
        notes = [{"rule": e.rule, "silence": silence.id, "why": why} for e in triggers]
        return [e for e in events if e.dedup_key not in held], notes


__all__ = [
    "BatchSilences",
    "Silence",
    "SilenceBook",
    "SilenceError",
    "UnknownSilence",
    "active_silences",
    "add_silence",
    "due_releases",
    "expire_silence",
    "get_silence",
    "hold",
    "list_silences",
    "release",
    "silences_since",
]
