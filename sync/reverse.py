"""The reverse worker: PagerDuty webhooks in the inbox → link state, ticket updates and incident updates in the
outbox, with a decision-log entry each.

Per stored webhook, in arrival order (the service runs one worker at a time, under a lease):

1. **Correlate** the incident to our link by ``dedup_key``. Known incidents are in the ``incidents`` table.
   An unknown one is learned once: from the incident's alerts through REST (:class:`kernel.ports.IncidentLookup`,
   when an API token is configured), from ``incident_key`` when the webhook carries one, and without a token
   from what the webhook carries: our ``dedup_key`` or the key of a ticket with an open link in the incident's
   title. An incident that matches none of our links (a manual one, another integration) is ignored.
2. **Echo suppression.** Our own Events-API actions come back with an integration agent, our REST writes
   with the ``From`` user as agent: they update the link and incident state and write nothing back.
3. **Link state** follows what a person did: acknowledged, resolved (with the *hold*: while the ticket's
   content stays as it was, the forward engine opens no new incident for that rule, see
   :func:`kernel.lifecycle.content_digest`), reopened / unacknowledged back to triggered.
4. **Rules**: :meth:`kernel.ports.TwoWayRules.on_incident` decides the ticket updates / incident updates,
   rendered by their destination and queued in the outbox in the same transaction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from kernel import jsonutil
from kernel.clock import Clock
from kernel.errors import RetryableError, TicketpagerError, UnknownOutcome, WebhookRejected
from kernel.incidents import EventType, IgnoredEvent, IncidentEvent, ParsedEvent, is_reconciled
from kernel.lifecycle import content_digest
from kernel.model import (
    Destination,
    IncidentState,
    IncidentUpdate,
    StatusCategory,
    Ticket,
    TicketUpdate,
)
from kernel.ports import IncidentContext, IncidentLookup, TwoWayRules
from kernel.redact import redact
from sync.db import database_fault
from sync.metrics import METRICS
from sync.repos import incidents as repo
from sync.repos import outbox as outbox_repo
from sync.store import Store

log = logging.getLogger("ticketpager.reverse")

#: the destination of :class:`~kernel.model.IncidentUpdate` rows (PagerDuty's REST API); ticket updates go to
#: the ticket's own system (its source name)
INCIDENT_UPDATES = "pagerduty_rest"
#: our dedup keys as :func:`kernel.lifecycle.dedup_key_for` makes them, found in an incident's title
_DEDUP_KEY = re.compile(r"ticketpager/[^\s\]\[)(,;\"']+")
#: ticket keys as people see them: OPS-12, #4711, INC0010001 (matched against tickets with an open link only)
_TICKET_KEY = re.compile(r"#?[A-Za-z][A-Za-z0-9_]*-\d+|#\d+|[A-Za-z]{2,}\d{4,}")

#: what each event does to the link's state: (states it applies in, the new state)
_STATE_MOVES: Mapping[EventType, tuple[frozenset[IncidentState], IncidentState]] = {
    EventType.ACKNOWLEDGED: (frozenset({IncidentState.TRIGGERED}), IncidentState.ACKNOWLEDGED),
    EventType.UNACKNOWLEDGED: (frozenset({IncidentState.ACKNOWLEDGED}), IncidentState.TRIGGERED),
    EventType.RESOLVED: (frozenset({IncidentState.TRIGGERED, IncidentState.ACKNOWLEDGED}), IncidentState.RESOLVED),
    EventType.REOPENED: (frozenset({IncidentState.RESOLVED}), IncidentState.TRIGGERED),
}


def _state_of(status: str | None) -> IncidentState | None:
    """The incident's status as a webhook carries it, as a link state (None: none or unknown)."""
    try:
        return IncidentState(status) if status else None
    except ValueError:
        return None


def _older(event: IncidentEvent, mark: datetime | None) -> bool:
    """``event`` happened before ``mark`` (None: nothing applied yet)."""
    return mark is not None and event.occurred_at < mark


@dataclass(frozen=True, slots=True)
class Correlation:
    dedup_key: str
    learned_by: str  # known | rest | incident_key | title


@dataclass(frozen=True, slots=True)
class _Followed:
    """The outbox row of the update a person's group edit asked for, queued after late news, and why."""

    row: dict[str, Any]
    why: list[str]


class Retry(Exception):
    """PagerDuty's REST API could not answer now: the webhook stays pending and is retried."""


class OwnUser:
    """The PagerDuty user our REST writes act as, when only its email is configured (``FROM_EMAIL`` without
    ``FROM_USER_ID``): its actions are our echoes, so the reverse worker must know its id before it writes
    anything, or a person's quick move A → B → A loops (our reassignment's webhook taken for a person's).

    ``resolve`` asks PagerDuty once (``GET /users?query=<email>``, exact email match) and the id is cached.
    Until it is known, ``problem`` says why (readiness shows it) and the worker leaves the inbox pending; a
    failed look-up is tried again after ``retry_seconds`` (a REST API that did not answer: sooner)."""

    def __init__(
        self,
        email: str,
        resolve: Callable[[], str],
        clock: Clock,
        *,
        retry_seconds: float = 60.0,
        unavailable_retry_seconds: float = 5.0,
    ) -> None:
        self.email = email
        self._resolve = resolve
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.unavailable_retry_seconds = unavailable_retry_seconds
        self.user_id: str | None = None
        self.problem: str | None = None
        self._next_try: datetime | None = None

    def __repr__(self) -> str:
        return f"<OwnUser {self.user_id or 'unresolved'}>"

    def ensure(self) -> bool:
        """Whether the id is known, asking PagerDuty if it is not and a try is due."""
        if self.user_id:
            return True
        now = self.clock.now()
        if self._next_try is not None and now < self._next_try:
            return False
        try:
            user_id = self._resolve()
        except (RetryableError, UnknownOutcome) as exc:
            self._failed(now, f"PagerDuty's REST API did not answer ({exc})", self.unavailable_retry_seconds)
            return False
        except (TicketpagerError, LookupError) as exc:
            self._failed(now, str(exc), self.retry_seconds)
            return False
        self.user_id, self.problem, self._next_try = user_id, None, None
        log.info("PagerDuty: our REST writes act as user %s (%s); their webhooks are echoes", user_id, self.email)
        return True

    def _failed(self, now: datetime, why: str, retry: float) -> None:
        self.problem = redact(
            f"the PagerDuty user of TICKETPAGER_PAGERDUTY__FROM_EMAIL ({self.email}) is not known: {why}; "
            "PagerDuty webhooks wait unprocessed (our own REST writes could not be told from a person's). "
            "Set TICKETPAGER_PAGERDUTY__FROM_USER_ID, or fix the email or the token's access to GET /users"
        )[:1000]
        self._next_try = now + timedelta(seconds=retry)
        log.warning("%s", self.problem)


class ReverseWorker:
    """Processes the PagerDuty inbox. ``parse`` turns a stored body into an event (the connector's parser);
    ``destinations`` render the queued actions (by destination name); ``lookup`` is None without an API token;
    ``own_user_ids`` are the users our REST writes act as (``FROM_USER_ID``); ``own_user``, when only their
    email is configured, resolves that user first (:class:`OwnUser`)."""

    def __init__(
        self,
        store: Store,
        rules: Callable[[], TwoWayRules],
        clock: Clock,
        *,
        parse: Callable[[bytes], ParsedEvent],
        destinations: Callable[[], Mapping[str, Destination]],
        lookup: IncidentLookup | None = None,
        own_user_ids: Collection[str] = (),
        own_integration_ids: Collection[str] | None = None,
        own_user: OwnUser | None = None,
        batch_size: int = 50,
        on_queued: Callable[[], None] | None = None,
        dry_run: bool = False,
    ) -> None:
        self.store = store
        self.dry_run = dry_run  # the rows it queues are marked as queued in dry run (see outbox.queued_in_dry_run)
        self.rules = rules
        self.clock = clock
        self.parse = parse
        self._destinations = destinations
        self._rendering: Mapping[str, Destination] | None = None
        self.lookup = lookup
        self.own_user_ids = frozenset(own_user_ids)
        self.own_integration_ids = None if own_integration_ids is None else frozenset(own_integration_ids)
        self.own_user = own_user  # FROM_USER_ID not configured: resolved from FROM_EMAIL before anything is written
        self.batch_size = batch_size
        self.on_queued = on_queued
        self.blocked = False  # the last run stopped at a webhook waiting for PagerDuty's REST API

    def __repr__(self) -> str:
        return f"<ReverseWorker lookup={'rest' if self.lookup else 'webhook only'}>"

    def _own_users(self) -> frozenset[str]:
        if self.own_user is not None and self.own_user.user_id:
            return self.own_user_ids | {self.own_user.user_id}
        return self.own_user_ids

    @property
    def destinations(self) -> Mapping[str, Destination]:
        if self._rendering is None:
            self._rendering = self._destinations()
        return self._rendering

    def run_once(self) -> int:
        """Process up to ``batch_size`` pending webhooks, one transaction each; how many were finished."""
        self.blocked = False
        if self.own_user is not None and not self.own_user.ensure():
            self.blocked = True  # our own REST writes would not be recognised: nothing is processed (no loop)
            return 0
        with self.store.engine.connect() as conn:
            rows = repo.pending_events(conn, self.batch_size)
        done = queued = 0
        for row in rows:
            try:
                queued += self._process(row)
            except Retry:
                self.blocked = True
                break  # keep the order: the rest waits for this one
            done += 1
        if queued and self.on_queued is not None:
            self.on_queued()
        return done

    def drain(self, limit: int = 100_000) -> int:
        total = 0
        while total < limit:
            n = self.run_once()
            if not n:
                break
            total += n
        return total

    # -- one webhook ---------------------------------------------------------------------------------------
    def _process(self, row: repo.InboxRow) -> int:
        """Handle one inbox row; returns how many outbox rows it queued. A bug fails only this row."""
        now = self.clock.now()
        try:
            event = self.parse(row.body)
        except WebhookRejected as exc:  # verified when received: a parser that changed since
            return self._finish(row, "unparseable", now, failed=True, error=exc.reason)
        if isinstance(event, IgnoredEvent):
            return self._finish(row, "ignored", now)
        found = self._correlate(event)  # Retry: PagerDuty's REST API is down, the row stays pending
        if found is None:
            log.info("PagerDuty incident %s is not one we paged: %s ignored", event.incident_id[:64], event.event_type)
            return self._finish(row, "not_ours", now, event=event)
        try:
            with self.store.begin() as conn:
                queued = self._apply(conn, row, event, found, now)
        except Exception as exc:  # noqa: BLE001 - one bad webhook must not block the rest
            if database_fault(exc):
                raise  # not the webhook's fault: the row stays pending
            log.exception("PagerDuty webhook %s (%s) failed", row.webhook_id[:64], row.event_type)
            return self._finish(
                row, "failed", now, failed=True, error=redact(f"{type(exc).__name__}: {exc}")[:2000], event=event
            )
        return queued

    def _finish(
        self,
        row: repo.InboxRow,
        outcome: str,
        now: datetime,
        *,
        failed: bool = False,
        error: str | None = None,
        event: IncidentEvent | None = None,
    ) -> int:
        with self.store.begin() as conn:
            repo.finish_event(conn, row.id, outcome, now, failed=failed, error=error)
        METRICS.pagerduty_webhooks_processed.labels(_type_label(row.event_type, event), outcome).inc()
        return 0

    def _correlate(self, event: IncidentEvent) -> Correlation | None:
        with self.store.engine.connect() as conn:
            known = repo.incident_dedup_key(conn, event.incident_id)
            if known is not None:
                return Correlation(known, "known")
            incident_key = event.incident.incident_key if event.incident else None
            if incident_key and repo.known_dedup_keys(conn, [incident_key]):
                return Correlation(incident_key, "incident_key")
        if self.lookup is not None:
            try:
                keys = list(self.lookup.alert_keys(event.incident_id))
            except (RetryableError, UnknownOutcome) as exc:
                log.warning("PagerDuty REST: alerts of %s not read (%s); retrying", event.incident_id[:64], exc)
                raise Retry from None
            except TicketpagerError as exc:  # refused (token, role): fall back to what the webhook carries
                log.warning("PagerDuty REST refused the alerts of %s (%s)", event.incident_id[:64], exc)
            else:
                with self.store.engine.connect() as conn:
                    ours = repo.known_dedup_keys(conn, keys)
                if ours:
                    return Correlation(ours[-1], "rest")
                return None  # PagerDuty says which alerts it has: none is ours
        return self._by_title(event)

    def _by_title(self, event: IncidentEvent) -> Correlation | None:
        """Without a token: our dedup key, else the key of a ticket with exactly one open link, in the title."""
        title = event.incident.title if event.incident else ""
        text = f"{title} {event.incident_summary}"
        with self.store.engine.connect() as conn:
            ours = repo.known_dedup_keys(conn, _DEDUP_KEY.findall(text))
            if len(ours) == 1:
                return Correlation(ours[0], "title")
            keys = {k.lstrip("#") for k in _TICKET_KEY.findall(text)} | set(_TICKET_KEY.findall(text))
            candidates = repo.open_dedup_keys_by_ticket_key(conn, keys)
        if len(candidates) == 1:
            return Correlation(candidates[0], "title")
        if len(candidates) > 1:
            log.warning(
                "PagerDuty incident %s names %d open incidents of ours; set TICKETPAGER_PAGERDUTY__API_TOKEN to tell "
                "them apart",
                event.incident_id[:64],
                len(candidates),
            )
        return None

    def _apply(
        self, conn: Connection, row: repo.InboxRow, event: IncidentEvent, found: Correlation, now: datetime
    ) -> int:
        if not repo.finish_event(conn, row.id, "applying", now):
            return 0  # handled meanwhile by another replica (its lease expired mid-batch): write nothing
        found_link = repo.link_by_dedup_key(conn, found.dedup_key)
        if found_link is None:  # the link moved on to a newer incident: remember the old one, nothing else
            return self._done(conn, row, event, "old_incident", now)
        ticket = repo.lock_ticket(conn, found_link.source, found_link.connection, found_link.ticket_id)
        link = repo.link_by_dedup_key(conn, found.dedup_key)  # read again under the ticket's lock
        if ticket is None or link is None:
            return self._done(conn, row, event, "no_ticket", now)
        inc = event.incident
        # PagerDuty keeps no order across event types, so an incident's news is ordered by occurred_at, on two
        # marks: the row's snapshot (status, policy) by every event that carries the incident, and the link's
        # state by the events that moved it. A note carries neither, and a priority change or a reassignment
        # delivered before an earlier acknowledge, resolve or reopen must not make that move look stale.
        marks = repo.event_marks(conn, event.incident_id) if inc is not None else repo.EventMarks(None, None, None)
        stale = _older(event, marks.snapshot_at)
        before_state = _older(event, marks.moved_at)  # older than the link's state news applied
        moves_link = event.event_type in _STATE_MOVES
        stale_move = moves_link and before_state
        # news that the incident is open (acknowledged, triggered), newer than PagerDuty's own news that it was
        # resolved: it was reopened in between, and that reopen was delivered later or lost. (A link only we
        # resolved, the ticket done, while PagerDuty's last news was that the incident is open, is not reopened by
        # a person's acknowledge from before our resolve: PagerDuty never said "resolved".)
        carried = _state_of(inc.status if inc is not None else None)
        reopened = not stale and marks.status == IncidentState.RESOLVED and carried is not None and carried.is_open
        repo.save_incident(
            conn,
            event.incident_id,
            found.dedup_key,
            found.learned_by,
            now,
            occurred_at=event.occurred_at if inc is not None else None,
            number=inc.number if inc else None,
            html_url=inc.html_url if inc else None,
            status=None if stale or inc is None else inc.status,
            # an older event (delivered late) never moves the policy back: the engine compares group changes to it
            escalation_policy_id=None if stale or inc is None else inc.escalation_policy_id,
        )
        echo = event.is_echo(self._own_users(), self.own_integration_ids)
        # our own page coming back is still the first news of the incident: its number and link go onto the
        # ticket (once, by the event's marker); every other echo writes nothing back
        own_page = echo and event.event_type is EventType.TRIGGERED
        checked = is_reconciled(event.event_id)
        told = _told_before(event, marks, link.link.state, stale_move)
        if told is not None:
            if not checked:  # the webhook the check stood in for: consumed
                repo.set_reconciled(conn, event.incident_id, None, None)
            again = {"origin": "pagerduty", "event_type": event.event_type.value, "incident_id": event.incident_id,
                     "rule": link.link.rule, "link_state": link.link.state.value, "why": [told]}  # fmt: skip
            return self._done(conn, row, event, "told_before", now, ticket=ticket, detail=again)
        moved = None
        if moves_link and not stale_move:
            moved = self._move_link(conn, found.dedup_key, link.link.state, event, ticket, echo, now, reopened=reopened)
            # the newest news of the link's state even when it moves nothing (a second resolve): an older reopen
            # delivered after it must not reopen the link
            repo.mark_state_event(conn, event.incident_id, event.occurred_at)
            if checked and moved is not None:  # its webhook, if it comes after all, writes nothing again
                repo.set_reconciled(conn, event.incident_id, moved.value, event.occurred_at)
        elif reopened and carried is not None and link.link.state is IncidentState.RESOLVED and not before_state:
            # an event that moves no link (a reassignment, a priority change) carrying the reopened incident
            moved = carried
            repo.set_link_state(conn, found.dedup_key, moved, now, hold_version=None)
            repo.mark_state_event(conn, event.incident_id, event.occurred_at)
        detail: dict[str, Any] = {
            "origin": "pagerduty",
            "event_type": event.event_type.value,
            "incident_id": event.incident_id,
            "learned_by": found.learned_by,
            "agent": {"id": event.agent.id, "type": event.agent.type} if event.agent else None,
            "rule": link.link.rule,
            "link_state": moved.value if moved else link.link.state.value,
        }
        if stale or stale_move:
            detail["stale"] = True
        # A person's group change on the ticket that asked PagerDuty for an update (reassign, add responders), and
        # news older than it: the news sets no group (it would undo the edit). A move in PagerDuty older than the
        # edit, delivered late, makes the update due if it was not sent (the incident looked there already); once
        # no news of the incident waits, it is sent if the newest news shows the incident elsewhere. A move newer
        # than the edit is the newer word: the edit is done with.
        # (a note or a responder request carries no incident: its marks are read for this only, so the last news
        # in the inbox, whatever it is, can send a due update)
        edits = marks if inc is not None else repo.event_marks(conn, event.incident_id)
        edit, edit_at = edits.group_edit, edits.group_edit_at
        is_open = (moved or link.link.state).is_open
        newer_move = event.event_type is EventType.DELEGATED and not _older(event, edit_at)
        if edit is not None and (newer_move or not is_open):
            repo.drop_group_edit(conn, event.incident_id)  # a newer move, or a resolved incident: nothing owed
            edit = None
        elif edit is not None and event.event_type is EventType.DELEGATED and edit.state == "owed":
            edit = repo.GroupEdit(edit.update, "due")
            repo.set_group_edit(conn, event.incident_id, edit)
        edited_since = edit is not None and _older(event, edit_at)
        followed = None
        if edit is not None and edit.state == "due":
            newest = inc.escalation_policy_id if inc is not None and not stale else edits.policy
            followed = self._follow_group_edit(conn, event, edit, edit_at, newest, ticket, link, now)
        if followed is not None:
            self._enqueue(conn, [followed.row])
            detail["group_edit"] = followed.why
        if echo and not own_page:
            METRICS.echoes_suppressed.labels(event.event_type.value).inc()
            detail["why"] = ["our own action coming back (echo): link state updated, nothing written back"]
            detail["why"] += followed.why if followed is not None else []
            queued = int(followed is not None)
            return self._done(conn, row, event, "echo", now, ticket=ticket, detail=detail, queued=queued)
        state_now = moved or link.link.state
        # a move's set_group compares with the group our last move wrote, if its ticket webhook is still out
        pending = repo.pending_group(conn, event.incident_id, now) if event.event_type is EventType.DELEGATED else None
        ctx = IncidentContext(event, ticket, replace(link.link, state=state_now), now, pending_group=pending)
        plan = self.rules().on_incident(ctx)
        actions = _with_incident_url(conn, event.incident_id, plan.actions)
        # News delivered late is history: its comment is written, but it never moves the ticket behind newer news.
        # Our page's own news: no transition, no group. Late news of an incident open when the link now says
        # resolved, or resolved when it says open: no transition (a late resolve would close the ticket of an
        # incident reopened since; a late escalation would reopen the ticket of one resolved since). Late news
        # that agrees with the link keeps its transition (a reopen delivered after later news that reopened the
        # link). A move to a policy other than the newest one known: no group (it would reassign the incident
        # back behind the person's latest move).
        late = stale_move if moves_link else stale
        told = _STATE_MOVES[event.event_type][1] if moves_link else carried
        disagrees = told is not None and told.is_open != (moved or link.link.state).is_open
        keep_transition = not (own_page and stale) and not (late and disagrees)
        moved_since = (
            stale and inc is not None and marks.policy is not None and inc.escalation_policy_id != marks.policy
        )
        keep_group = not (own_page and stale) and not moved_since and not edited_since
        kept = tuple(
            replace(a, transition=a.transition if keep_transition else None, group=a.group if keep_group else None)
            if isinstance(a, TicketUpdate)
            else a
            for a in actions
        )
        held = kept != actions  # a transition or a group was dropped
        group_held = any(isinstance(a, TicketUpdate) and a.group for a in actions) and edited_since
        actions = kept
        rows = [self._outbox_row(action, plan.rule, ticket, link, event, now) for action in actions]
        self._enqueue(conn, rows)
        for action in actions:
            if isinstance(action, TicketUpdate) and action.group:  # its echo is ours, not a person's group edit
                repo.mirror_group(conn, event.incident_id, action.group, now)
        detail["why"] = (["our own page (its first write-back)"] if own_page else []) + list(plan.explanation)
        if checked:
            detail["why"].insert(0, _CHECKED)
        if group_held:
            detail["why"].append(
                f"older than a person's group change on the ticket ({_iso(edit_at)}): the group stays"
            )
        elif held and not own_page:
            detail["why"].append("older than news already applied: its comment only, the ticket is not moved")
        detail["actions"] = [_action_json(a) for a in actions]
        queued = len(rows) + int(followed is not None)
        outcome = "applied" if queued else "no_action"
        return self._done(conn, row, event, outcome, now, ticket=ticket, detail=detail, queued=queued)

    def _follow_group_edit(
        self,
        conn: Connection,
        event: IncidentEvent,
        edit: repo.GroupEdit,
        edit_at: datetime | None,
        newest: str | None,
        ticket: Ticket,
        link: repo.LinkRow,
        now: datetime,
    ) -> _Followed | None:
        """The outbox row (and why) of the update a person's group edit asked for, due since a move older than the
        edit arrived late: when no more news of the incident waits, and the newest (``newest``: the escalation
        policy PagerDuty's newest news gives) shows the incident elsewhere."""
        if not newest or repo.pending_in(conn, event.incident_id):
            return None  # the newest word may still be on its way
        wanted = edit.update.without_moves_to(newest)
        if wanted is None:
            return None  # PagerDuty has it where the edit asked
        row = self._outbox_row(wanted, link.link.rule, ticket, link, event, now)
        if wanted.reassign_to_policy:  # where the incident is going: a group change before its echo compares to it
            repo.expect_policy(conn, wanted.incident_id, wanted.reassign_to_policy, now)
        repo.set_group_edit(conn, event.incident_id, repo.GroupEdit(edit.update, "sent"))
        target = wanted.reassign_to_policy or ", ".join(wanted.responder_policies)
        why = [
            f"PagerDuty moved the incident to escalation policy {newest} before a person's group change on the "
            f"ticket ({_iso(edit_at)}), which asked for {target}: incident update {wanted.marker} queued"
        ]
        return _Followed(row, why)

    def _move_link(
        self,
        conn: Connection,
        dedup_key: str,
        state: IncidentState,
        event: IncidentEvent,
        ticket: Ticket,
        echo: bool,
        now: datetime,
        *,
        reopened: bool = False,
    ) -> IncidentState | None:
        """Move the link as ``event`` says (:data:`_STATE_MOVES`); ``reopened``: the incident was reopened since the
        resolve the link follows, so the event applies to a resolved link too."""
        move = _STATE_MOVES.get(event.event_type)
        if move is None or not (state in move[0] or (reopened and state is IncidentState.RESOLVED)):
            return None
        new_state = move[1]
        if new_state is IncidentState.RESOLVED:
            # a person closed it while the ticket is still open: no new page until the ticket changes
            open_ticket = ticket.status_category not in (StatusCategory.DONE, StatusCategory.DELETED)
            hold = content_digest(ticket) if open_ticket and not echo else None
        else:
            hold = None
        repo.set_link_state(conn, dedup_key, new_state, now, hold_version=hold)
        return new_state

    def _enqueue(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        if self.dry_run:
            outbox_repo.queued_in_dry_run(rows)
        repo.enqueue(conn, rows)

    def _outbox_row(
        self,
        action: TicketUpdate | IncidentUpdate,
        rule: str,
        ticket: Ticket,
        link: repo.LinkRow,
        event: IncidentEvent,
        now: datetime,
    ) -> dict[str, Any]:
        # a ticket update goes to the instance the ticket came from (its connection's destination)
        destination = ticket.connection if isinstance(action, TicketUpdate) else INCIDENT_UPDATES
        target = self.destinations.get(destination)
        if target is None:
            raise LookupError(f"no destination {destination!r} for {action.KIND} actions")
        rendered = target.render(action)
        # an incident update is named for what it asks (as the engine names it); a ticket update for its news
        news = event.event_type.value.removeprefix("incident.")
        named = action.action if isinstance(action, IncidentUpdate) else news
        return {
            "kind": action.KIND,
            "destination": destination,
            "source": ticket.source,
            "connection": ticket.connection,
            "ticket_id": ticket.id,
            "ticket_key": ticket.key,
            "rule": rule or link.link.rule,
            "action": named[:16],
            "dedup_key": link.link.dedup_key,
            "generation": link.link.generation,
            "routing_key": rendered.limit_key,
            "body": rendered.body,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }

    def _done(
        self,
        conn: Connection,
        row: repo.InboxRow,
        event: IncidentEvent,
        outcome: str,
        now: datetime,
        *,
        ticket: Ticket | None = None,
        detail: Mapping[str, Any] | None = None,
        queued: int = 0,
    ) -> int:
        repo.set_outcome(conn, row.id, outcome)
        if ticket is not None:
            repo.record_decision(
                conn,
                {
                    "change_id": None,
                    "source": ticket.source,
                    "connection": ticket.connection,
                    "ticket_id": ticket.id,
                    "ticket_key": ticket.key,
                    "at": now,
                    "outcome": f"pagerduty_{outcome}"[:32],
                    "rules_digest": None,
                    "detail": jsonutil.dumps(dict(detail or {})),
                },
            )
        METRICS.pagerduty_webhooks_processed.labels(event.event_type.value, outcome).inc()
        return queued


def _with_incident_url(
    conn: Connection, incident_id: str, actions: tuple[TicketUpdate | IncidentUpdate, ...]
) -> tuple[TicketUpdate | IncidentUpdate, ...]:
    """Note and responder webhooks carry only the incident's reference, not its link: a ticket update without
    one gets the link stored from the incident's earlier webhooks, so every comment links the incident."""
    if all(not isinstance(a, TicketUpdate) or a.incident_url for a in actions):
        return actions
    url = repo.incident_url(conn, incident_id)
    if not url:
        return actions
    return tuple(
        replace(a, incident_url=url) if isinstance(a, TicketUpdate) and not a.incident_url else a for a in actions
    )


#: how far apart the REST API's ``last_status_change_at`` and the webhook's ``occurred_at`` of one status change
#: may be: both name the change's log entry, the REST API to the second. A person cannot make the same status
#: change twice within this (an acknowledge needs a timeout or a reassignment in between)
SAME_CHANGE_SECONDS = 5.0

_CHECKED = (
    "told by PagerDuty's REST API (the incident check): no webhook said so, check the webhook subscription"
)


def _told_before(
    event: IncidentEvent, marks: repo.EventMarks, state: IncidentState, stale_move: bool
) -> str | None:
    """Why ``event`` is a status change already applied, told a second time (None: it is not): by the incident
    check after its webhook (or after newer news), or by the webhook after the incident check applied it."""
    move = _STATE_MOVES.get(event.event_type)
    if move is None:
        return None
    if is_reconciled(event.event_id):
        if stale_move or state is move[1]:
            return "the incident check's news of a change a webhook told already (or older news): nothing written"
        return None
    checked_at = marks.reconciled_at
    if marks.reconciled_status == move[1].value and checked_at is not None:
        if abs((event.occurred_at - checked_at).total_seconds()) <= SAME_CHANGE_SECONDS:
            return "the webhook of a change the incident check applied already: nothing written again"
    return None


def _iso(at: datetime | None) -> str:
    return at.isoformat() if at is not None else "?"


def _type_label(raw: str, event: IncidentEvent | None) -> str:
    if event is not None:
        return event.event_type.value
    try:
        return EventType(raw).value
    except ValueError:
        return "other"


def _action_json(action: TicketUpdate | IncidentUpdate) -> dict[str, Any]:
    if isinstance(action, TicketUpdate):
        return {
            "kind": action.KIND,
            "ticket": action.ticket.key,
            "marker": action.marker,
            "comment": bool(action.comment),
            "transition": (action.transition.status or (action.transition.category or "").__str__())
            if action.transition
            else None,
            "group": action.group,
        }
    return {
        "kind": action.KIND,
        "incident_id": action.incident_id,
        "marker": action.marker,
        "reassign_to_policy": action.reassign_to_policy,
        "responder_policies": list(action.responder_policies),
        "note": bool(action.note),
    }
