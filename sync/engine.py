"""The engine step: stored change → rules → lifecycle plan → outbox rows, link state and decision log.

:meth:`Engine.run_once` claims a batch of pending changes and processes each in the batch's transaction
(a savepoint per change, so one bad change never blocks the others):

1. ignore it if it is older than the ticket's last processed version (webhooks arrive out of order), or
   the very version already processed (a poll re-reading what a webhook brought);
2. evaluate the rules (pure) against the ticket, the previous version and what changed;
3. :func:`sync.lifecycle.plan` the events from the verdicts and the current link states;
4. write outbox rows, link states, the ticket's new version and the decision log together.

On PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED`` and each ticket row is locked (in a fixed order)
before it is read, so two replicas never process two changes of one ticket at the same time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, exists, insert, select, update
from sqlalchemy.engine import RowMapping

from connectors.pagerduty import build_event, mask
from sync import jsonutil
from sync.clock import Clock
from sync.lifecycle import dedup_key_for, next_state, plan
from sync.metrics import METRICS
from sync.model import (
    IncidentState,
    LinkState,
    Origin,
    PlannedEvent,
    StatusCategory,
    Ticket,
    TicketChange,
    diff_tickets,
)
from sync.schema import changes, decisions, links, outbox, tickets
from sync.store import Store, _insert_ignore, insert_changes

log = logging.getLogger("ticketpager.engine")

NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # "updated" of a ticket row that only holds a lock

__all__ = ["Engine", "RuleSetLike", "dedup_key_for", "evaluate_change", "plan"]


class RuleSetLike(Protocol):
    digest: str
    has_time_rules: bool

    def evaluate(self, ctx: Any) -> list[Any]: ...


def evaluate_change(
    ruleset: RuleSetLike, ticket: Ticket, previous: Ticket | None, changed: Sequence[Any], now: Any
) -> list[Any]:
    """Run the rules on one ticket version (pure)."""
    from rules import EvalContext

    return ruleset.evaluate(EvalContext(ticket=ticket, previous=previous, changes=tuple(changed), now=now))


def verdict_json(result: Any) -> dict[str, Any]:
    out = {
        "rule": result.rule,
        "matched": result.matched,
        "applies": getattr(result, "applies", True),
        "why": list(result.explanation),
        "acknowledge": result.acknowledge,
        "resolve": result.resolve,
    }
    if getattr(result, "rendered", False) and result.problems:  # only triggers actually built are rendered
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
        rules: Callable[[], RuleSetLike],
        clock: Clock,
        *,
        batch_size: int = 50,
    ) -> None:
        self.store = store
        self.rules = rules
        self.clock = clock
        self.batch_size = batch_size

    def run_once(self) -> int:
        """Process one batch of pending changes; returns how many were handled."""
        with self.store.begin() as conn:
            earlier = changes.alias("earlier")
            stmt = (
                select(changes.c.id, changes.c.source, changes.c.ticket_id, changes.c.payload)
                .where(
                    changes.c.status == "pending",
                    # a ticket's changes are processed in arrival order: never claim one while an earlier
                    # change of the same ticket is still pending (maybe claimed by another replica)
                    ~exists().where(
                        earlier.c.source == changes.c.source,
                        earlier.c.ticket_id == changes.c.ticket_id,
                        earlier.c.status == "pending",
                        earlier.c.id < changes.c.id,
                    ),
                )
                .order_by(changes.c.id)
                .limit(self.batch_size)
            )
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = conn.execute(stmt).mappings().all()
            if not rows:
                return 0
            ruleset = self.rules()
            # fixed lock order across replicas (no deadlocks); id order within one ticket
            done = 0
            for row in sorted(rows, key=lambda r: (r["source"], r["ticket_id"], r["id"])):
                if done and self.store.should_yield():
                    break  # commit what is done; the webhook writer is waiting (the rest stays pending)
                done += 1
                try:
                    with conn.begin_nested():
                        self._process(conn, row, ruleset)
                except Exception as exc:  # noqa: BLE001 - one bad change must not block the rest
                    log.exception("change %s (%s %s) failed", row["id"], row["source"], row["ticket_id"])
                    METRICS.changes_processed.labels(row["source"], "failed").inc()
                    conn.execute(
                        update(changes)
                        .where(changes.c.id == row["id"])
                        .values(
                            status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], processed_at=self.clock.now()
                        )
                    )
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
    def _process(self, conn: Connection, row: RowMapping, ruleset: RuleSetLike) -> None:
        change = TicketChange.from_json(jsonutil.loads(row["payload"]))
        ticket = change.ticket
        now = self.clock.now()
        current = self._lock_ticket(conn, ticket.source, ticket.id)
        if change.origin is Origin.RECHECK and current is not None and current["snapshot"]:
            # time rules re-evaluate the latest stored version, never the one captured when scheduled
            ticket = Ticket.from_json(jsonutil.loads(current["snapshot"]))
            change = TicketChange(ticket, Origin.RECHECK, change.delivery_id, change.received_at, changes=())
        version = ticket.version_hash()
        outcome = self._staleness(current, change, version)
        if outcome is not None:
            self._finish(conn, row["id"], outcome, now)
            self._decide(conn, row["id"], ticket, outcome, ruleset.digest, {"why": outcome})
            METRICS.changes_processed.labels(ticket.source, outcome).inc()
            return
        previous = Ticket.from_json(jsonutil.loads(current["snapshot"])) if current and current["snapshot"] else None
        if change.origin is Origin.RECHECK:
            previous = ticket
        changed = change.changes if change.changes is not None else diff_tickets(previous, ticket)
        results = evaluate_change(ruleset, ticket, previous, changed, now)
        link_states = self._links(conn, ticket)
        events = plan(results, link_states, ticket)
        for event in events:
            self._enqueue(conn, event, ticket, row["id"], now)
            self._save_link(conn, event, ticket, now)
            METRICS.rule_matches.labels(event.rule, event.action.value).inc()
        open_after = {rule: link.state.is_open for rule, link in link_states.items()} | {
            e.rule: next_state(e.action).is_open for e in events
        }
        open_count = sum(open_after.values())
        done = ticket.status_category in (StatusCategory.DONE, StatusCategory.DELETED)
        self._save_ticket(
            conn, current, ticket, version, row["id"], open_count, ruleset.has_time_rules and not done, now
        )
        self._finish(conn, row["id"], "processed", now)
        outcome = "paged" if events else "no_action"
        self._decide(
            conn,
            row["id"],
            ticket,
            outcome,
            ruleset.digest,
            {
                "origin": change.origin.value,
                "changes": [c.field for c in changed],
                "verdicts": [verdict_json(r) for r in results],
                "events": [event_json(e) for e in events],
            },
        )
        METRICS.changes_processed.labels(ticket.source, outcome).inc()

    @staticmethod
    def _staleness(current: RowMapping | None, change: TicketChange, version: str) -> str | None:
        if current is None or change.origin is Origin.RECHECK:
            return None
        if change.ticket.updated < current["updated"]:
            return "stale"
        if change.ticket.updated == current["updated"] and version == current["version_hash"]:
            return "same_version"
        return None

    def _lock_ticket(self, conn: Connection, source: str, ticket_id: str) -> RowMapping | None:
        """Lock this ticket's row for the rest of the transaction; ``None`` if it was never processed.

        A placeholder row is inserted first (insert-or-ignore): a lock on a row that does not exist yet
        would not serialize two replicas processing the first two changes of a new ticket.
        """
        if conn.dialect.name == "postgresql":
            conn.execute(
                _insert_ignore(conn, tickets),
                {
                    "source": source,
                    "ticket_id": ticket_id,
                    "key": "",
                    "status_category": "new",
                    "updated": NEVER,
                    "version_hash": "",
                    "snapshot": None,
                    "processed_at": self.clock.now(),
                },
            )
        stmt = select(tickets).where(tickets.c.source == source, tickets.c.ticket_id == ticket_id)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).mappings().one_or_none()
        return None if row is None or row["snapshot"] is None else row

    def _links(self, conn: Connection, ticket: Ticket) -> dict[str, LinkState]:
        rows = conn.execute(
            select(links).where(links.c.source == ticket.source, links.c.ticket_id == ticket.id)
        ).mappings()
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

    def _enqueue(self, conn: Connection, event: PlannedEvent, ticket: Ticket, change_id: int, now: Any) -> None:
        conn.execute(
            insert(outbox).values(
                kind="event",
                source=ticket.source,
                ticket_id=ticket.id,
                ticket_key=ticket.key,
                rule=event.rule,
                action=event.action.value,
                dedup_key=event.dedup_key,
                generation=event.generation,
                routing_key=event.routing_key,
                body=jsonutil.dumps(build_event(event, ticket)),
                status="pending",
                attempts=0,
                next_attempt_at=now,
                change_id=change_id,
                created_at=now,
            )
        )

    def _save_link(self, conn: Connection, event: PlannedEvent, ticket: Ticket, now: Any) -> None:
        values = {
            "generation": event.generation,
            "dedup_key": event.dedup_key,
            "routing_key": event.routing_key,
            "state": next_state(event.action).value,
            "updated_at": now,
        }
        done = conn.execute(
            update(links)
            .where(links.c.source == ticket.source, links.c.ticket_id == ticket.id, links.c.rule == event.rule)
            .values(**values)
        )
        if not done.rowcount:
            conn.execute(
                insert(links).values(
                    source=ticket.source, ticket_id=ticket.id, rule=event.rule, created_at=now, **values
                )
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
        conn.execute(
            update(tickets).where(tickets.c.source == ticket.source, tickets.c.ticket_id == ticket.id).values(**values)
        )

    def _finish(self, conn: Connection, change_id: int, status: str, now: Any) -> None:
        conn.execute(update(changes).where(changes.c.id == change_id).values(status=status, processed_at=now))

    def _decide(
        self,
        conn: Connection,
        change_id: int | None,
        ticket: Ticket,
        outcome: str,
        digest: str | None,
        detail: Mapping[str, Any],
    ) -> None:
        conn.execute(
            insert(decisions).values(
                change_id=change_id,
                source=ticket.source,
                ticket_id=ticket.id,
                ticket_key=ticket.key,
                at=self.clock.now(),
                outcome=outcome,
                rules_digest=digest,
                detail=jsonutil.dumps(detail),
            )
        )

    def schedule_rechecks(self, limit: int = 10_000) -> int:
        """Queue a re-evaluation of open, unpaged tickets (time rules: ``older_than``, calendars).

        The delivery id is per ticket and minute, so replicas that both schedule in one minute (or a
        restart mid-minute) queue each ticket once.
        """
        now = self.clock.now()
        stamp = now.strftime("%Y-%m-%dT%H:%M")
        queued = 0
        with self.store.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(tickets.c.source, tickets.c.ticket_id, tickets.c.updated, tickets.c.snapshot)
                    .where(tickets.c.recheck.is_(True))
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        batch: list[TicketChange] = []
        for r in rows:
            if not r["snapshot"]:
                continue
            ticket = Ticket.from_json(jsonutil.loads(r["snapshot"]))
            batch.append(TicketChange(ticket, Origin.RECHECK, f"recheck:{ticket.id}:{stamp}", now, changes=()))
        if batch:
            with self.store.begin() as conn:
                queued = insert_changes(conn, batch)
        return queued
