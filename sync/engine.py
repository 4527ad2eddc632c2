"""The engine step: stored change → rules → lifecycle plan → outbox rows, link state and decision log.

:meth:`Engine.run_once` claims a batch of pending changes (at most one per ticket) and processes them in one
transaction; a batch that raises is rolled back and redone one change per transaction, so one bad change never
blocks the others. The batch's tickets and their links are read up front in one statement each, and its writes
are executed together at its end, one executemany per table (SQLAlchemy's cost per statement was most of the
engine's CPU per change: issue 19). Each change:

1. ignore it if it is older than the ticket's last processed version (webhooks arrive out of order), or
   the very version already processed (a poll re-reading what a webhook brought);
2. evaluate the rules (pure) against the ticket, the previous version and what changed;
3. :func:`kernel.lifecycle.plan` the events from the verdicts and the current link states;
4. hold a planned trigger if an active silence matches the ticket (:mod:`sync.repos.silences`);
5. queue its outbox rows, link states, the ticket's new version and its decision for the batch's writes;
6. a ticket with an open incident whose id is known (the reverse worker learned it): ask the rules'
   :meth:`kernel.ports.TwoWayRules.on_ticket_change` what a group change does to it, and queue those
   incident updates for ``pagerduty_rest`` — unless the group is one our ``set_group`` wrote from a move in
   PagerDuty (its echo) or the incident is already on that escalation policy (see docs/two-way.md, "Why there
   is no loop"). A person's group change is recorded on the incident with its time
   and the update it did not send, so a PagerDuty move older than it, delivered late, sets no group and sends
   that update after all (the reverse worker; :func:`sync.repos.incidents.note_group_edit`).

A ticket is (source, connection, id): the same id on two instances of one system is two tickets, with their
own row, links, dedup keys and decisions. On PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED`` and the
batch's ticket rows are locked (in a fixed order, by one statement) before they and their links are read, so two
replicas never process two changes of one ticket at the same time. The SQL lives in the repositories
:mod:`sync.repos.changes`, :mod:`sync.repos.tickets` and :mod:`sync.repos.outbox`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from kernel import jsonutil
from kernel.clock import Clock
from kernel.lifecycle import dedup_key_for, next_state, plan
from kernel.model import (
    Destination,
    FieldChange,
    IncidentAction,
    IncidentUpdate,
    LinkState,
    Origin,
    PlannedEvent,
    StatusCategory,
    Ticket,
    TicketChange,
    diff_tickets,
    merge_changes,
)
from kernel.ports import VERDICT_DEFAULTS, EvalContext, RuleSet, TwoWayRules, Verdict
from kernel.redact import mask, redact
from sync.db import database_fault
from sync.metrics import METRICS
from sync.prepared import Row
from sync.repos import changes, outbox, tickets
from sync.repos import incidents as known_incidents
from sync.repos.silences import BatchSilences, SilenceBook, due_releases, release
from sync.repos.tickets import TicketKey
from sync.store import Store
from sync.writelock import ENGINE

log = logging.getLogger("ticketpager.engine")

__all__ = ["Engine", "dedup_key_for", "evaluate_change", "plan"]


def _sent_at(conn: Connection, change_id: int | None) -> datetime | None:
    """The signed send time of the change a ticket's current version came from (``None``: not known)."""
    if change_id is None:
        return None
    payload = changes.payload(conn, change_id)
    if payload is None:  # pruned by retention, or processed before send times were kept
        return None
    return TicketChange.from_json(jsonutil.loads(payload)).sent_at


def evaluate_change(
    ruleset: RuleSet, ticket: Ticket, previous: Ticket | None, changed: Sequence[FieldChange], now: datetime
) -> Sequence[Verdict]:
    """Run the rules on one ticket version (pure)."""
    return ruleset.evaluate(EvalContext(ticket=ticket, previous=previous, changes=tuple(changed), now=now))


def verdict_of(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored verdict with every flag (this release's compact ones and older full ones alike)."""
    return {**VERDICT_DEFAULTS, **stored}


def event_json(event: PlannedEvent) -> dict[str, Any]:
    return {
        "rule": event.rule,
        "action": event.action.value,
        "dedup_key": event.dedup_key,
        "routing_key": mask(event.routing_key),
        "reason": event.reason,
    }


def _ticket_key(row: Row) -> TicketKey:
    """The (source, connection, ticket id) of a claimed change."""
    return (row["source"], row["connection"], row["ticket_id"])


@dataclass
class _Writes:
    """The writes of one engine transaction, gathered while its changes are processed and executed together
    just before it commits: one executemany per table instead of a statement per change and row (issue 19).

    The outbox rows keep the order they were planned in (their ids: the delivery workers send one
    ``dedup_key``'s events in id order). Links are kept per (ticket, rule), the last event's values winning
    (a trigger and an acknowledge planned together leave the link acknowledged, as two writes did)."""

    outbox: list[dict[str, Any]] = field(default_factory=list)
    links: dict[tuple[TicketKey, str], dict[str, Any]] = field(default_factory=dict)
    new_links: set[tuple[TicketKey, str]] = field(default_factory=set)  # of ``links``: not stored yet
    tickets: list[dict[str, Any]] = field(default_factory=list)
    finished: list[dict[str, Any]] = field(default_factory=list)
    decided: list[dict[str, Any]] = field(default_factory=list)

    def link(self, key: TicketKey, rule: str, values: dict[str, Any], *, exists: bool, now: Any) -> None:
        """Move the link of (``key``, ``rule``) on to ``values``; ``exists``: it has a stored row (read with the
        ticket's row locked)."""
        if (key, rule) not in self.links and not exists:
            self.new_links.add((key, rule))
            values = {**values, "created_at": now}
        elif (key, rule) in self.new_links:
            values = {**values, "created_at": self.links[(key, rule)]["created_at"]}
        self.links[(key, rule)] = tickets.link_row(key, rule, values)

    def flush(self, conn: Connection, *, dry_run: bool = False) -> int:
        """Execute the gathered writes; returns how many outbox rows were queued (``dry_run``: marked as queued in
        dry run)."""
        if dry_run:
            outbox.queued_in_dry_run(self.outbox)
        outbox.enqueue_rows(conn, self.outbox)
        if self.links:
            new = [row for at, row in self.links.items() if at in self.new_links]
            moved = [row for at, row in self.links.items() if at not in self.new_links]
            tickets.save_links(conn, new, moved)
        tickets.save_tickets(conn, self.tickets)
        if self.finished:
            changes.finish(conn, self.finished)
        if self.decided:
            tickets.insert_decisions(conn, self.decided)
        return len(self.outbox)


class _KnownIncidents:
    """The known incidents (:func:`sync.repos.incidents.incidents_by_dedup_key`) of every link of a batch's
    tickets, read in one statement on the batch's first need: none for a batch that asks nothing of the
    incidents (new tickets, no two-way rules)."""

    def __init__(self, conn: Connection, links: Mapping[TicketKey, Mapping[str, LinkState]]) -> None:
        self._conn = conn
        self._links = links
        self._known: dict[str, known_incidents.KnownIncident] | None = None

    def get(self) -> Mapping[str, known_incidents.KnownIncident]:
        """The known incident of each link's dedup key (absent: PagerDuty's incident id is not known yet)."""
        if self._known is None:
            keys = [link.dedup_key for states in self._links.values() for link in states.values()]
            self._known = known_incidents.incidents_by_dedup_key(self._conn, keys)
        return self._known


@dataclass
class _Batch:
    """What one engine transaction read up front (its tickets, locked on PostgreSQL, and their links), reads at
    most once (silences, known incidents), and writes at its end."""

    current: Mapping[TicketKey, Row]  # processed tickets only (absent: never processed)
    links: Mapping[TicketKey, Mapping[str, LinkState]]
    incidents: _KnownIncidents
    silences: BatchSilences
    writes: _Writes = field(default_factory=_Writes)


class Engine:
    """Turns stored changes into outbox rows. Thread-safe to call from one worker thread per process."""

    def __init__(
        self,
        store: Store,
        rules: Callable[[], RuleSet],
        clock: Clock,
        *,
        incidents: Destination,
        incident_updates: Destination | None = None,
        batch_size: int = 50,
        on_queued: Callable[[int], None] | None = None,
        silences: SilenceBook | None = None,
        connections: Collection[str] | None = None,
        dry_run: bool = False,
    ) -> None:
        """``on_queued`` is called with the count after a :meth:`run_once` that committed at least one outbox row
        (the service wakes as many of its delivery workers then, and only then). ``connections``: the configured
        connection names, which label the metrics (a change of any other counts as ``unknown``: the label set stays
        bounded); ``None``: every connection is its own label.
        ``incident_updates`` renders the :class:`~kernel.model.IncidentUpdate` of a group change
        (``pagerduty_rest``); None: none are queued. ``dry_run``: the rows it queues are marked as queued in dry run
        (a dry run refuses a database holding a live instance's rows: ``Service.refuse_to_share``)."""
        self.store = store
        self.dry_run = dry_run
        self.rules = rules
        self.clock = clock
        self.incidents = incidents  # renders incident actions when they are queued (the stored body is sent)
        self.incident_updates = incident_updates
        self.batch_size = batch_size
        self.on_queued = on_queued
        self.silences = silences  # None: nothing is ever silenced (no query either)
        self._queued = 0  # outbox rows written by the current run_once
        #: the last :meth:`run_once` left claimable changes behind (its claim came back full, it yielded to the
        #: webhook writer, or a ticket of the batch has a later change: a claim takes one per ticket): its caller
        #: runs again at once instead of waiting for the next wake-up
        self.left_pending = False
        self.connections = None if connections is None else frozenset(connections)

    def _label(self, connection: str) -> str:
        """The ``source`` label of the engine's metrics: the connection's name, bounded by the configured ones."""
        return connection if self.connections is None or connection in self.connections else "unknown"

    def run_once(self, *, woken: bool = False) -> int:
        """Process one batch of pending changes in one transaction; returns how many were handled.

        ``woken``: the caller was told a change was just stored (the webhook writer's commit), so the read-only
        look for pending changes that keeps an idle engine from taking the write lock is skipped: it cost a
        pool checkout and a query per batch (issue 19).

        A change whose processing raises (a bug, never expected) makes the batch roll back; the batch is
        then redone one change per transaction so only that change is marked ``failed``. Database errors
        are not the change's fault: they propagate and the whole batch is retried later.
        """
        self.left_pending = False
        if not woken:
            with self.store.engine.connect() as conn:  # a read first: an idle engine takes no write lock
                if not changes.any_pending(conn):
                    return 0
        self._queued = 0
        try:
            return self._run_batches()
        finally:  # also when a database error ends the run after a batch committed: its rows are sent at once
            if self._queued and self.on_queued is not None:
                self.on_queued(self._queued)

    def _run_batches(self) -> int:
        queued = self._queued  # rows queued by a transaction that rolls back wake no sender
        try:
            with self.store.begin(lane=ENGINE) as conn:
                rows = changes.claim(conn, self.batch_size)
                if not rows:
                    return 0
                done = self._process_batch(conn, rows)
                # a full claim, a batch cut short for the webhook writer, or a later change of one of the batch's
                # tickets (a claim takes one change per ticket): claimable at once, so the caller runs again. The
                # look (one statement whatever the batch: tests/test_engine_statements.py) only when the batch
                # itself does not say so: under load batches are full
                self.left_pending = len(rows) >= self.batch_size or done < len(rows) or changes.any_pending(conn)
            METRICS.engine_batch_changes.observe(done)  # committed
            return done
        except Exception as exc:  # noqa: BLE001 - isolate the change that failed
            self._queued = queued
            if database_fault(exc):
                raise  # not the batch's fault: it is retried whole once the database answers
            log.warning("engine batch failed; redoing it one change at a time", exc_info=True)
        handled = 0
        for _ in range(self.batch_size):
            if not self._run_single():
                break
            handled += 1
        self.left_pending = handled >= self.batch_size
        return handled

    def _run_single(self) -> bool:
        row: Row | None = None
        queued = self._queued
        try:
            with self.store.begin(lane=ENGINE) as conn:
                rows = changes.claim(conn, 1)
                if not rows:
                    return False
                row = rows[0]
                self._process_batch(conn, rows)
                return True
        except Exception as exc:  # noqa: BLE001 - one bad change must not block the rest
            self._queued = queued
            if row is None or database_fault(exc):
                raise  # the change stays pending
            log.exception("change %s (%s %s) failed", row["id"], row["connection"], row["ticket_id"])
            METRICS.changes_processed.labels(self._label(row["connection"]), "failed").inc()
            with self.store.begin(lane=ENGINE) as conn:
                # redacted before the cut: a database error quotes its parameters (routing key, event body)
                changes.fail(conn, row["id"], redact(f"{type(exc).__name__}: {exc}")[:2000], self.clock.now())
            return True

    def _process_batch(self, conn: Connection, rows: list[Row]) -> int:
        """Process the claimed ``rows`` in ``conn``'s transaction; returns how many were (the rest stay pending).

        The batch's tickets and their links are read (on PostgreSQL: locked) up front, in two statements, and its
        writes are executed together at its end (:class:`_Writes`): SQLAlchemy's cost per statement was most of
        the engine's CPU per change (issue 19). A batch holds at most one change per ticket
        (:func:`sync.repos.changes.claim_statement`), so no change of the batch reads what another one wrote.
        """
        ruleset = self.rules()
        now = self.clock.now()
        # fixed lock order across replicas (no deadlocks)
        ordered = sorted(rows, key=lambda r: (r["source"], r["connection"], r["ticket_id"], r["id"]))
        keys = [_ticket_key(row) for row in ordered]
        if len(set(keys)) != len(keys):  # never claimed so; the batch is redone one change at a time
            raise RuntimeError("a batch holds two changes of one ticket")
        current = tickets.lock_many(conn, keys, now)  # locked before their links are read
        links = tickets.links_of_many(conn, keys)
        batch = _Batch(
            current=current,
            links=links,
            incidents=_KnownIncidents(conn, links),
            silences=BatchSilences(self.silences, conn, now),  # read on the batch's first trigger
        )
        done = 0
        for row in ordered:
            if done and self.store.should_yield():
                break  # commit what is done; the webhook writer is waiting (the rest stays pending)
            done += 1
            self._process(conn, row, ruleset, batch)
        self._queued += batch.writes.flush(conn, dry_run=self.dry_run)
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
    def _process(self, conn: Connection, row: Row, ruleset: RuleSet, batch: _Batch) -> None:
        """Decide one change: its outbox rows, links, ticket version and decision join ``batch.writes``."""
        change = TicketChange.from_json(jsonutil.loads(row["payload"]))
        ticket = change.ticket
        now = self.clock.now()
        key = _ticket_key(row)
        current = batch.current.get(key)
        version = ticket.version_hash()
        writes = batch.writes
        outcome = self._staleness(conn, current, change, version)
        if outcome is not None:
            writes.finished.append(changes.finished(row["id"], outcome, now))
            writes.decided.append(self._decision(row["id"], ticket, outcome, ruleset.digest, {"why": outcome}))
            METRICS.changes_processed.labels(self._label(ticket.connection), outcome).inc()
            return
        previous = Ticket.from_json(jsonutil.loads(current["snapshot"])) if current and current["snapshot"] else None
        changed = merge_changes(change.changes, diff_tickets(previous, ticket))
        results = evaluate_change(ruleset, ticket, previous, changed, now)
        link_states = batch.links[key]
        events, silenced = batch.silences.hold(plan(results, link_states, ticket), ticket)
        open_count = self._apply(writes, events, link_states, ticket, row["id"], now)
        ctx = EvalContext(ticket=ticket, previous=previous, changes=tuple(changed), now=now)
        updates = self._incident_updates(conn, batch, ruleset, ctx, link_states, events, row["id"])
        done = ticket.status_category in (StatusCategory.DONE, StatusCategory.DELETED)
        recheck = ruleset.has_time_rules and not done
        writes.tickets.append(self._ticket_row(key, ticket, version, row["id"], open_count, recheck, now))
        writes.finished.append(changes.finished(row["id"], "processed", now))
        queued_updates = any(u["queued"] for u in updates)
        outcome = (
            "paged" if events else "silenced" if silenced else "incident_update" if queued_updates else "no_action"
        )
        detail: dict[str, Any] = {
            "origin": change.origin.value,
            "changes": [c.field for c in changed],
            # compact (Verdict.to_json): a rule that did not match is its name and why; with every flag, a change's
            # decision of 100 rules was 13 KB, written with every change (issue 19)
            "verdicts": jsonutil.Encoded(ruleset.encode(results)),
            "events": [event_json(e) for e in events],
        }
        if silenced:
            detail["silenced"] = silenced
        if updates:
            detail["incident_updates"] = updates
        writes.decided.append(self._decision(row["id"], ticket, outcome, ruleset.digest, detail))
        METRICS.changes_processed.labels(self._label(ticket.connection), outcome).inc()

    def _apply(
        self,
        writes: _Writes,
        events: list[PlannedEvent],
        link_states: Mapping[str, LinkState],
        ticket: Ticket,
        change_id: int | None,
        now: Any,
    ) -> int:
        """Queue the planned events and move their links on (in ``writes``); returns the ticket's open incidents
        after."""
        key = (ticket.source, ticket.connection, ticket.id)
        for event in events:
            writes.outbox.append(self._event_row(event, ticket, change_id, now))
            writes.link(key, event.rule, self._link_values(event, now), exists=event.rule in link_states, now=now)
            METRICS.rule_matches.labels(event.rule, event.action.value).inc()
        open_after = {rule: link.state.is_open for rule, link in link_states.items()} | {
            e.rule: next_state(e.action).is_open for e in events
        }
        return sum(open_after.values())

    # -- a ticket change → its open incidents (issue 16 item 5) ------------------------------------------------
    def _incident_updates(
        self,
        conn: Connection,
        batch: _Batch,
        ruleset: RuleSet,
        ctx: EvalContext,
        link_states: Mapping[str, LinkState],
        events: Sequence[PlannedEvent],
        change_id: int,
    ) -> list[dict[str, Any]]:
        """Ask the rules what this change does to each open incident of the ticket whose id is known, and queue
        it (destination ``pagerduty_rest``); returns the decision-log entries (empty: nothing to decide)."""
        target = self.incident_updates
        if target is None or not link_states:
            return []
        after = {e.rule: next_state(e.action) for e in events}
        still_open = [link for rule, link in link_states.items() if after.get(rule, link.state).is_open]
        if not still_open or not isinstance(ruleset, TwoWayRules):
            return []
        known = batch.incidents.get()
        entries: list[dict[str, Any]] = []
        for link in still_open:
            incident = known.get(link.dedup_key)
            if incident is None:
                continue  # no webhook of it yet: PagerDuty's incident id is not known (nothing to address)
            decided = ruleset.on_ticket_change(ctx, link, incident.incident_id)
            moved_to = decided.changed_group
            if moved_to is not None and known_incidents.our_group_echo(conn, incident.incident_id, moved_to, ctx.now):
                if decided.actions:  # the group our set_group wrote from a move in PagerDuty: it mirrors that move
                    METRICS.echoes_suppressed.labels("ticket.group_changed").inc()
                    why = [*decided.explanation, f"the group '{moved_to}' was written by ticketpager from a move in "
                           "PagerDuty (its echo): nothing sent (no loop)"]  # fmt: skip
                    entries.append({"rule": decided.rule or link.rule, "incident_id": incident.incident_id,
                                    "why": why, "queued": []})  # fmt: skip
                continue
            if not decided.actions and moved_to is None:
                continue  # the usual case (the group did not change): no entry for every change
            why = list(decided.explanation)
            queued: list[dict[str, Any]] = []
            edit: known_incidents.GroupEdit | None = None
            for action in decided.actions:
                if not isinstance(action, IncidentUpdate):
                    why.append(f"{action.KIND} from a ticket change: not queued (only incident updates are)")
                    continue
                current = incident.escalation_policy_id
                wanted = action.without_moves_to(current)
                if wanted is None:
                    why.append(
                        f"the incident is already on escalation policy {current} (moved in PagerDuty, or asked by "
                        "us before): nothing sent now (no loop); sent after all if PagerDuty news older than this "
                        "change, delivered late, shows the incident elsewhere"
                    )
                    edit = known_incidents.GroupEdit(action, "owed")
                    continue
                edit = known_incidents.GroupEdit(action, "sent")
                self._enqueue_update(conn, batch.writes, target, wanted, link, ctx.ticket, decided.rule or link.rule,
                                     change_id)  # fmt: skip
                queued.append({"marker": wanted.marker, "reassign_to_policy": wanted.reassign_to_policy,
                               "responder_policies": list(wanted.responder_policies)})  # fmt: skip
            if moved_to is not None:  # a person's edit (without actions: a group of the same policy, or of none)
                known_incidents.note_group_edit(conn, incident.incident_id, moved_to, ctx.ticket.updated, edit=edit)
            if decided.actions:
                entry = {"rule": decided.rule or link.rule, "incident_id": incident.incident_id}
                entries.append(entry | {"why": why, "queued": queued})
        return entries

    def _enqueue_update(
        self,
        conn: Connection,
        writes: _Writes,
        target: Destination,
        update: IncidentUpdate,
        link: LinkState,
        ticket: Ticket,
        rule: str,
        change_id: int,
    ) -> None:
        rendered = target.render(update)
        now = self.clock.now()
        writes.outbox.append(
            outbox.row(
                kind=update.KIND,
                destination=target.name,
                source=ticket.source,
                connection=ticket.connection,
                ticket_id=ticket.id,
                ticket_key=ticket.key,
                rule=rule,
                action=update.action,
                dedup_key=link.dedup_key,
                generation=link.generation,
                limit_key=rendered.limit_key,
                body=rendered.body,
                change_id=change_id,
                now=now,
            )
        )
        if update.reassign_to_policy:  # where the incident is going: a second move before the echo compares to it
            known_incidents.expect_policy(conn, update.incident_id, update.reassign_to_policy, now)

    @staticmethod
    def _staleness(conn: Connection, current: Row | None, change: TicketChange, version: str) -> str | None:
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

    def _event_row(self, event: PlannedEvent, ticket: Ticket, change_id: int | None, now: Any) -> dict[str, Any]:
        """The outbox row of a planned incident event, rendered for the incidents destination."""
        action = IncidentAction(event, ticket)
        rendered = self.incidents.render(action)
        return outbox.row(
            kind=action.KIND,
            destination=self.incidents.name,
            source=ticket.source,
            connection=ticket.connection,
            ticket_id=ticket.id,
            ticket_key=ticket.key,
            rule=event.rule,
            action=event.action.value,
            dedup_key=event.dedup_key,
            generation=event.generation,
            limit_key=rendered.limit_key,
            body=rendered.body,
            change_id=change_id,
            now=now,
        )

    @staticmethod
    def _link_values(event: PlannedEvent, now: Any) -> dict[str, Any]:
        """What ``event`` makes of its link (:data:`sync.repos.tickets.LINK_VALUES`)."""
        return {
            "generation": event.generation,
            "dedup_key": event.dedup_key,
            "routing_key": event.routing_key,
            "state": next_state(event.action).value,
            "updated_at": now,
        }

    @staticmethod
    def _ticket_row(
        key: TicketKey, ticket: Ticket, version: str, change_id: int, open_count: int, recheck: bool, now: Any
    ) -> dict[str, Any]:
        """The ticket's row as this change leaves it (:func:`sync.repos.tickets.save_tickets`)."""
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
        return tickets.ticket_row(key, values)

    def _decision(
        self, change_id: int | None, ticket: Ticket, outcome: str, digest: str | None, detail: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One decision-log row (written with the rest of the batch)."""
        return {
            "change_id": change_id,
            "source": ticket.source,
            "connection": ticket.connection,
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
        after = ("", "", "")
        while True:
            with self.store.engine.connect() as conn:
                keys = tickets.recheck_keys(conn, after, chunk)
            if not keys:
                return planned
            with self.store.begin(lane=ENGINE) as conn:
                held = BatchSilences(self.silences, conn, self.clock.now())
                for key in keys:
                    planned += self._recheck_one(conn, key, ruleset, held)
                    after = key
                    if self.store.should_yield():
                        break  # commit; the webhook writer goes first; the walk resumes after `after`

    def _recheck_one(
        self,
        conn: Connection,
        key: tuple[str, str, str],
        ruleset: RuleSet,
        held: BatchSilences,
        ended: int | None = None,
    ) -> int:
        """Re-evaluate the stored ticket ``key`` (source, connection, id): a time-rule pass, or ``ended``: the
        silence that held it ended."""
        if ended is not None and not tickets.stored(conn, *key):
            return 0  # pruned by retention since (no placeholder row for it)
        now = self.clock.now()
        current = tickets.lock(conn, *key, now)
        if current is None or not (current["recheck"] or ended is not None):
            return 0
        ticket = Ticket.from_json(jsonutil.loads(current["snapshot"]))
        results = evaluate_change(ruleset, ticket, ticket, (), now)
        link_states = tickets.links_of(conn, *key)
        events, silenced = held.hold(plan(results, link_states, ticket), ticket)
        detail: dict[str, Any] = {"origin": Origin.RECHECK.value}
        if ended is not None:
            detail["why"] = f"silence #{ended} ended"
        elif not events and not (silenced and held.new_hold):
            return 0  # nothing to say (a pass over a ticket a silence already holds says nothing again)
        detail |= {"verdicts": jsonutil.Encoded(ruleset.encode(results)), "events": [event_json(e) for e in events]}
        if silenced:
            detail["silenced"] = silenced
        outcome = "paged" if events else "silenced" if silenced else "no_action"
        if events:
            writes = _Writes()  # written at once: the same ticket may come again in this transaction
            open_count = self._apply(writes, events, link_states, ticket, None, now)
            self._queued += writes.flush(conn, dry_run=self.dry_run)
            tickets.set_open_incidents(conn, *key, open_count, keep_recheck=bool(current["recheck"]))
        tickets.insert_decisions(conn, [self._decision(None, ticket, outcome, ruleset.digest, detail)])
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
            with self.store.begin(lane=ENGINE) as conn:
                now = self.clock.now()
                due = due_releases(conn, now, chunk)
                if not due:
                    return planned
                held = BatchSilences(self.silences, conn, now)
                for silence_id, *key in due:
                    ticket_key = (key[0], key[1], key[2])
                    planned += self._recheck_one(conn, ticket_key, ruleset, held, ended=silence_id)
                release(conn, due)
