"""Delivery: claim due outbox rows and send them; classify the outcome once; never drop anything.

Generic over destinations: each row names its destination (``outbox.destination``), which the application
injects as a mapping name → :class:`~kernel.model.Destination` (PagerDuty Events v2, each ticketing system's
write-back notes, …). A destination sends one attempt and classifies the answer with its own status table;
retries, rate-limit holds (the destination's limiter), timeouts, dead letters and fencing live here, once.

A claim marks rows with ``claimed_until`` (a visibility timeout) in a short transaction — on PostgreSQL
with ``FOR UPDATE SKIP LOCKED`` so replicas never claim the same row — and the send happens outside any
transaction. A replica that dies mid-send leaves its rows to be claimed again when the claim expires, or
sooner, once its heartbeat is older than ``takeover_after`` (:mod:`sync.heartbeat`); a live replica's claims
are never taken before they expire.
Events of one ``dedup_key`` go out in order: a row waits while an earlier row of its key is pending; so do a
ticket's notes and updates about one incident (``outbox.ORDERED_KINDS``).
A row its destination's rate limit holds back reschedules its key's whole backlog to the limiter's slots in
one transaction (:meth:`Delivery._hold`): a backlog costs nothing while it waits.
While the replica is alone on its database, the sends of one batch are marked ``sent`` together (but for pages whose
mark queues a note for the ticket: at once), at the batch's end, in one transaction that also claims the next batch
when this one came back full (:meth:`Delivery.run_once`): during a burst a worker writes once per batch, not once
per page and once per claim (issue 19). The service's workers leave the sends of a batch that was not full to their
next claim's transaction, within :data:`MARK_WITHIN_SECONDS` (``defer_marks``): at low rates a page costs one write,
not a claim and a mark.

Outcomes: 2xx → sent (and, after an incident action, a note for the ticket is queued to the write-back
destination of the ticket's connection, named after it, when write-back is on there: a note always goes back
to the instance the ticket came from); retryable (429, 5xx, network) →
``next_attempt_at`` by :class:`~kernel.retry.RetryPolicy` honouring ``Retry-After`` ("later" answers use no
attempts, only the time budget); a timeout → unknown outcome, retried with a longer wait and counted apart;
permanent (400) or retries exhausted → dead letter with the reason and the error text (``deadletters retry``
re-drives it). The stored body is sent as is: the bytes sent are the bytes the destination measured against
its size limit when it rendered them.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from kernel.clock import Clock
from kernel.errors import PermanentError, RetryableError, TicketpagerError, UnknownOutcome
from kernel.model import (
    Destination,
    EventAction,
    Outbound,
    SendLimiter,
    TicketNote,
    TicketRef,
    TicketUpdate,
    incident_note,
)
from kernel.redact import redact
from kernel.retry import RetryPolicy
from sync.heartbeat import HeartbeatLike
from sync.metrics import METRICS
from sync.prepared import Row
from sync.repos import outbox
from sync.store import Store

log = logging.getLogger("ticketpager.delivery")

#: A retry waits longer for the destination's answer than the attempt before (twice as long per earlier attempt,
#: at most this many times its timeout, e.g. ``TICKETPAGER_PAGERDUTY__TIMEOUT_SECONDS``): a destination slower
#: than the timeout is waited out instead of timed out again and again.
TIMEOUT_GROWTH_MAX = 4.0


#: the kinds each group of workers claims (defined with the outbox's queries, which order each side's rows)
INCIDENT_KINDS = outbox.INCIDENT_KINDS
TICKET_KINDS = outbox.TICKET_KINDS

#: rows one claim takes: a worker sends them one after another (each send's claim is renewed if it aged)
CLAIM_BATCH = 10
#: how much sending one claim should hold when sends are slow: a worker sends its claimed rows one after
#: another, so 10 rows to a PagerDuty answering in 100 ms hold a second of work another idle worker could share
#: (the tail of a burst); :meth:`Delivery.claim_size` fits the claim to this from the sends' recent duration
CLAIM_SECONDS_OF_WORK = 0.25

#: rows of one rate-limit key one hold reschedules (one executemany); the backlog past them is moved after
#: their last slot in one statement and rescheduled by a later hold (at 120 a minute: ~8 minutes of sends)
RESCHEDULE_MAX = 1000

#: a batch's accepted sends are marked ``sent`` together at its end (pages that queue a note for their ticket, and
#: all sends when the claims are too short, at once: :meth:`Delivery._sent`; a write transaction cost ~160 µs of CPU
#: on the project VM, one more mark in it ~27 µs: issue 19, docs/performance.md); a send accepted longer ago than
#: this is marked before the batch's next send, so a batch slowed by its destination never keeps what it sent (and
#: the later events of those dedup keys, which wait for them) unmarked for long. Until its mark a sent row stays
#: claimed by this worker: no other worker sends it; a crash in between sends it again, with its dedup key (as a
#: crash between one send and its mark always could). Between batches the same bound holds for the sends a batch that
#: was not full left to the worker's next claim (``run_once(defer_marks=True)``): the caller runs again within
#: :meth:`Delivery.marks_due_in`. Only while the replica is alone (``HeartbeatLike.alone``, see
#: :meth:`Delivery._alone`): beside other replicas each send is marked at once, as before.
MARK_WITHIN_SECONDS = 0.25
#: sends whose moving average (:meth:`Delivery.claim_size`'s) is above this are "slow": the batch's accepted sends are
#: marked before each next send, which may be slow too (see :meth:`Delivery._mark_first`)
QUICK_SEND_SECONDS = MARK_WITHIN_SECONDS / 2


def claims_for(rows: int) -> int:
    """How many claims of :data:`CLAIM_BATCH` take ``rows`` rows: the idle workers worth waking for them (a worker
    woken for nothing would take the write lock to claim nothing)."""
    return -(-rows // CLAIM_BATCH)


def send_timeout(base: float, attempts: int, claim_seconds: float) -> float:
    """The timeout of a send after ``attempts`` failed attempts of its row, within the claim: connect and read
    (each up to the timeout) must end before the claim could pass to another replica."""
    grown = base * min(2.0 ** max(attempts, 0), TIMEOUT_GROWTH_MAX)
    return max(base, min(grown, claim_seconds / 3))


class Delivery:
    """One delivery worker. ``destinations``: name → destination (the application's registry);
    ``write_back_sources``: the connections whose tickets get a note after an incident action was sent (to the
    destination named after the connection); ``legacy_events``: the destination of incident-event rows an older
    version wrote without one during a rolling upgrade (``None``: such rows become dead letters). ``kinds``: the
    outbox kinds it claims (``INCIDENT_KINDS``, ``TICKET_KINDS``; None: all); ``on_write_back`` is called once per
    claim's worth of notes for the tickets that the marks of sends queued (the service wakes a ticket worker)."""

    def __init__(
        self,
        store: Store,
        destinations: Mapping[str, Destination],
        clock: Clock,
        *,
        policy: RetryPolicy,
        worker_id: str,
        claim_seconds: float = 60.0,
        dry_run: bool = False,
        write_back_sources: Mapping[str, bool] | None = None,
        legacy_events: str | None = None,
        rng: random.Random | None = None,
        takeover_after: float | None = None,
        heartbeat: HeartbeatLike | None = None,
        kinds: Collection[str] | None = None,
        on_write_back: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.destinations = dict(destinations)
        self.clock = clock
        self.policy = policy
        self.worker_id = worker_id
        self.claim_seconds = claim_seconds
        self.dry_run = dry_run
        self.write_back_sources = dict(write_back_sources or {})
        self.legacy_events = legacy_events
        self.rng = rng or random.Random()
        self._claimed: dict[int, datetime] = {}  # row id -> when this worker claimed it
        # a claim whose replica has not heartbeaten for this long is taken over (None: only when it expires)
        self.takeover_after = takeover_after
        self.heartbeat = heartbeat  # ours: no send while it is overdue (the others may think us dead)
        self._orphaned: list[int] = []  # rows of a batch a database error interrupted: handed back next claim
        # (destination, limit key) -> rows a hold of this batch rescheduled: skipped, no transaction (see _hold)
        self._rescheduled: dict[tuple[str, str], set[int]] = {}
        self._claims = outbox.Claims(takeover=takeover_after is not None, kinds=kinds)  # statements built once
        self.on_write_back = on_write_back
        self._send_seconds: float | None = None  # recent duration of one send (moving average; None: none yet)
        timeouts = [d.timeout for d in self.destinations.values() if d.timeout is not None]
        send_seconds = 3 * max(timeouts) if timeouts and not dry_run else 0.0
        self._fresh_for = timedelta(seconds=max(claim_seconds - send_seconds, 0.0))
        # a send's mark may wait (MARK_WITHIN_SECONDS and one more quick send) only while a claim outlasts that
        # wait after three timeouts (the default: 60 s against 3 × 10 s): else the claim could expire first
        self._marks_may_wait = self._fresh_for > timedelta(seconds=2 * MARK_WITHIN_SECONDS)
        # sends not yet marked sent: this batch's, or the last one's left to the next claim (see MARK_WITHIN_SECONDS)
        self._unmarked: list[_Accepted] = []
        self._batching = False  # run_once marks a batch's sends (at its end, or with the next claim); deliver() at once
        self._notes_queued = 0  # notes for the tickets this batch's marks queued: one worker woken at the first, the
        # rest at the batch's end (one per claim's worth in all)
        self._next: list[Row] = []  # claimed with the last full batch's marks: the next batch
        self._more_due = False  # see more_may_be_due

    # -- handing back ------------------------------------------------------------------------------
    def hand_back(self) -> None:
        """The worker stops: mark what it sent and hand back at once what it claimed but will not send (rows
        claimed ahead with the last batch's marks, rows a database error interrupted), so the next replica (or
        this one, restarted) sends them now rather than when their claim expires."""
        self._mark_accepted()
        rows = [r["id"] for r in self._next] + self._orphaned
        if rows:
            self._unclaim(rows)  # raises while the database is away: kept, handed back by the next call
        self._next, self._orphaned = [], []

    # -- claiming --------------------------------------------------------------------------------
    def claim(self, limit: int = CLAIM_BATCH, *, woken: bool = False) -> list[Row]:
        """Claim up to ``limit`` due rows: the batch claimed ahead with the last batch's marks if there is one (the
        rows of it past ``limit`` handed back), else new ones. ``woken``: the caller was just told rows were queued
        or came due, so the read-only look that keeps an idle worker from taking the write lock is skipped (issue
        19); it is skipped too when sends are left to mark (a write either way). Those are marked in the claim's
        own transaction, before it claims (so a later event of their incidents may go in it). Sends a database
        error left unmarked are marked first, then its unsent rows handed back."""
        if self._orphaned:  # a batch interrupted by a database error: what it sent is marked first, then
            self._mark_accepted()  # its unsent rows (ours) handed back: else they would wait for their claim to expire
            self._unclaim(self._orphaned)
            self._orphaned = []
        self._rescheduled = {}
        if self._next:  # claimed with the last batch's marks: still ours (each send renews an aged claim)
            rows, extra = self._next[:limit], [r["id"] for r in self._next[limit:]]
            if extra:  # asked for fewer than were claimed ahead: the rest are free for the other workers now
                self._unclaim(extra)
            self._next = []
            return rows
        now = self.clock.now()
        stale = now - timedelta(seconds=self.takeover_after or 0.0)
        if not woken and not self._unmarked:  # sends left to mark take the write lock anyway: no look first
            with self.store.engine.connect() as conn:  # a read first: idle workers take no write lock
                if not self._claims.anything_due(conn, now, stale):
                    self._claimed = {}
                    return []
        return self._mark_accepted(claim=limit, now=now)  # the last batch's sends, if left to mark, and the claim

    def _claim_in(self, conn: Connection, limit: int, now: datetime) -> list[Row]:
        """Claim up to ``limit`` due rows in the caller's transaction."""
        stale = now - timedelta(seconds=self.takeover_after or 0.0)
        until = now + timedelta(seconds=self.claim_seconds)
        rows = self._claims.claim(conn, limit, now, stale, worker=self.worker_id, until=until)
        self._claimed = {r["id"]: now for r in rows}  # this worker's latest batch (see deliver)
        taken = [r for r in rows if r["claimed_until"] is not None and r["claimed_until"] >= now]
        if taken:
            log.warning(
                "took over %d outbox row(s) claimed by %s: that replica stopped heartbeating",
                len(taken),
                ", ".join(sorted({str(r["claimed_by"]) for r in taken})),
            )
        return list(rows)

    def claim_size(self) -> int:
        """How many rows the next claim should take: :data:`CLAIM_BATCH`, fewer when sends are slow, so a claim
        holds about :data:`CLAIM_SECONDS_OF_WORK` of sending and the workers share a burst to its end."""
        if not self._send_seconds:
            return CLAIM_BATCH
        return max(1, min(CLAIM_BATCH, int(CLAIM_SECONDS_OF_WORK / self._send_seconds)))

    def run_once(
        self,
        limit: int = CLAIM_BATCH,
        stopping: Callable[[], bool] | None = None,
        *,
        woken: bool = False,
        defer_marks: bool = False,
    ) -> int:
        """Claim up to ``limit`` due rows and send them. When ``stopping`` turns true (SIGTERM) the rows not
        yet sent are handed back at once rather than held until their claim expires: a shutdown waits for
        at most the send in flight, and the next replica (or this one, restarted) sends the rest now.
        While this replica's heartbeat is overdue nothing is claimed (see :mod:`sync.heartbeat`). ``woken``: see
        :meth:`claim`.

        While the replica is alone (:meth:`_alone`), the batch's sends are marked ``sent`` together at its end
        (or sooner: :data:`MARK_WITHIN_SECONDS`); when the batch came back full, the same transaction claims the
        next one (up to ``limit`` rows, fewer when sends were slow: :meth:`claim_size`), which the next call sends
        (:attr:`more_may_be_due`). :meth:`hand_back` returns such rows when the worker stops.

        ``defer_marks`` (the service's workers): while alone, a batch that was not full leaves its sends to be
        marked by the next claim, in its transaction: at low rates a page then costs one write transaction, not two
        (issue 19). The caller must then call again within :meth:`marks_due_in` (a claim marks them, whatever it
        finds) or call :meth:`hand_back`: left alone, they stay claimed and unmarked, and are sent again once
        their claim expires. Sends to a destination without one timeout (notes), and pages whose mark queues a note
        for the ticket, are marked at once all the same."""
        if self.heartbeat is not None and not self.heartbeat.healthy():
            if self._next or self._unmarked:  # marked, and what was claimed ahead free for the others now
                self.hand_back()
            return 0  # we may be presumed dead: claim nothing until our heartbeat gets through again
        rows = self.claim(limit, woken=woken)
        self._more_due = False
        self._batching = True
        try:
            for index, row in enumerate(rows):
                try:
                    if stopping is not None and stopping():
                        self._mark_accepted()
                        self._unclaim([r["id"] for r in rows[index:]])
                        return index
                    if self._unmarked and self._mark_first(row):
                        self._mark_accepted()
                    self.deliver(row)
                except BaseException:  # the database went away mid-batch: the worker restarts with this object
                    accepted = {a.row["id"] for a in self._unmarked}  # marked by the next claim, not handed back
                    self._orphaned += [r["id"] for r in rows[index:] if r["id"] not in accepted]
                    raise
        finally:
            self._batching = False
            self._wake(claims_for(self._notes_queued) - min(self._notes_queued, 1))  # one was woken at the first
            self._notes_queued = 0
        full = len(rows) >= limit and not (stopping is not None and stopping())
        alone = self._alone()
        ahead = min(limit, self.claim_size()) if full and alone else 0
        if ahead or not (defer_marks and alone and self._may_stay_unmarked()):  # else the next claim marks them
            self._next = self._mark_accepted(claim=ahead)
        self._more_due = len(self._next) >= ahead if ahead else full
        return len(rows)

    def _mark_first(self, row: Row) -> bool:
        """Whether the batch's accepted sends are marked before ``row`` is sent: when the oldest was accepted longer
        ago than :data:`MARK_WITHIN_SECONDS`, when ``row`` is a retry (its destination failed it before: its send
        may wait longer, :func:`send_timeout`), when ``row``'s destination has no timeout (several calls: notes,
        incident updates), or when recent sends were slow (their moving average above :data:`QUICK_SEND_SECONDS`:
        the next may be slow too). So what was sent stays unmarked at most that long plus one quick-looking first
        attempt (its connect and read timeouts at worst); a fresh claim (``_fresh_for``) keeps three timeouts in
        hand, so no accepted row's claim can expire unmarked."""
        if self.clock.monotonic() - self._unmarked[0].monotonic > MARK_WITHIN_SECONDS:
            return True
        if not self._one_timeout(row):  # several calls, no bound on how long they take
            return True
        return bool(row["attempts"]) or (self._send_seconds or 0.0) > QUICK_SEND_SECONDS

    def _one_timeout(self, row: Row) -> bool:
        """Whether ``row``'s destination sends it in one call bounded by one timeout (PagerDuty's events): not a
        note or an incident update (several calls, no bound on how long they take), nor a row without a destination."""
        destination = self.destinations.get(self._destination_name(row))
        return destination is not None and destination.timeout is not None

    def _may_stay_unmarked(self) -> bool:
        """Whether the batch's accepted sends may wait for the worker's next claim to be marked: not when one went
        to a destination without one timeout (a note, an incident update: several calls, and one sent again after
        a crash is a second comment), which :meth:`_mark_first` marks before each next send too."""
        return all(self._one_timeout(accepted.row) for accepted in self._unmarked)

    def _writes_back(self, accepted: _Accepted) -> bool:
        """Whether marking ``accepted`` queues a note for its ticket (:meth:`_queue_write_back`): a page, not a dry
        run, from a connection that writes back."""
        row = accepted.row
        return row["kind"] == "event" and bool(self.write_back_sources.get(row["connection"])) and not accepted.dry_run

    @property
    def more_may_be_due(self) -> bool:
        """After :meth:`run_once`: more rows than this worker's next batch may be due, so another worker may share
        them (the service wakes one): the batch claimed ahead came back full, or, when none was claimed ahead,
        the batch itself was full. A burst that ends with a full batch then wakes nobody to find nothing."""
        return self._more_due

    def _unclaim(self, row_ids: list[int]) -> None:
        with self.store.begin() as conn:
            outbox.unclaim(conn, row_ids, self.worker_id)

    def drain(self, max_rounds: int = 10_000) -> int:
        total = 0
        for _ in range(max_rounds):
            n = self.run_once()
            if not n:
                break
            total += n
        return total

    # -- one row ---------------------------------------------------------------------------------
    def deliver(self, row: Row) -> None:
        claimed = self._claimed.pop(row["id"], None)
        if self.heartbeat is not None and not self.heartbeat.healthy():
            # our heartbeat is overdue: another replica may take this row any moment; sending now could
            # send it twice. The row stays claimed: ours again once the heartbeat gets through, or theirs.
            log.warning("heartbeat overdue: outbox row %s is not sent by this replica for now", row["id"])
            self._orphaned.append(row["id"])
            return
        item = self.outbound(row)
        destination = self.destinations.get(item.destination)
        if destination is None:
            if self._renew(row["id"]):
                self._failed(row, PermanentError(f"no destination {item.destination!r} is configured"))
            return
        if destination.timeout is None:  # several vendor calls: always renewed (and fenced if lost)
            if self._renew(row["id"]):
                self._send(row, item, destination, None)
            return
        limiter = destination.limiter
        if limiter is None:
            self._deliver_timed(row, item, destination, claimed)
            return
        if row["id"] in self._rescheduled.get((item.destination, item.limit_key), ()):
            return  # a hold of this batch rescheduled it (and ended our claim): nothing to write
        wait, sending = limiter.reserve(item.limit_key)  # may read the other replicas' sends: first
        if sending is None:  # spacing, not failure: no attempt is counted, and the event is counted once, not per check
            self._hold(row, item, limiter, wait)
            return
        limiter.sent(row["id"])
        try:
            self._deliver_timed(row, item, destination, claimed)
        finally:  # the event may have arrived any time until now: the limiter counts it from here
            sending.finished()

    def outbound(self, row: Row) -> Outbound:
        """A claimed row as its destination sends it."""
        return Outbound(
            id=row["id"],
            destination=self._destination_name(row),
            kind=row["kind"],
            action=row["action"],
            body=row["body"],
            limit_key=row["routing_key"],
            ticket_key=row["ticket_key"],
            attempts=row["attempts"],
        )

    def _destination_name(self, row: Row) -> str:
        """The destination that sends ``row``: its own; a note written without one, its connection's; an incident
        event written without one (an older version), ``legacy_events``."""
        return row["destination"] or (row["connection"] if row["kind"] == "writeback" else self.legacy_events) or ""

    def _deliver_timed(
        self, row: Row, item: Outbound, destination: Destination, claimed: datetime | None
    ) -> None:
        # A row whose claim still runs for longer than its one send may take (connect + read timeouts,
        # with a margin) cannot be taken by another worker before we are done: renewing it would cost one
        # more write transaction per event for nothing. Older claims (rows behind slow sends of this batch,
        # a stalled worker) are renewed, and fenced if lost.
        base = destination.timeout or 0.0
        timeout = send_timeout(base, row["attempts"], self.claim_seconds)  # a retry waits longer for the answer,
        fresh = timeout <= base and claimed is not None and self.clock.now() - claimed < self._fresh_for
        if fresh and self.heartbeat is not None:  # a heartbeat gap since the claim: it may be someone else's
            fresh = claimed is not None and self.heartbeat.unbroken_since(claimed)
        if not fresh and not self._renew(row["id"]):  # so its claim is always renewed
            return
        self._send(row, item, destination, timeout)

    def _send(self, row: Row, item: Outbound, destination: Destination, timeout: float | None) -> None:
        notes = row["kind"] == TicketNote.KIND
        ticket_side = notes or row["kind"] == TicketUpdate.KIND  # counted per source system
        if self.dry_run and not notes:  # a note tells of an action that was sent for real: it is written
            log.info("dry run: would send %s", destination.preview(item))
            METRICS.events.labels(_label(row), "dry_run").inc()
            self._sent(row, dry_run=True)
            return
        started = self.clock.monotonic()
        try:
            destination.send(item, timeout=timeout)  # the stored bytes, as measured
        except TicketpagerError as exc:
            self._timed(started)
            if ticket_side:
                METRICS.write_backs.labels(self._connection_label(row), exc.kind.value).inc()
            self._failed(row, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a destination's bug must not kill the worker
            log.exception("%s %s for %s failed unexpectedly", item.destination, row["kind"], row["ticket_key"])
            self._failed(row, RetryableError(f"{type(exc).__name__}: {exc}"))
            return
        self._timed(started)
        if ticket_side:
            METRICS.write_backs.labels(self._connection_label(row), "sent").inc()
        else:
            METRICS.events.labels(_label(row), "sent").inc()
        self._sent(row, dry_run=False)

    def _timed(self, started: float) -> None:
        """Fold one send's duration into the moving average :meth:`claim_size` reads."""
        took = max(self.clock.monotonic() - started, 0.0)
        self._send_seconds = took if self._send_seconds is None else 0.7 * self._send_seconds + 0.3 * took

    def _connection_label(self, row: Row) -> str:
        """The ``source`` label of a note's metrics: its connection, one of the configured destinations'
        names (bounded), else ``unknown``."""
        return str(row["connection"]) if row["connection"] in self.destinations else "unknown"

    def _renew(self, row_id: int) -> bool:
        """Extend our claim right before sending; False if the row is no longer ours (fencing: a claim
        that expired while earlier rows of the batch were slow must not lead to a second send)."""
        until = self.clock.now() + timedelta(seconds=self.claim_seconds)
        with self.store.begin() as conn:
            ours = outbox.renew(conn, row_id, self.worker_id, until)
        if not ours:  # our claim expired and another worker took the row: leave it to them
            log.warning("outbox row %s was claimed by another worker meanwhile; skipping it", row_id)
        return ours

    def _sent(self, row: Row, *, dry_run: bool) -> None:
        """The destination accepted ``row``: it is marked sent at the batch's end or with the worker's next claim
        (:meth:`run_once`), or now: when it was delivered on its own or beside other replicas (their rate limit
        counts our sends from the outbox), when its mark queues its note for the ticket (:meth:`_writes_back`: the
        note would wait too, and land after a quick acknowledgement's), or when the claims are too short to hold
        a send's mark back (:attr:`_marks_may_wait`)."""
        accepted = _Accepted(row, self.clock.now(), self.clock.monotonic(), dry_run)
        self._unmarked.append(accepted)
        if not (self._batching and self._marks_may_wait and self._alone()) or self._writes_back(accepted):
            self._mark_accepted()

    def _alone(self) -> bool:
        """This replica's heartbeat is healthy and saw no other replica: its sends may be marked with their batch,
        and a full batch may claim the next. Beside other replicas (or without a heartbeat: a command, a test) each
        send is marked at once and each batch claimed on its own, as their rate limit and claims expect: they
        count this replica's sends from their marks, and rows this replica claimed ahead would escape the schedule
        their hold of a rate-limited key writes (it reschedules only rows free to it: two schedules for one key's
        slots, and their sends in flight unseen by each other). Within one replica the limiter is shared in memory
        and counts the sends in flight, so its workers may claim ahead beside each other."""
        return self.heartbeat is not None and self.heartbeat.alone()

    def _mark_accepted(self, *, claim: int = 0, now: datetime | None = None) -> list[Row]:
        """Mark the accepted sends not yet marked (queueing their notes for the tickets) in one transaction, and
        claim up to ``claim`` due rows in it (as of ``now``); returns the rows claimed. Nothing to mark and nothing
        to claim: no transaction. A database error leaves the sends to be marked by the next call."""
        if not self._unmarked and not claim:
            return []
        with self.store.begin() as conn:
            marked = self._mark_in(conn)
            rows = self._claim_in(conn, claim, now or self.clock.now()) if claim else []
        self._marked(marked)
        return rows

    def marks_due_in(self) -> float | None:
        """Seconds until the oldest send a batch left to mark (``run_once(defer_marks=True)``) must be marked
        (:data:`MARK_WITHIN_SECONDS` after it was accepted); None when none is left. The service's worker waits at
        most this long for its next wake-up, then runs again: the claim marks them, or :meth:`hand_back` when it
        stops."""
        if not self._unmarked:
            return None
        return max(MARK_WITHIN_SECONDS - (self.clock.monotonic() - self._unmarked[0].monotonic), 0.0)

    def _mark_in(self, conn: Connection) -> tuple[list[float], int]:
        """Mark the accepted sends in the caller's transaction; returns their delivery latencies and how many notes
        for the tickets it queued, for :meth:`_marked` once committed."""
        latencies: list[float] = []
        queued = 0
        sends = [(a.row["id"], a.at, a.dry_run) for a in self._unmarked]
        lost = outbox.mark_sent_many(conn, sends, self.worker_id)
        for accepted in self._unmarked:
            row, now = accepted.row, accepted.at
            if row["id"] in lost:
                log.warning("outbox row %s was taken over while it was being sent", row["id"])
                continue
            if row["kind"] != "event":  # a note, a ticket or incident update: nothing follows it
                continue
            received = row.get("change_received_at")  # read with the claim
            if received is not None:
                latencies.append(max((now - received).total_seconds(), 0.0))
            if self._writes_back(accepted):
                queued += self._queue_write_back(conn, row)
        return latencies, queued

    def _marked(self, marked: tuple[list[float], int]) -> None:
        """The marks of :meth:`_mark_in` are committed: forget them, observe their latencies once (not again after
        a failed commit), and wake a ticket worker per claim of the notes it queued (:func:`claims_for`); during a
        batch, one at its first notes and the rest at its end."""
        latencies, queued = marked
        self._unmarked = []
        for seconds in latencies:
            METRICS.delivery_latency.observe(seconds)
        if not self._batching:
            self._wake(claims_for(queued))
            return
        # a batch's pages that write back are marked one by one: one ticket worker starts at the first notes (it
        # claims again while it finds more), the others at the batch's end, one per claim's worth of its notes
        if queued and not self._notes_queued:
            self._wake(1)
        self._notes_queued += queued

    def _wake(self, workers: int) -> None:
        """Wake ``workers`` ticket workers (none when ``workers`` ≤ 0) for the notes the marks queued."""
        if self.on_write_back is not None:
            for _ in range(workers):
                self.on_write_back()

    def _queue_write_back(self, conn: Connection, row: Row) -> bool:
        """Queue the note about a sent incident action for the ticket, to its connection's write-back (that
        destination renders it now, like every action: the stored body is what is sent); False if the
        connection has no write-back."""
        notes = self.destinations.get(row["connection"])
        if notes is None:
            return False
        sent_by = self.destinations.get(self.outbound(row).destination)
        try:  # pure: a note that cannot be written is logged and dropped, not allowed to undo the batch's marks
            note = incident_note(
                sent_by.label if sent_by is not None else str(row["destination"]),
                TicketRef(row["source"], row["ticket_id"], row["ticket_key"], None, row["connection"]),
                EventAction(row["action"]),
                row["dedup_key"],
                row["rule"],
                row["id"],
            )
            body = notes.render(note).body
        except Exception:  # noqa: BLE001 - a destination's bug must not block the marks of what was sent
            log.exception("the note for %s about outbox row %s could not be rendered", row["ticket_key"], row["id"])
            return False
        outbox.enqueue(
            conn,
            kind=note.KIND,
            destination=notes.name,
            source=row["source"],
            connection=row["connection"],
            ticket_id=row["ticket_id"],
            ticket_key=row["ticket_key"],
            rule=row["rule"],
            action=row["action"],
            dedup_key=row["dedup_key"],
            generation=row["generation"],
            limit_key="",
            body=body,
            change_id=row["change_id"],
            now=self.clock.now(),
        )
        return True

    def _failed(self, row: Row, exc: TicketpagerError) -> None:
        now = self.clock.now()
        attempts = row["attempts"] + 1
        first = row["first_attempt_at"] or now  # the retry budget runs from the first failure, not creation
        elapsed = (now - first).total_seconds()
        decision = self.policy.decide(attempts, elapsed, exc, self.rng)
        wait = decision.wait
        action = _label(row)
        if wait is None:
            why = "permanent" if isinstance(exc, PermanentError) else decision.reason
            log.error("%s %s for %s is a dead letter (%s): %s", row["kind"], action, row["ticket_key"], why, exc)
            METRICS.events.labels(action, "dead").inc()
            self._mark(
                row["id"],
                status="dead",
                attempts=attempts,
                last_error=redact(f"{why}: {exc}", row["routing_key"])[:4000],
                first_attempt_at=first,
            )
            return
        unknown = isinstance(exc, UnknownOutcome)  # not a failure: the destination may have it; the retry is harmless
        log.warning(
            "%s %s for %s %s (attempt %d), retry in %.1fs: %s",
            row["kind"],
            action,
            row["ticket_key"],
            "has an unknown outcome" if unknown else "failed",
            attempts,
            wait,
            exc,
        )
        METRICS.events.labels(action, "unknown" if unknown else "retry").inc()
        self._mark(
            row["id"],
            attempts=attempts,
            last_error=redact(str(exc), row["routing_key"])[:4000],
            next_attempt_at=now + timedelta(seconds=wait),
            first_attempt_at=first,
        )

    def _hold(self, row: Row, item: Outbound, limiter: SendLimiter, wait: float) -> None:
        """``row`` must wait for its rate limit: the key's whole backlog (up to :data:`RESCHEDULE_MAX` rows
        free to this worker, in arrival order) is rescheduled to the limiter's slots in one transaction — each
        row due when it could go, not all of them when the next slot frees (a 14,000-row backlog was claimed
        and released again row by row every minute: issue 19, docs/performance.md). The rows of this batch
        it covered are skipped without another transaction. Every event rescheduled is held back by the
        limit: ``rate_limited`` counts it once (:meth:`~connectors.pagerduty.RateLimiter.first_hold`). A row
        whose slot comes while the limiter still says wait (the slots are estimates) is held again."""
        times = limiter.slots(item.limit_key, RESCHEDULE_MAX)
        with self.store.begin() as conn:
            marked = self._mark_in(conn)  # first: the key's backlog must not take in what this batch sent
            rows = outbox.reschedule(
                conn,
                destination=row["destination"],
                kind=row["kind"],
                limit_key=item.limit_key,
                worker=self.worker_id,
                now=self.clock.now(),
                times=times,
            )
        self._marked(marked)
        ids = {r["id"] for r in rows}
        self._rescheduled[(item.destination, item.limit_key)] = ids
        held = Counter(_label(r) for r in rows if limiter.first_hold(r["id"]))
        for label, n in held.items():
            METRICS.events.labels(label, "rate_limited").inc(n)
        if row["id"] not in ids:  # not ours any more (taken over meanwhile), or past the bound: as before
            if limiter.first_hold(row["id"]):
                METRICS.events.labels(_label(row), "rate_limited").inc()
            self._release(row["id"], wait)

    def _release(self, row_id: int, wait: float) -> None:
        self._mark(row_id, next_attempt_at=self.clock.now() + timedelta(seconds=wait))

    def _mark(self, row_id: int, **values: Any) -> None:
        with self.store.begin() as conn:
            outbox.mark(conn, row_id, self.worker_id, **values)


@dataclass(frozen=True, slots=True)
class _Accepted:
    """A send its destination accepted, to be marked sent: when (business clock, stored as ``sent_at``; and the
    monotonic clock, for :data:`MARK_WITHIN_SECONDS`), and whether it was a dry run."""

    row: Row
    at: datetime
    monotonic: float
    dry_run: bool


def _label(row: Row) -> str:
    """The ``action`` label of ``ticketpager_events_total`` for a row: its incident action, or its kind
    (``writeback``, ``ticket_update``, ``incident_update``)."""
    return str(row["action"]) if row["kind"] == "event" else str(row["kind"])
