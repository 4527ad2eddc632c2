"""The engine step: stored change → rules → lifecycle plan → outbox rows, link state and decision log.

:meth:`Engine.run_once` claims a batch of pending changes and processes each in the batch's transaction
(a savepoint per change, so one bad change never blocks the others):

1. ignore it if it is older than the ticket's last processed version (webhooks arrive out of order), or
   the very version already processed (a poll re-reading what a webhook brought);
2. evaluate the rules (pure) against the ticket, the previous version and what changed;
3. :func:`kernel.lifecycle.plan` the events from the verdicts and the current link states;
4. hold a planned trigger if an active silence matches the ticket (:mod:`sync.silences`);
5. write outbox rows, link states, the ticket's new version and the decision log together.

On PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED`` and each ticket row is locked (in a fixed order)
before it is read, so two replicas never process two changes of one ticket at the same time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, bindparam, exists, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import InterfaceError, OperationalError

from kernel import jsonutil
from kernel.clock import Clock
from kernel.lifecycle import dedup_key_for, next_state, plan
from kernel.model import (
    Destination,
    FieldChange,
    IncidentAction,
    IncidentState,
    LinkState,
    Origin,
    PlannedEvent,
    StatusCategory,
    Ticket,
    TicketChange,
    diff_tickets,
    merge_changes,
)
from kernel.ports import EvalContext, RuleSet, Verdict
from kernel.redact import mask, redact
from sync.metrics import METRICS
from sync.schema import changes, decisions, links, outbox, tickets
from sync.silences import BatchSilences, SilenceBook, due_releases, release
from sync.store import Store, _insert_ignore

log = logging.getLogger("ticketpager.engine")

NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # "updated" of a ticket row that only holds a lock

# Statements built once with bind parameters; values come with each execute. (Building a statement with
# literal ``.values(...)`` per change cost more than the database work: SQLAlchemy re-derives its cache key.)
_B = bindparam
SELECT_TICKET = select(tickets).where(tickets.c.source == _B("s"), tickets.c.ticket_id == _B("t"))
_lock_insert = pg_insert(tickets).values(
    source=_B("s"), ticket_id=_B("t"), key="", status_category="new", updated=NEVER, version_hash="",
    snapshot=None, processed_at=_B("at"),
)  # fmt: skip
# ON CONFLICT DO UPDATE takes the row lock (a no-op update) and RETURNING hands back the current row
LOCK_TICKET_PG = _lock_insert.on_conflict_do_update(
    index_elements=[tickets.c.source, tickets.c.ticket_id], set_={"source": _lock_insert.excluded.source}
).returning(*tickets.c)
SELECT_LINKS = select(links).where(links.c.source == _B("s"), links.c.ticket_id == _B("t"))
INSERT_OUTBOX = insert(outbox)
INSERT_LINK = insert(links)
INSERT_DECISION = insert(decisions)
UPDATE_LINK = (
    update(links)
    .where(links.c.source == _B("s"), links.c.ticket_id == _B("t"), links.c.rule == _B("r"))
    .values(
        generation=_B("generation"),
        dedup_key=_B("dedup_key"),
        routing_key=_B("routing_key"),
        state=_B("state"),
        updated_at=_B("updated_at"),
    )
)
TICKET_COLUMNS = (
    "key", "status_category", "updated", "version_hash", "snapshot", "last_change_id", "open_incidents",
    "recheck", "processed_at",
)  # fmt: skip
UPDATE_TICKET = (
    update(tickets)
    .where(tickets.c.source == _B("s"), tickets.c.ticket_id == _B("t"))
    .values({name: _B(name) for name in TICKET_COLUMNS})
)
FINISH_CHANGE = update(changes).where(changes.c.id == _B("i")).values(status=_B("status"), processed_at=_B("at"))
ANY_PENDING = select(changes.c.id).where(changes.c.status == "pending").limit(1)


def claim_statement(limit: int, *, skip_locked: bool) -> Select[Any]:
    """The oldest claimable pending changes: a ticket's changes are processed in arrival order, so a change
    is never claimed while an earlier change of the same ticket is still pending (maybe claimed by another
    replica). Built once per (limit, dialect) by :class:`Engine`: building it cost more than the query when
    the engine woke for every webhook commit (issue 19)."""
    earlier = changes.alias("earlier")
    stmt = (
        select(changes.c.id, changes.c.source, changes.c.ticket_id, changes.c.payload)
        .where(
            changes.c.status == "pending",
            ~exists().where(
                earlier.c.source == changes.c.source,
                earlier.c.ticket_id == changes.c.ticket_id,
                earlier.c.status == "pending",
                earlier.c.id < changes.c.id,
            ),
        )
        .order_by(changes.c.id)
        .limit(limit)
    )
    return stmt.with_for_update(skip_locked=True) if skip_locked else stmt


__all__ = ["Engine", "dedup_key_for", "evaluate_change", "plan"]


SELECT_PAYLOAD = select(changes.c.payload).where(changes.c.id == _B("i"))


def _sent_at(conn: Connection, change_id: int | None) -> datetime | None:
    """The signed send time of the change a ticket's current version came from (``None``: not known)."""
    if change_id is None:
        return None
    payload = conn.execute(SELECT_PAYLOAD, {"i": change_id}).scalar_one_or_none()
    if payload is None:  # pruned by retention, or processed before send times were kept
        return None
    return TicketChange.from_json(jsonutil.loads(payload)).sent_at


def evaluate_change(
    ruleset: RuleSet, ticket: Ticket, previous: Ticket | None, changed: Sequence[FieldChange], now: datetime
) -> Sequence[Verdict]:
    """Run the rules on one ticket version (pure)."""
    return ruleset.evaluate(EvalContext(ticket=ticket, previous=previous, changes=tuple(changed), now=now))


def verdict_json(result: Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rule": result.rule,
        "matched": result.matched,
        "applies": result.applies,
        "why": list(result.explanation),
        "acknowledge": result.acknowledge,
        "resolve": result.resolve,
    }
    if result.rendered and result.problems:  # only triggers actually built are rendered
        out["template_problems"] = list(result.problems)
    return out


def event_json(event: PlannedEvent) -> dict[str, Any]:
    return {
        "rule": event.rule,
        "action": event.action.value,
        "dedup_key": event.dedup_key,
        "routing_key": mask(event.routing_key),
        "reason": event.reason,
    }


class Engine:
    """Turns stored changes into outbox rows. Thread-safe to call from one worker thread per process."""

    def __init__(
        self,
        store: Store,
        rules: Callable[[], RuleSet],
        clock: Clock,
        *,
        incidents: Destination,
        batch_size: int = 50,
        on_queued: Callable[[], None] | None = None,
        silences: SilenceBook | None = None,
    ) -> None:
        """``on_queued`` is called after a :meth:`run_once` that committed at least one outbox row (the
        service wakes its delivery workers then, and only then)."""
        self.store = store
        self.rules = rules
        self.clock = clock
        self.incidents = incidents  # renders incident actions when they are queued (the stored body is sent)
        self.batch_size = batch_size
        self.on_queued = on_queued
        self.silences = silences  # None: nothing is ever silenced (no query either)
        self._queued = 0  # outbox rows written by the current run_once
        self._claims: dict[tuple[int, bool], Select[Any]] = {}

    def _claim(self, conn: Connection, limit: int) -> list[RowMapping]:
        key = (limit, conn.dialect.name == "postgresql")
        stmt = self._claims.get(key)
        if stmt is None:
            stmt = self._claims[key] = claim_statement(limit, skip_locked=key[1])
        return list(conn.execute(stmt).mappings().all())

    def run_once(self) -> int:
        """Process one batch of pending changes in one transaction; returns how many were handled.

        A change whose processing raises (a bug, never expected) makes the batch roll back; the batch is
        then redone one change per transaction so only that change is marked ``failed``. Database errors
        are not the change's fault: they propagate and the whole batch is retried later.
        """
        with self.store.engine.connect() as conn:  # a read first: an idle engine takes no write lock
            if conn.execute(ANY_PENDING).first() is None:
                return 0
        self._queued = 0
        handled = self._run_batches()
        if self._queued and self.on_queued is not None:
            self.on_queued()
        return handled

    def _run_batches(self) -> int:
        try:
            with self.store.begin() as conn:
                rows = self._claim(conn, self.batch_size)
                if not rows:
                    return 0
                return self._process_batch(conn, rows)
        except (OperationalError, InterfaceError):
            raise
        except Exception:  # noqa: BLE001 - isolate the change that failed
            log.warning("engine batch failed; redoing it one change at a time", exc_info=True)
        handled = 0
        for _ in range(self.batch_size):
            if not self._run_single():
                break
            handled += 1
        return handled

    def _run_single(self) -> bool:
        row: RowMapping | None = None
        try:
            with self.store.begin() as conn:
                rows = self._claim(conn, 1)
                if not rows:
                    return False
                row = rows[0]
                self._process_batch(conn, rows)
                return True
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad change must not block the rest
            if row is None:
                raise
            log.exception("change %s (%s %s) failed", row["id"], row["source"], row["ticket_id"])
            METRICS.changes_processed.labels(row["source"], "failed").inc()
            with self.store.begin() as conn:
                conn.execute(
                    update(changes)
                    .where(changes.c.id == row["id"], changes.c.status == "pending")
                    .values(
                        status="failed",
                        # redacted before the cut: a database error quotes its parameters (routing key, event body)
                        error=redact(f"{type(exc).__name__}: {exc}")[:2000],
                        processed_at=self.clock.now(),
                    )
                )
            return True

    def _process_batch(self, conn: Connection, rows: list[RowMapping]) -> int:
        ruleset = self.rules()
        held = BatchSilences(self.silences, conn, self.clock.now())  # read on the batch's first trigger
        finished: list[dict[str, Any]] = []
        decided: list[dict[str, Any]] = []
        done = 0
        # fixed lock order across replicas (no deadlocks); a batch holds at most one change per ticket
        for row in sorted(rows, key=lambda r: (r["source"], r["ticket_id"], r["id"])):
            if done and self.store.should_yield():
                break  # commit what is done; the webhook writer is waiting (the rest stays pending)
            done += 1
            self._process(conn, row, ruleset, finished, decided, held)
        if finished:
            conn.execute(FINISH_CHANGE, finished)
        if decided:
            conn.execute(INSERT_DECISION, decided)
        return done

    def drain(self, limit: int = 1_000_000) -> int:
        total = 0
        while total < limit:
            n = self.run_once()
            if not n:
                break
            total += n
        return total

    # -- one change ------------------------------------------------------------------------------
    def _process(
        self,
        conn: Connection,
        row: RowMapping,
        ruleset: RuleSet,
        finished: list[dict[str, Any]],
        decided: list[dict[str, Any]],
        held: BatchSilences,
    ) -> None:
        change = TicketChange.from_json(jsonutil.loads(row["payload"]))
        ticket = change.ticket
        now = self.clock.now()
        current = self._lock_ticket(conn, ticket.source, ticket.id)
        version = ticket.version_hash()
        outcome = self._staleness(conn, current, change, version)
        if outcome is not None:
            finished.append({"i": row["id"], "status": outcome, "at": now})
            decided.append(self._decision(row["id"], ticket, outcome, ruleset.digest, {"why": outcome}))
            METRICS.changes_processed.labels(ticket.source, outcome).inc()
            return
        previous = Ticket.from_json(jsonutil.loads(current["snapshot"])) if current and current["snapshot"] else None
        changed = merge_changes(change.changes, diff_tickets(previous, ticket))
        results = evaluate_change(ruleset, ticket, previous, changed, now)
        link_states = self._links(conn, ticket)
        events, silenced = held.hold(plan(results, link_states, ticket), ticket)
        open_count = self._apply(conn, events, link_states, ticket, row["id"], now)
        done = ticket.status_category in (StatusCategory.DONE, StatusCategory.DELETED)
        self._save_ticket(
            conn, current, ticket, version, row["id"], open_count, ruleset.has_time_rules and not done, now
        )
        finished.append({"i": row["id"], "status": "processed", "at": now})
        outcome = "paged" if events else "silenced" if silenced else "no_action"
        detail = {
            "origin": change.origin.value,
            "changes": [c.field for c in changed],
            "verdicts": [verdict_json(r) for r in results],
            "events": [event_json(e) for e in events],
        }
        if silenced:
            detail["silenced"] = silenced
        decided.append(self._decision(row["id"], ticket, outcome, ruleset.digest, detail))
        METRICS.changes_processed.labels(ticket.source, outcome).inc()

    def _apply(
        self,
        conn: Connection,
        events: list[PlannedEvent],
        link_states: Mapping[str, LinkState],
        ticket: Ticket,
        change_id: int | None,
        now: Any,
    ) -> int:
        """Queue the planned events and move their links on; returns the ticket's open incidents after."""
        self._queued += len(events)
        for event in events:
            self._enqueue(conn, event, ticket, change_id, now)
            self._save_link(conn, event, ticket, now)
            METRICS.rule_matches.labels(event.rule, event.action.value).inc()
        open_after = {rule: link.state.is_open for rule, link in link_states.items()} | {
            e.rule: next_state(e.action).is_open for e in events
        }
        return sum(open_after.values())

    @staticmethod
    def _staleness(conn: Connection, current: RowMapping | None, change: TicketChange, version: str) -> str | None:
        """Why ``change`` is not processed (``stale`` / ``same_version``), or ``None``.

        An equal ``updated`` with different content is newer only for versions with exact timestamps. A
        version of minute resolution (``change.sent_at`` set: a Zendesk trigger body) is newer than the
        processed one of the same minute only if it was sent later (a signed send time), so two deliveries
        of one minute arriving out of order never move the ticket backwards or page again.
        """
        if current is None:
            return None
        if change.ticket.updated < current["updated"]:
            return "stale"
        if change.ticket.updated == current["updated"]:
            if version == current["version_hash"]:
                return "same_version"
            if change.sent_at is not None:
                before = _sent_at(conn, current["last_change_id"])
                if before is None or change.sent_at <= before:
                    return "stale"
        return None

    def _lock_ticket(self, conn: Connection, source: str, ticket_id: str) -> RowMapping | None:
        """Lock this ticket's row for the rest of the transaction; ``None`` if it was never processed.

        On PostgreSQL a placeholder row is inserted if there is none (a lock on a row that does not exist
        yet would not serialize two replicas processing the first two changes of a new ticket).
        """
        row: RowMapping | None
        if conn.dialect.name == "postgresql":  # insert-or-lock and read in one round trip
            row = conn.execute(LOCK_TICKET_PG, {"s": source, "t": ticket_id, "at": self.clock.now()}).mappings().one()
        else:  # SQLite: this process holds the only write lock already
            row = conn.execute(SELECT_TICKET, {"s": source, "t": ticket_id}).mappings().one_or_none()
        return None if row is None or row["snapshot"] is None else row

    def _links(self, conn: Connection, ticket: Ticket) -> dict[str, LinkState]:
        rows = conn.execute(SELECT_LINKS, {"s": ticket.source, "t": ticket.id}).mappings()
        return {
            r["rule"]: LinkState(
                rule=r["rule"],
                dedup_key=r["dedup_key"],
                routing_key=r["routing_key"],
                state=IncidentState(r["state"]),
                generation=r["generation"],
            )
            for r in rows
        }

    def _enqueue(self, conn: Connection, event: PlannedEvent, ticket: Ticket, change_id: int | None, now: Any) -> None:
        action = IncidentAction(event, ticket)
        rendered = self.incidents.render(action)
        conn.execute(
            INSERT_OUTBOX,
            {
                "kind": action.KIND,
                "destination": self.incidents.name,
                "source": ticket.source,
                "ticket_id": ticket.id,
                "ticket_key": ticket.key,
                "rule": event.rule,
                "action": event.action.value,
                "dedup_key": event.dedup_key,
                "generation": event.generation,
                "routing_key": rendered.limit_key,
                "body": rendered.body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "change_id": change_id,
                "created_at": now,
            },
        )

    def _save_link(self, conn: Connection, event: PlannedEvent, ticket: Ticket, now: Any) -> None:
        values = {
            "generation": event.generation,
            "dedup_key": event.dedup_key,
            "routing_key": event.routing_key,
            "state": next_state(event.action).value,
            "updated_at": now,
        }
        done = conn.execute(UPDATE_LINK, {"s": ticket.source, "t": ticket.id, "r": event.rule, **values})
        if not done.rowcount:
            conn.execute(
                INSERT_LINK,
                {"source": ticket.source, "ticket_id": ticket.id, "rule": event.rule, "created_at": now, **values},
            )

    def _save_ticket(
        self,
        conn: Connection,
        current: RowMapping | None,
        ticket: Ticket,
        version: str,
        change_id: int,
        open_count: int,
        recheck: bool,
        now: Any,
    ) -> None:
        values = {
            "key": ticket.key,
            "status_category": ticket.status_category.value,
            "updated": ticket.updated,
            "version_hash": version,
            "snapshot": jsonutil.dumps(ticket.to_json()),
            "last_change_id": change_id,
            "open_incidents": open_count,
            "recheck": recheck and open_count == 0,
            "processed_at": now,
        }
        if current is None:  # new ticket (or the placeholder row of _lock_ticket): insert-or-ignore, then update
            conn.execute(_insert_ignore(conn, tickets), {"source": ticket.source, "ticket_id": ticket.id, **values})
        conn.execute(UPDATE_TICKET, {"s": ticket.source, "t": ticket.id, **values})

    def _decision(
        self, change_id: int | None, ticket: Ticket, outcome: str, digest: str | None, detail: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One decision-log row (written with the rest of the batch)."""
        return {
            "change_id": change_id,
            "source": ticket.source,
            "ticket_id": ticket.id,
            "ticket_key": ticket.key,
            "at": self.clock.now(),
            "outcome": outcome,
            "rules_digest": digest,
            "detail": jsonutil.dumps(detail),
        }

    def recheck(self, chunk: int = 200) -> int:
        """Re-evaluate every open, unpaged ticket against the time rules (``older_than``, calendars).

        Walks the flagged tickets by key in small chunks (no ticket is ever left out, memory stays flat),
        evaluates each stored snapshot in place and writes only when something is planned — no change row
        per ticket per pass. Ticket row locks and link state make a concurrent run on another replica
        harmless; the scheduler's lease makes it rare. Returns how many events were planned.
        """
        ruleset = self.rules()
        planned = 0
        after = ("", "")
        while True:
            with self.store.engine.connect() as conn:
                keys = conn.execute(
                    select(tickets.c.source, tickets.c.ticket_id)
                    .where(tickets.c.recheck.is_(True), tuple_(tickets.c.source, tickets.c.ticket_id) > tuple_(*after))
                    .order_by(tickets.c.source, tickets.c.ticket_id)
                    .limit(chunk)
                ).all()
            if not keys:
                return planned
            with self.store.begin() as conn:
                held = BatchSilences(self.silences, conn, self.clock.now())
                for source, ticket_id in keys:
                    planned += self._recheck_one(conn, source, ticket_id, ruleset, held)
                    after = (source, ticket_id)
                    if self.store.should_yield():
                        break  # commit; the webhook writer goes first; the walk resumes after `after`

    def _recheck_one(
        self,
        conn: Connection,
        source: str,
        ticket_id: str,
        ruleset: RuleSet,
        held: BatchSilences,
        ended: int | None = None,
    ) -> int:
        """Re-evaluate a stored ticket (a time-rule pass, or ``ended``: the silence that held it ended)."""
        if ended is not None and conn.execute(SELECT_TICKET, {"s": source, "t": ticket_id}).first() is None:
            return 0  # pruned by retention since (no placeholder row for it)
        current = self._lock_ticket(conn, source, ticket_id)
        if current is None or not (current["recheck"] or ended is not None):
            return 0
        ticket = Ticket.from_json(jsonutil.loads(current["snapshot"]))
        now = self.clock.now()
        results = evaluate_change(ruleset, ticket, ticket, (), now)
        link_states = self._links(conn, ticket)
        events, silenced = held.hold(plan(results, link_states, ticket), ticket)
        detail: dict[str, Any] = {"origin": Origin.RECHECK.value}
        if ended is not None:
            detail["why"] = f"silence #{ended} ended"
        elif not events and not (silenced and held.new_hold):
            return 0  # nothing to say (a pass over a ticket a silence already holds says nothing again)
        detail |= {"verdicts": [verdict_json(r) for r in results], "events": [event_json(e) for e in events]}
        if silenced:
            detail["silenced"] = silenced
        outcome = "paged" if events else "silenced" if silenced else "no_action"
        if events:
            open_count = self._apply(conn, events, link_states, ticket, None, now)
            conn.execute(
                update(tickets)
                .where(tickets.c.source == source, tickets.c.ticket_id == ticket_id)
                .values(open_incidents=open_count, recheck=current["recheck"] and open_count == 0)
            )
        conn.execute(INSERT_DECISION, self._decision(None, ticket, outcome, ruleset.digest, detail))
        return len(events)

    def release_silences(self, chunk: int = 200) -> int:
        """Re-evaluate, once, each ticket a silence held whose silence has ended (expired, or its end passed):
        one that still matches a rule pages now. Reads only the due rows (an index range on their end), in
        chunks; returns how many events were planned."""
        if self.silences is None:
            return 0
        ruleset = self.rules()
        planned = 0
        while True:
            with self.store.begin() as conn:
                now = self.clock.now()
                due = due_releases(conn, now, chunk)
                if not due:
                    return planned
                held = BatchSilences(self.silences, conn, now)
                for silence_id, source, ticket_id in due:
                    planned += self._recheck_one(conn, source, ticket_id, ruleset, held, ended=silence_id)
                release(conn, due)
