"""Wiring: one :class:`Service` per process holds the store, rules, connectors and the worker threads.

Concurrency model, chosen once: the HTTP edge is asyncio (uvicorn/Starlette) and hands webhook changes
to one writer thread; everything else — engine, delivery workers, pollers, scheduler, rule reloader —
runs in plain threads with synchronous SQLAlchemy and ``requests``, coordinated through the database
(claims, ``SKIP LOCKED``, leases), never through process memory, so any number of replicas can run.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from connectors import CONNECTORS, connector_class
from connectors.base import Connector, NoteDestination
from connectors.jira_normalize import display_name_fields
from connectors.pagerduty import PagerDutyDestination, PagerDutySink, RateLimiter
from connectors.pagerduty_rest import Pacer, PagerDutyRestClient
from connectors.pagerduty_update import PagerDutyUpdateDestination
from connectors.pagerduty_webhooks import incident_event_body, parse_event
from kernel import redact
from kernel.clock import Clock, SystemClock
from kernel.errors import ConfigError
from kernel.incidents import IncidentEvent
from kernel.logs import LogThrottle
from kernel.model import Destination
from kernel.ports import IncidentContext, SyncPlan, TwoWayRules
from kernel.redact import mask
from kernel.retry import RetryPolicy
from kernel.routing_keys import is_integration_key
from rules import RuleStore
from rules.silence_match import compile_matchers
from sync.db import DATABASE_ERRORS, database_fault, failed_statement, failure_reason
from sync.delivery import INCIDENT_KINDS, TICKET_KINDS, Delivery, claims_for, send_timeout
from sync.engine import Engine
from sync.heartbeat import Heartbeat
from sync.ingest import Writer
from sync.metrics import METRICS, WORKER_RESTART_REASONS, zero_series
from sync.poller import poll_once
from sync.reconcile import IncidentCheck
from sync.repos import incidents as pd_inbox
from sync.repos.changes import any_pending as pending_changes
from sync.repos.cursors import acquire_lease, release_lease, replicas_alive
from sync.repos.outbox import live_rows, next_due, next_due_statement
from sync.repos.silences import SilenceBook
from sync.reverse import INCIDENT_UPDATES, OwnUser, ReverseWorker
from sync.store import Store
from ticketpager.connections import Connection, declare, load_connections
from ticketpager.schedule import poll_offset
from ticketpager.secretfiles import EnvWithSecretFiles
from ticketpager.settings import Settings
from ticketpager.wakeups import Arrivals, Wakeups

log = logging.getLogger("ticketpager.service")

#: After a wake-up the engine lets the webhook commits of the next few milliseconds join its batch, until
#: ``ENGINE_GATHER_CHANGES`` changes are there: one transaction for several changes instead of one per group
#: commit. A batch's fixed cost is most of the engine's CPU at low rates: 1.6 ms against 0.3 ms per change
#: (``bench.engine_cpu --batch``; issue 19, docs/performance.md). Capped by the idle wait.
ENGINE_COALESCE_SECONDS = 0.05
ENGINE_GATHER_CHANGES = 8

#: An idle delivery worker, the idle engine and the idle reverse worker wait for a wake-up (the webhook writer's
#: commit, the engine's queued rows, the idle look) and look by themselves only this often: a safety net should
#: a wake-up ever be missed, not a poll.
WORKER_FALLBACK_SECONDS = 30.0
#: how long ``stop`` waits for the background threads together (a send in flight finishes within its timeout)
STOP_SECONDS = 15.0

#: a worker that keeps failing on the same database error logs it again after this long (with how many restarts it
#: stands for), not every second: a database away for an hour is 60 lines per worker, not 3,600
DATABASE_LOG_EVERY_SECONDS = 60.0


class _Senders(NamedTuple):
    """One group of delivery workers: its threads' and worker ids' names, how many, the outbox kinds they send
    (None: all) and their wake-ups."""

    thread: str
    worker_prefix: str
    workers: int
    kinds: frozenset[str] | None
    wakeups: Wakeups


def _pagerduty(svc: Service) -> Destination:
    # requests sessions are not shared between threads: each delivery worker gets its own sink
    return PagerDutyDestination(svc._injected_sink or svc._new_sink(), svc.limiter)


def _pagerduty_rest(svc: Service) -> Destination:
    # a client (session) per delivery worker, built on first send; one pacer per process: PagerDuty counts per token
    pd = svc.settings.pagerduty

    return PagerDutyUpdateDestination(svc.rest_client, requester_id=pd.from_user_id)


#: The destinations actions can go to, by name: how the application builds each (per delivery worker; every
#: delivery worker has them all). Adding a destination = its module + one line here. Ticket notes and ticket
#: updates go to each connection's destination (:class:`~connectors.base.NoteDestination`, one per
#: connection, named after it); incident updates (outbox kind ``incident_update``) to ``pagerduty_rest``.
DESTINATIONS: dict[str, Callable[[Service], Destination]] = {
    "pagerduty": _pagerduty,
    "pagerduty_rest": _pagerduty_rest,
}


#: how long the reverse worker waits before asking PagerDuty's REST API again after it failed to answer
REVERSE_RETRY_SECONDS = 5.0


class _NoPlan:
    """The plan of a rule set without a two-way section: nothing to write back."""

    rule = ""
    actions: tuple[()] = ()
    explanation = ("the rules configure no ticket updates for PagerDuty events",)
    changed_group = None


class _OneWayRules:
    """Stands in for the reverse half of a rule set that has none (link state is still followed)."""

    def on_incident(self, ctx: IncidentContext) -> SyncPlan:
        return _NoPlan()

    def on_ticket_change(self, ctx: Any, link: Any, incident_id: str) -> SyncPlan:
        return _NoPlan()


def load_rule_store(settings: Settings, clock: Clock) -> RuleStore:
    """The hot-reloading rule holder; raises ``rules.RuleFileErrors`` if the first load fails."""
    # ${PD_...} routing keys from the environment, else from a file of that name in the secrets directory
    env = EnvWithSecretFiles(settings.secrets_dir) if settings.secrets_dir is not None else None
    return RuleStore(settings.rules_path, env=env, clock=clock)


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        rule_store: RuleStore | None = None,
        sink: PagerDutySink | None = None,
        connectors: dict[str, Connector] | None = None,
        incidents: str = "pagerduty",
        connections: Mapping[str, Connection] | None = None,
    ) -> None:
        self.settings = settings
        redact.configure(settings)  # every error text this process stores, shows or logs is redacted
        # every instance of every system, by name (the default ones are named after their system)
        self.connections: dict[str, Connection] = dict(connections or load_connections(settings))
        declare(self.connections)  # before the rules load: their connection: conditions are checked against them
        self.clock = clock or SystemClock()
        self.store = store or Store(settings.database_url)
        self.rule_store = rule_store if rule_store is not None else load_rule_store(settings, self.clock)
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started_at = self.clock.now()  # a source that never polled successfully lags from here
        # failure counters exist from the start, so alerts see the first one (per connection: the webhook and poll
        # series are labelled with the connection's name, which for a default connection is its system's)
        zero_series(tuple(self.connections))
        self._connectors: dict[str, Connector] = dict(connectors or {})
        self._injected: dict[str, Connector] = dict(connectors or {})
        self._write_back_connectors: dict[str, Connector] = {}
        self._pollable: list[str] | None = None
        self._connector_lock = threading.Lock()
        self.wake = threading.Event()  # set by the webhook writer and pollers: changes are waiting
        self.arrivals = Arrivals()  # how many the webhook writer stored since the engine's last claim
        # every delivery worker's own wake-up: the engine (or a recheck) queued rows, or the timer saw one due
        self.outbox_wake = Wakeups()  # the workers that send to PagerDuty
        self.write_back_wake = Wakeups()  # the workers that send notes and updates to the tickets
        self.stopping = threading.Event()
        self.writer = Writer(self.store, on_commit=self._stored)
        pd = settings.pagerduty
        self._injected_sink = sink  # tests may pass one; otherwise each delivery worker gets its own session
        self.sink = sink or self._new_sink()
        self.incidents = incidents  # the destination (in DESTINATIONS) of incident actions
        self.rest_pacer = Pacer(self.clock)  # PagerDuty REST: one per process, shared by the workers' clients
        self.policy = RetryPolicy(
            max_attempts=pd.max_attempts,
            max_total_seconds=pd.max_retry_seconds,
            base_seconds=pd.backoff_base_seconds,
            cap_seconds=pd.backoff_cap_seconds,
            max_retry_after_seconds=pd.max_retry_seconds,
            later_uses_attempts=False,  # while PagerDuty says "later" only the operator's time budget ends it
            budget_name="retry budget max_retry_seconds",
        )
        self.heartbeat = Heartbeat(
            self.store,
            self.clock,
            self.instance,
            interval=settings.engine.heartbeat_seconds,
            timeout=settings.engine.replica_timeout_seconds,
            dry_run=settings.dry_run,
        )
        self.limiter = RateLimiter(  # per routing key across the replicas: theirs are read from the outbox
            pd.rate_limit_per_minute,
            self.clock,
            elsewhere=lambda key, since: self.store.sends_elsewhere(
                PagerDutyDestination.name, key, since, self.instance
            ),
            # connect + read of the longest timeout a retry may use: the longest one POST can be in flight
            send_seconds=2 * send_timeout(pd.timeout_seconds, 1_000, settings.engine.claim_seconds),
            alone_since=self.heartbeat.alone_since,  # alone, one read per routing key per ALONE_TRUST
        )
        self.engine = Engine(
            self.store,
            lambda: self.rule_store.current,
            self.clock,
            incidents=DESTINATIONS[incidents](self),
            # a ticket's group change → its open incident (renders only: the delivery workers send)
            incident_updates=DESTINATIONS[INCIDENT_UPDATES](self) if INCIDENT_UPDATES in DESTINATIONS else None,
            batch_size=settings.engine.batch_size,
            on_queued=self._pages_queued,  # a batch that queued nothing wakes none
            silences=SilenceBook(compile_matchers),  # silences' matchers, compiled by the rules language
            connections=tuple(self.connections),  # the metrics' labels: configured names only
            dry_run=settings.dry_run,  # its rows say so: a dry run tells them from a live instance's
        )
        self.reverse_wake = threading.Event()  # set when a PagerDuty webhook was stored
        self.rest: PagerDutyRestClient | None = None  # the reverse worker's, built with it (a token is set)
        self.reverse = self._reverse_worker()
        self.incident_check = self._incident_check()
        self._threads: list[threading.Thread] = []
        self._workers: list[tuple[threading.Thread, Delivery]] = []  # the delivery workers, for stop()
        self._reload_failures_seen = 0
        # database errors met answering /readyz and /admin/status, logged once a period per error text
        self._answer_log = LogThrottle(DATABASE_LOG_EVERY_SECONDS, self.clock.monotonic)
        self._learn_routing_keys()

    def __repr__(self) -> str:
        return f"<Service {self.instance}>"

    # -- connectors ------------------------------------------------------------------------------
    def connection_of(self, system: str, name: str | None) -> str | None:
        """The connection a webhook of ``system`` addressed to ``name`` (``None``: the default one) is for,
        or ``None`` if there is no such connection of that system."""
        found = self.connections.get(name or system)
        return found.name if found is not None and found.system == system else None

    def connector(self, source: str) -> Connector:
        """The connector of connection ``source`` (a system's name: its default connection), built once."""
        found = self._connectors.get(source)  # every webhook asks: no lock once it exists
        if found is not None:
            return found
        with self._connector_lock:
            if source not in self._connectors:
                connection = self.connections[source]
                cls = connector_class(connection.system)
                self._connectors[source] = cls(
                    connection.settings,
                    clock=self.clock,
                    insecure=self.settings.insecure_webhooks,
                    rule_custom_fields=functools.partial(self._rule_custom_fields, connection.system),
                    connection=connection.name,
                )
            return self._connectors[source]

    def _rule_custom_fields(self, source: str) -> frozenset[str]:
        return self.rule_store.current.custom_fields(source)

    def pollable_sources(self) -> list[str]:
        """Enabled sources with API credentials (settings do not change while the process runs: worked
        out once, so the warning about an enabled source without credentials is logged once)."""
        if self._pollable is None:
            self._pollable = self._find_pollable()
        return list(self._pollable)

    def _find_pollable(self) -> list[str]:
        out = []
        for source, connection in self.connections.items():
            if not connection.settings.enabled:
                continue
            if self.connector(source).can_poll:
                out.append(source)
            else:
                log.warning("%s is enabled but has no API credentials: webhooks only, no polling", source)
        return out

    def write_back_sources(self) -> dict[str, bool]:
        """The connections whose tickets get notes (each outbox row names its ticket's connection, whose own
        write-back destination writes the note on that instance)."""
        if self.settings.dry_run:
            return {}
        return {s: self.connections[s].settings.write_back for s in self.pollable_sources()}

    def _new_sink(self) -> PagerDutySink:
        pd = self.settings.pagerduty
        return PagerDutySink(pd.url, timeout=pd.timeout_seconds, clock=self.clock)

    def destinations(self) -> dict[str, Destination]:
        """One delivery worker's destinations: every connection's notes and ticket updates
        (named after the connection; a default connection's is named after its system, as rows queued before
        named connections say)."""
        out: dict[str, Destination] = {
            name: NoteDestination(name, functools.partial(self._write_back_connector, name))
            for name in (*CONNECTORS, *self.connections)
        }
        for name, build in DESTINATIONS.items():
            out[name] = build(self)
        return out

    def _write_back_connector(self, source: str) -> Connector:
        """The connector delivery workers write notes with: one attempt per call, because the outbox
        retries with backoff — a connector sleeping through its own retries would stall the worker (and
        the pages queued behind the note) and let its claims expire."""
        with self._connector_lock:
            if source in self._injected:
                return self._injected[source]
            if source not in self._write_back_connectors:
                connection = self.connections[source]
                self._write_back_connectors[source] = connector_class(connection.system)(
                    connection.settings,
                    clock=self.clock,
                    retry=RetryPolicy(max_attempts=1),
                    insecure=self.settings.insecure_webhooks,
                    connection=connection.name,
                )
            return self._write_back_connectors[source]

    def delivery(
        self, worker: str = "0", *, heartbeat: Heartbeat | None = None, kinds: Collection[str] | None = None
    ) -> Delivery:
        """A delivery worker. It takes over the claims of replicas whose heartbeat stopped; ``heartbeat``
        (this process's, when it runs) keeps it from sending while this replica may be presumed dead;
        ``kinds``: the outbox kinds it sends (None: all)."""
        return Delivery(
            self.store,
            self.destinations(),
            self.clock,
            policy=self.policy,
            worker_id=f"{self.instance}/{worker}",
            claim_seconds=self.settings.engine.claim_seconds,
            dry_run=self.settings.dry_run,
            write_back_sources=self.write_back_sources(),
            legacy_events=PagerDutyDestination.name,  # incident rows written before migration 0007
            takeover_after=self.settings.engine.replica_timeout_seconds,
            kinds=kinds,
            on_write_back=self.write_back_wake.wake,
            heartbeat=heartbeat,
        )

    # -- the way back from PagerDuty (issue 16) ----------------------------------------------------
    def rest_client(self) -> PagerDutyRestClient:
        """A new REST client (one per thread: a ``requests`` session is not shared); ConfigError without a token."""
        pd = self.settings.pagerduty
        client = PagerDutyRestClient(
            pd.api_token,
            api_url=pd.rest_url,
            from_email=pd.from_email or None,
            timeout=pd.timeout_seconds,
            clock=self.clock,
        )
        client.pacer = self.rest_pacer  # one pace per process: PagerDuty counts requests per token
        return client

    def _reverse_worker(self) -> ReverseWorker:
        pd = self.settings.pagerduty
        own_user = None
        if pd.api_token.get_secret_value():
            self.rest = self.rest_client()
            if pd.from_email and not pd.from_user_id:  # our REST writes' echoes need the From user's id
                rest, email = self.rest, pd.from_email
                own_user = OwnUser(email, lambda: rest.user_id_by_email(email), self.clock)
        return ReverseWorker(
            self.store,
            self._two_way_rules,
            self.clock,
            parse=parse_event,
            destinations=self._reverse_destinations,
            lookup=self.rest,
            own_user_ids=[pd.from_user_id] if pd.from_user_id else [],
            own_user=own_user,
            batch_size=self.settings.engine.batch_size,
            on_queued=self._reverse_queued,
            dry_run=self.settings.dry_run,
        )

    def _incident_check(self) -> IncidentCheck | None:
        """PagerDuty's REST API asked about quiet open incidents (lost webhooks); needs the API token."""
        pd = self.settings.pagerduty
        if self.rest is None or pd.incident_check_seconds <= 0:
            return None
        # its own client: it runs on the scheduler's thread, the reverse worker on its own
        client, quiet = self.rest_client(), pd.incident_check_quiet_seconds
        return IncidentCheck(self.store, client, incident_event_body, self.clock, quiet_seconds=quiet)

    def check_incidents(self) -> int:
        """One run of the incident check (the scheduler's job; tests); returns the changes stored as news."""
        if self.incident_check is None:
            return 0
        stored = self.incident_check.run_once()
        if stored:
            self.reverse_wake.set()
        return stored

    def _pages_queued(self, rows: int) -> None:
        """The engine queued ``rows`` outbox rows: wake as many idle delivery workers as it takes claims to take
        them (:func:`~sync.delivery.claims_for`: one per claim, not per row, the rest would claim nothing under the
        write lock). A claim that comes back full wakes one more when more may be due
        (``Delivery.more_may_be_due``), so slow sends, claimed a few at a time, still bring in every worker a burst
        needs."""
        self.outbox_wake.wake(claims_for(rows))

    def _reverse_queued(self) -> None:
        """The reverse worker queued ticket updates or incident updates: one worker of each kind looks."""
        self.outbox_wake.wake()
        self.write_back_wake.wake()

    def _two_way_rules(self) -> TwoWayRules:
        rules = self.rule_store.current
        return rules if isinstance(rules, TwoWayRules) else _OneWayRules()

    def _reverse_destinations(self) -> dict[str, Destination]:
        """What renders the reverse worker's actions: each ticketing system's write-back, and every named
        destination (``pagerduty_rest`` for incident updates, once registered in ``DESTINATIONS``)."""
        out = self.destinations()
        for name, build in DESTINATIONS.items():
            out.setdefault(name, build(self))
        return out

    def store_pagerduty_webhook(self, webhook_id: str, event: IncidentEvent, body: bytes) -> bool:
        """Store one verified PagerDuty webhook under ``webhook_id`` (its dedupe key; False: stored before); wakes the
        reverse worker. Runs in the HTTP server's thread pool, before the 202."""
        new = pd_inbox.store_event(
            self.store,
            webhook_id=webhook_id,
            event_id=event.event_id,
            event_type=event.event_type.value,
            incident_id=event.incident_id,
            occurred_at=event.occurred_at,
            received_at=self.clock.now(),
            body=body,
        )
        if new:
            self.reverse_wake.set()
        return new

    def database_unavailable(self, where: str, exc: BaseException) -> str:
        """A database error met answering ``where`` (``/readyz``, ``/admin/status``): its reason in one line,
        redacted, for the answer's JSON; logged once, then at most every :data:`DATABASE_LOG_EVERY_SECONDS` per
        reason with how many answers it stands for (a probe every few seconds is not a line every few seconds),
        never with a traceback: the database is away or not as this version expects, not a bug of ours."""
        reason = _redacted(failure_reason(exc)[:300]) or type(exc).__name__
        statement = failed_statement(exc)
        text = f"{where}: database unavailable ({reason})" + (f" in: {statement}" if statement else "")
        unsaid = self._answer_log.due(text)
        if unsaid is None:
            return reason
        more = f" ({unsaid} more since this line was last logged)" if unsaid else ""
        log.warning("%s; answering 503%s", text, more)
        return reason

    def status_report(self) -> dict[str, Any]:
        """``/admin/status`` and ``ticketpager status``: the store's report and the PagerDuty inbox."""
        return self.store.status().to_json() | {"pagerduty_inbox": pd_inbox.read_inbox_status(self.store).to_json()}

    # -- one-shot operations (CLI) ---------------------------------------------------------------
    def poll_source(self, source: str, on_page: Callable[[Any], None] | None = None) -> Any:
        return poll_once(self.store, self.connector(source), self.clock, on_page=on_page)

    def process_all(self) -> tuple[int, int]:
        """Run the engine and delivery until nothing is due (``poll --once``, tests)."""
        self.engine.release_silences()  # tickets held by a silence that has ended page now
        processed = self.engine.drain() + self.reverse.drain()
        delivery = self.delivery()
        delivered = 0
        for _ in range(100):
            n = delivery.drain()
            delivered += n
            more = self.engine.drain() + self.reverse.drain()
            processed += more
            if not n and not more:
                break
        return processed, delivered

    # -- readiness -------------------------------------------------------------------------------
    def readiness(self, detail: bool = True) -> dict[str, Any]:
        """What ``/readyz`` shows. Without ``detail`` (a probe without the metrics token) a failing source
        is named with the kind of failure only, never the vendor's text."""
        report: dict[str, Any] = {"ready": True, "instance": self.instance}
        problems: dict[str, str] | None = None
        try:
            self.store.ping()
            # the cursors read too: a ping passes on a pooled connection of a role that can no longer log in, on a
            # revoked grant and on a missing schema, and every worker fails all the same
            problems = self.store.permanent_poll_errors()
            report["database"] = "ok"
        except DATABASE_ERRORS as exc:
            report["ready"] = False
            report["database"] = f"unavailable: {self.database_unavailable('/readyz', exc)}"
        rules = self.rule_store.current  # a service never runs without a good rule set (the first load raises)
        report["rules"] = {
            "loaded": True,
            "count": len(rules.names),
            "digest": rules.digest,
            "last_reload_error": _redacted(self.rule_store.last_error),
        }
        if report["rules"]["last_reload_error"]:  # serving the last good set: an edit did not take
            report["degraded"] = True
        if not self.settings.dry_run:
            keys = self.routing_key_problems()  # every page of these rules would be a dead letter
            if keys:
                report["rules"]["routing_key_problems"] = keys
                report["degraded"] = True
        own_user = self.reverse.own_user
        if own_user is not None and own_user.problem and not own_user.user_id:  # the reverse worker writes nothing
            report["pagerduty"] = {"from_user": own_user.problem if detail else "unresolved"}
            report["degraded"] = True
        unnamed = self.unnamed_jira_fields()
        if unnamed:
            report["rules"]["jira_custom_field_names"] = unnamed
            report["degraded"] = True
        if problems is not None:
            if not detail:
                problems = {source: _without_vendor_text(text) for source, text in problems.items()}
            report["sources"] = {"permanent_errors": problems}
            if problems:
                report["degraded"] = True
            # one line per polled connection: one client's expired token shows on its connection only
            report["connections"] = {
                name: {
                    "system": self.connections[name].system,
                    "state": "degraded" if name in problems else "ok",
                }
                for name in self.pollable_sources()
            }
        return report

    # -- dry run and live on one database ------------------------------------------------------------
    def refuse_to_share(self, *, register: bool) -> None:
        """Raise :class:`ConfigError` (one line: ``serve`` and ``poll --once`` exit 2) when this process may not run
        on its database: a dry run where a live instance has work (outbox rows it queued that are pending, rows it
        sent or that became dead letters, or its heartbeat), or a live instance beside a dry-run replica's
        heartbeat. A dry run marks every PagerDuty row it claims sent without sending it, and its engine processes
        whatever changes are stored: beside a live instance it would take that instance's pages, and they would
        never reach PagerDuty. Refusing to start is the one rule that holds for every row and change, older releases'
        included; a dry run gets a database of its own.

        ``register`` (``serve``): write this replica's heartbeat first, saying whether it runs in dry run, and
        remove it again on refusal: two processes starting together each write before they read, so the later
        one sees the earlier. Older releases write no dry-run heartbeat and never refuse: their heartbeat and
        rows count as a live instance's. With ``register`` on SQLite, another replica's recent heartbeat is a warning
        naming it (SQLite takes one process; not a refusal: a killed previous process's heartbeat stays recent for the
        replica timeout, and its restart must come back)."""
        if register:
            self.heartbeat.register()
        now = self.clock.now()
        since = now - timedelta(seconds=self.settings.engine.replica_timeout_seconds)
        with self.store.engine.connect() as conn:
            others = replicas_alive(conn, self.instance, since)
            pending, done = live_rows(conn) if self.settings.dry_run else (0, 0)
        problem = self._sharing_problem(others, pending, done, now)
        if problem is not None:
            if register:
                self.heartbeat.forget()
            raise ConfigError(problem)
        if register and others and self.store.engine.dialect.name == "sqlite":
            log.warning(
                "another ticketpager serve heartbeats on this SQLite database: %s; SQLite takes exactly one process "
                "(several replicas need PostgreSQL): stop the other one, unless it is this service's previous process "
                "that was killed, whose heartbeat goes stale within %g s",
                _named_replicas(others, now),
                self.settings.engine.replica_timeout_seconds,
            )

    def _sharing_problem(self, others: list[Any], pending: int, done: int, now: datetime) -> str | None:
        named = functools.partial(_named_replicas, now=now)
        if not self.settings.dry_run:
            dry = [r for r in others if r["dry_run"]]
            if not dry:
                return None
            return (
                f"refusing to start: replica {named(dry)} runs in dry run on this database and would take this "
                "instance's pages and mark them sent without sending them; stop it or give it a database of its own "
                "(TICKETPAGER_DATABASE_URL), then start this one again"
            )
        live = [r for r in others if not r["dry_run"]]
        found = []
        if pending:
            found.append(f"{pending} outbox row(s) pending that were not queued in dry run")
        if done:
            found.append(f"{done} outbox row(s) sent for real or refused (dead letters)")
        if live:
            found.append(f"live replica {named(live)}")
        if not found:
            return None
        return (
            f"dry run refused: this database holds a live instance's work ({'; '.join(found)}); a dry run would take "
            "its pages and mark them sent without sending them. Give the dry run a database of its own "
            "(TICKETPAGER_DATABASE_URL or --database-url)"
        )

    # -- the long-running service ----------------------------------------------------------------
    def start(self) -> None:
        """Start the writer and every background thread (the HTTP server is run by the caller)."""
        self.writer.start()
        try:
            self.heartbeat.register()  # before the workers: they send only while it is recent
        except DATABASE_ERRORS as exc:  # the heartbeat thread keeps trying
            if not database_fault(exc):
                raise
            log.warning("first heartbeat failed (%s); retrying", failure_reason(exc)[:300])
        self._spawn("heartbeat", self._heartbeat_loop)
        self._spawn("engine", self._engine_loop)
        self._spawn("reverse", self._reverse_loop)
        for group in self._senders():
            for i in range(group.workers):
                worker = self.delivery(f"{group.worker_prefix}{i}", heartbeat=self.heartbeat, kinds=group.kinds)
                loop = functools.partial(self._delivery_loop, worker, group.wakeups)
                self._workers.append((self._spawn(f"{group.thread}-{i}", loop), worker))
        self._spawn("idle-look", self._idle_look_loop)
        pollable = self.pollable_sources()
        spread = [s for s in pollable if not self.connections[s].is_default]  # the file's: started apart
        for source in pollable:
            interval = self.connections[source].settings.poll_interval_seconds
            # after a failure, the next poll at the poll's own pace: each retry calls the vendor's API first
            poll = functools.partial(self._poll_loop, source, spread)
            self._spawn(f"poll-{source}", poll, retry_seconds=max(interval, 1.0))
        self._spawn("scheduler", self._scheduler_loop)
        self.rule_store.start_watching()

    def _senders(self) -> list[_Senders]:
        """The delivery workers by what they send: PagerDuty's and the tickets' apart, so a ticketing system that
        hangs holds up its own notes only; with no ticket workers (``write_back_workers: 0``) PagerDuty's send
        everything."""
        pages = max(self.settings.pagerduty.workers, 1)
        tickets = self.settings.engine.write_back_workers
        if tickets <= 0:
            return [_Senders("delivery", "", pages, None, self.outbox_wake)]
        return [
            _Senders("delivery", "", pages, INCIDENT_KINDS, self.outbox_wake),
            _Senders("write-back", "t", tickets, TICKET_KINDS, self.write_back_wake),
        ]

    def wake_senders(self) -> None:
        """Wake every delivery worker (rows were freed at once: dead letters retried)."""
        self.outbox_wake.set()
        self.write_back_wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.arrivals.stop()
        self.wake_senders()
        self.reverse_wake.set()
        self.rule_store.stop()
        # one bound for all the threads (real time: the OS's join, not the business clock): threads stuck in a
        # send to a hung system wait out their timeouts side by side, not one after another
        deadline = time.monotonic() + STOP_SECONDS
        for thread in self._threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        for thread, worker in self._workers:  # a loop a database error ended while stopping could not hand back
            if not thread.is_alive():
                self._hand_back(worker, thread.name)
        busy = [thread.name for thread in self._threads if thread.is_alive()]
        if busy:  # stuck in a call: what they claimed (and sent unmarked) is taken over once our heartbeat is stale
            log.warning(
                "stopping with %d thread(s) still busy (%s): this replica's heartbeat is left in place, so the other"
                " replicas take over its claims %.0f s after its last beat rather than when the claims expire",
                len(busy), ", ".join(busy), self.settings.engine.replica_timeout_seconds,
            )  # fmt: skip
        else:
            try:  # our claims are handed back: the others need not wait for our heartbeat to go stale
                self.heartbeat.forget()
            except DATABASE_ERRORS as exc:
                if not database_fault(exc):
                    raise
                log.warning("could not remove this replica's heartbeat (%s)", failure_reason(exc)[:300])
        self.writer.stop()

    @staticmethod
    def _hand_back(worker: Delivery, name: str) -> None:
        """Mark what a stopped worker sent and hand back what it claimed (a no-op when its loop already did)."""
        try:
            worker.hand_back()
        except Exception as exc:  # noqa: BLE001 - the stop goes on; they are sent again after the takeover
            log.warning("%s could not mark its last sends (%s)", name, failure_reason(exc)[:300])

    def routing_key_problems(self) -> list[str]:
        """Rules whose routing key cannot be a PagerDuty integration key (32 letters and digits): with a
        placeholder such as the examples' ``dry-run-…`` default, every page would become a dead letter."""
        problems = []
        for rule in self.rule_store.current.spec.rules:
            key = rule.trigger.routing_key
            if not is_integration_key(key):
                problems.append(
                    f"rule '{rule.name}': routing key {mask(key)} is not a 32-character PagerDuty integration key"
                )
        return problems

    def unnamed_jira_fields(self) -> str | None:
        """Why rules reading Jira custom fields by display name cannot work here, if they cannot: the names
        come from Jira's API (``/rest/api/2/field``), which a webhook-only setup has no credentials for."""
        jira = self.settings.connector("jira")
        if not (jira.webhook_configured or self.settings.insecure_webhooks) or self.connector("jira").can_poll:
            return None
        by_name = display_name_fields(self._rule_custom_fields("jira"))
        if not by_name:
            return None
        return (
            f"rules read custom.{by_name[0]}, a Jira custom field by display name, but without "
            "TICKETPAGER_JIRA__URL and an API token the names are unknown: such conditions never match; "
            "name the field by id (custom.customfield_10010) instead"
        )

    def reload_rules(self) -> bool:
        """SIGHUP: reload now (the watcher also reloads on file changes). The last good set stays on error."""
        ok = bool(self.rule_store.reload())
        self._update_rule_metrics()
        return ok

    def _learn_routing_keys(self) -> None:
        """Routing keys live in the rules, not the settings: the redaction learns them as rules load
        (PagerDuty may echo one in a 400; a rule file's error may quote one)."""
        keys = [rule.trigger.routing_key for rule in self.rule_store.current.spec.rules]
        redact.SECRETS.add(key for key in keys if isinstance(key, str))

    def _update_rule_metrics(self) -> None:
        self._learn_routing_keys()  # after every reload (cheap when no key is new)
        store = self.rule_store
        METRICS.rules_loaded.set(len(store.current.names))
        failures = store.reload_failures
        if failures > self._reload_failures_seen:
            METRICS.rules_reload_failures.inc(failures - self._reload_failures_seen)
            self._reload_failures_seen = failures
        METRICS.rules_last_reload_ok.set(0 if store.last_error else 1)

    def _spawn(self, name: str, target: Callable[[], None], *, retry_seconds: float = 1.0) -> threading.Thread:
        guarded = self._guard(name, target, retry_seconds)
        thread = threading.Thread(target=guarded, name=f"ticketpager-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _guard(self, name: str, target: Callable[[], None], retry_seconds: float = 1.0) -> Callable[[], None]:
        """``target`` run until the service stops, restarted ``retry_seconds`` after a failure. While the database
        stays away every worker fails each time: each database error's line is logged once, then at most every
        :data:`DATABASE_LOG_EVERY_SECONDS` with how many restarts it stands for (each one is counted in
        ``ticketpager_worker_restarts_total``)."""
        said = LogThrottle(DATABASE_LOG_EVERY_SECONDS, self.clock.monotonic)  # per database error's text

        def run() -> None:
            while not self.stopping.is_set():
                try:
                    target()
                    return
                except Exception as exc:  # noqa: BLE001 - a worker never dies silently; it restarts
                    database, crash = WORKER_RESTART_REASONS
                    cause = database if database_fault(exc) else crash
                    if cause == database:  # restarting, unreachable, or its schema or grants not as expected
                        statement = failed_statement(exc)
                        text = f"({failure_reason(exc)[:300]})" + (f" in: {statement}" if statement else "")
                        unsaid = said.due(text)
                        if unsaid is not None:
                            more = f" ({unsaid} more restart(s) since this line was last logged)" if unsaid else ""
                            line = "worker %s: database unavailable %s; retrying in %g s%s"
                            log.warning(line, name, text, retry_seconds, more)
                    else:
                        log.exception("worker %s crashed; restarting in %g s", name, retry_seconds)
                    METRICS.worker_restarts.labels(worker_kind(name), cause).inc()
                    self.stopping.wait(retry_seconds)

        return run

    def _idle(self) -> float:
        return self.settings.engine.idle_seconds

    def _stored(self, changes: int) -> None:
        """The webhook writer committed ``changes`` new changes: wake the engine."""
        self.arrivals.add(changes)
        self.wake.set()

    def _engine_loop(self) -> None:
        """Woken by the webhook writer's commits and the pollers, and by the idle look (:meth:`_idle_look_loop`)
        for changes stored by another replica that it did not process (it died, or its engine lags).

        After a wake-up it lets the commits of the next ``ENGINE_COALESCE_SECONDS`` join one batch (less once
        ``ENGINE_GATHER_CHANGES`` have arrived), and after a batch that left nothing claimable behind it waits
        for the next wake-up again rather than claiming the one or two changes stored meanwhile: a batch's fixed
        cost is then shared by every change of the window (issue 19). A backlog is claimed batch after batch.
        """
        coalesce = min(ENGINE_COALESCE_SECONDS, self._idle())
        woken = False
        while not self.stopping.is_set():
            self.wake.clear()
            self.arrivals.reset()
            handled = self.engine.run_once(woken=woken)  # wakes the delivery workers itself if it queued anything
            if handled and self.engine.left_pending:
                continue
            woken = self.wake.wait(WORKER_FALLBACK_SECONDS)
            if woken and coalesce > 0 and not self.stopping.is_set():
                self.arrivals.gather(ENGINE_GATHER_CHANGES, coalesce)  # let the next commits join this batch

    def _delivery_loop(self, delivery: Delivery, group: Wakeups) -> None:
        """One worker: claim and send while rows are due, then sleep on its own event until woken. A batch that
        came back full wakes one more idle worker of its group when more rows may be due (alone on its database,
        the worker claimed its next batch with the marks: when that one is full too): a burst brings them all in,
        and one page wakes one."""
        wake = group.new()
        try:
            self._deliver_until_stopped(delivery, group, wake)
        finally:  # also after an error while stopping: what it sent is marked, what it claimed ahead handed back
            if self.stopping.is_set():
                delivery.hand_back()

    def _deliver_until_stopped(self, delivery: Delivery, group: Wakeups, wake: threading.Event) -> None:
        """Claim and send while rows are due, then sleep on the worker's own event until woken; until stopped.

        Alone on its database, a worker leaves the sends of a batch that was not full to be marked by its next
        claim, in the claim's transaction: it waits for its next wake-up at most until they must be marked
        (:meth:`~sync.delivery.Delivery.marks_due_in`, within 0.25 s), then claims (and so marks) without a look
        first. At low rates a page then costs one write transaction, not a claim and a mark (issue 19). A later
        event of one of those incidents, which waits for its earlier one's mark, goes out within that bound too.
        Otherwise, after a batch that sent anything, the worker looks again at once, as before."""
        woken = False
        while not self.stopping.is_set():
            wake.clear()  # before the claim: a wake-up during it makes the next wait return at once
            limit = delivery.claim_size()  # fewer rows while sends are slow: the others share the burst
            sent = delivery.run_once(limit, stopping=self.stopping.is_set, woken=woken, defer_marks=True)
            woken = False
            due_in = delivery.marks_due_in()
            if sent and (delivery.more_may_be_due or due_in is None):
                if delivery.more_may_be_due:
                    group.wake()
                continue
            woken = group.wait(wake, WORKER_FALLBACK_SECONDS if due_in is None else due_in)
            woken = woken or due_in is not None  # woken: rows are there; sends to mark: the claim marks them

    def _idle_look_loop(self) -> None:
        """The process's one idle look at the database, for work that no wake-up announced: sleep until the next
        outbox row comes due (a retry, a rate-limit hold), at most ``idle_seconds``, then look, on one connection,
        for due rows, pending changes and pending PagerDuty webhooks, and wake whoever has work. So a row queued
        by another replica, freed by an expired claim or taken over from a dead replica is claimed within
        ``idle_seconds`` (plus the claim's own time), and so is a change or a PagerDuty webhook another replica
        stored; what this replica stores or queues itself wakes its workers at once. One thread wakes for all of
        them: each idle wake-up of a thread cost this VM 1-3 CPU-ms, more than its query (issue 19,
        docs/performance.md). The looks share one thread: one that fails (the database is down) restarts it
        within a second (``_guard``), and until then the workers fall back to their own look every
        :data:`WORKER_FALLBACK_SECONDS`.
        PagerDuty's rows and the tickets' are looked at apart (their own workers): notes due but stuck behind a
        hung ticketing system neither wake PagerDuty's workers nor keep the look from sleeping until a page's
        retry."""
        takeover = self.settings.engine.replica_timeout_seconds
        groups = [(next_due_statement(takeover=True, kinds=s.kinds), s.wakeups) for s in self._senders()]
        next_left_look = 0.0  # real time, as the waits: when to look for changes and webhooks left again
        while not self.stopping.is_set():
            now = self.clock.now()
            # a row coming due wakes the look early (a retry, a rate-limit hold's slots): changes and webhooks
            # left by another replica are looked for once per idle_seconds all the same
            look_left = time.monotonic() >= next_left_look
            with self.store.engine.connect() as conn:
                dues = [(next_due(conn, statement, now, takeover), wakeups) for statement, wakeups in groups]
                changes_pending = look_left and pending_changes(conn)
                webhooks_pending = look_left and pd_inbox.pending_in(conn)
            if look_left:
                next_left_look = time.monotonic() + self._idle()
            wait = self._idle()
            for due, wakeups in dues:
                if due is None:
                    continue
                ahead = (due - now).total_seconds()
                if ahead <= 0:  # one worker; it wakes the next if its claim comes back full
                    wakeups.wake()
                else:
                    wait = min(wait, ahead)
            if changes_pending:
                self.wake.set()
            if webhooks_pending:
                self.reverse_wake.set()
            self.stopping.wait(wait)

    def _reverse_loop(self) -> None:
        """The PagerDuty inbox, one replica at a time (a lease: webhooks of one incident are handled in
        order); woken by the webhook's commit, and by the idle look for webhooks another replica stored."""
        lease = self.settings.engine.lease_seconds
        if self.reverse.own_user is not None:  # at start-up, not at the first webhook: readiness tells at once
            self.reverse.own_user.ensure()
        try:
            while not self.stopping.is_set():
                self.reverse_wake.clear()
                if pd_inbox.has_pending(self.store) and self._with_lease("reverse", lease):
                    if self.reverse.run_once():
                        continue
                    if self.reverse.blocked:  # PagerDuty's REST API did not answer: not 5 times a second
                        self.stopping.wait(REVERSE_RETRY_SECONDS)
                        continue
                self.reverse_wake.wait(WORKER_FALLBACK_SECONDS)
        finally:
            self._release_lease("reverse")

    def _heartbeat_loop(self) -> None:
        """One small write every ``engine.heartbeat_seconds``; a database error restarts it (see _guard)."""
        while not self.stopping.is_set():
            self.heartbeat.beat()
            self.stopping.wait(self.settings.engine.heartbeat_seconds)

    def _with_lease(self, name: str, seconds: float) -> bool:
        """Take or renew a singleton job's lease; a dead replica's (stale heartbeat) is taken at once."""
        now = self.clock.now()
        stale_before = now - timedelta(seconds=self.settings.engine.replica_timeout_seconds)
        with self.store.begin() as conn:
            return acquire_lease(conn, name, self.instance, now, seconds, stale_before)

    def _poll_loop(self, source: str, spread: list[str]) -> None:
        """Poll connection ``source`` every poll interval under its own lease (``poll:<connection>``: replicas
        spread the connections between them), starting at its offset so connections do not poll together."""
        interval = self.connections[source].settings.poll_interval_seconds
        lease = max(self.settings.engine.lease_seconds, interval * 2)
        name = f"poll:{source}"
        try:
            self.stopping.wait(poll_offset(source, spread, interval))
            while not self.stopping.is_set():
                if self._with_lease(name, lease):
                    report = poll_once(
                        self.store,
                        self.connector(source),
                        self.clock,
                        keep_going=lambda: not self.stopping.is_set() and self._with_lease(name, lease),
                    )
                    if report.stored:
                        self.wake.set()
                self.stopping.wait(interval)
        finally:
            self._release_lease(name)

    def _release_lease(self, name: str) -> None:
        """Hand a loop's lease back as it ends. When the loop ends on an error (the database away), a failed release
        is left to the lease's expiry: the error in flight, which says what failed first, is the one reported."""
        failing = sys.exc_info()[1] is not None
        try:
            with self.store.begin() as conn:
                release_lease(conn, name, self.instance)
        except Exception:
            if not failing:
                raise

    def _scheduler_loop(self) -> None:
        """Time rules, metrics gauges and retention: singleton jobs under leases."""
        eng = self.settings.engine
        next_recheck = 0.0
        next_prune = 0.0
        check_every = self.settings.pagerduty.incident_check_seconds
        next_check = self.clock.monotonic() + check_every  # not at start: a fleet restarting does not ask at once
        while not self.stopping.is_set():
            now_m = self.clock.monotonic()
            self.update_gauges()
            if now_m >= next_recheck:
                next_recheck = now_m + eng.recheck_interval_seconds
                rules = self.rule_store.current
                if rules.has_time_rules and self._with_lease("recheck", eng.recheck_interval_seconds):
                    if self.engine.recheck():
                        self.outbox_wake.wake()
                # tickets a silence held whose silence has ended (an index range: cheap when there is none)
                if self._with_lease("silences", eng.recheck_interval_seconds) and self.engine.release_silences():
                    self.outbox_wake.wake()
            if self.incident_check is not None and now_m >= next_check:
                next_check = now_m + check_every
                if self._with_lease("incident-check", max(check_every, eng.lease_seconds)):
                    self.check_incidents()
            if now_m >= next_prune:
                next_prune = now_m + 3600
                if self._with_lease("retention", 3600):
                    before = self.clock.now() - timedelta(days=self.settings.retention_days)
                    self.store.prune(before)
                    with self.store.begin() as conn:
                        pd_inbox.prune_events(conn, before)
            self.stopping.wait(self.settings.engine.gauge_interval_seconds)

    def update_gauges(self) -> None:
        """Refresh the gauges read from the database (the scheduler does this every few seconds)."""
        self._update_rule_metrics()
        depth, age = self.store.outbox_depth(self.clock.now())
        METRICS.outbox_depth.set(depth)
        METRICS.outbox_oldest.set(age)
        METRICS.pagerduty_inbox.set(pd_inbox.read_inbox_status(self.store).pending)
        for kind, count in self.store.dead_letter_counts().items():
            METRICS.dead_letters.labels(kind).set(count)
        now = self.clock.now()
        polls = self.store.last_polls()
        pollable = self.pollable_sources()
        for source in {*polls, *pollable}:
            # a source that should poll but never succeeded (bad token from day one) lags since start,
            # so the lag alert fires for it too instead of finding no series at all
            last_success = polls.get(source) or (self.started_at if source in pollable else None)
            if last_success is not None:
                METRICS.poll_lag.labels(source).set(max((now - last_success).total_seconds(), 0.0))


_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")


def worker_kind(name: str) -> str:
    """A worker thread's kind, the ``worker`` label of its restarts, bounded whatever the configuration:
    ``delivery-3`` → ``delivery``, ``write-back-0`` → ``write-back``, ``poll-<connection>`` → ``poll``."""
    if name.startswith("poll-"):
        return "poll"
    base, _, index = name.rpartition("-")
    return base if base and index.isdigit() else name


def _without_vendor_text(error: str) -> str:
    """A stored poll error as an unauthenticated probe may see it: the HTTP status, never the body."""
    status = _HTTP_STATUS.search(error)
    what = f"refused (HTTP {status.group(1)})" if status else "failed permanently"
    return f"last poll {what}; details in /admin/status (with the metrics token) or 'ticketpager status'"


def _named_replicas(rows: list[Any], now: datetime) -> str:
    """Replicas (``replicas_alive`` rows) as a log line names them: instance and heartbeat age."""
    return ", ".join(
        f"{r['instance']} (heartbeat {max((now - r['heartbeat_at']).total_seconds(), 0.0):.0f} s ago)" for r in rows
    )


def _redacted(text: str | None) -> str | None:
    return redact.redact(text) if text else text
