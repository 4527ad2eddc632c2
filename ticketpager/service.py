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
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from connectors import CONNECTORS, connector_class
from connectors.base import Connector, NoteDestination
from connectors.jira_normalize import display_name_fields
from connectors.pagerduty import PagerDutyDestination, PagerDutySink, RateLimiter
from kernel import redact
from kernel.clock import Clock, SystemClock
from kernel.model import Destination
from kernel.redact import mask
from kernel.retry import RetryPolicy
from rules import RuleStore
from sync.db import failure_reason
from sync.delivery import Delivery, next_due, next_due_statement, send_timeout
from sync.engine import Engine
from sync.heartbeat import Heartbeat
from sync.ingest import Writer
from sync.metrics import METRICS, zero_series
from sync.poller import poll_once
from sync.store import Store, acquire_lease, release_lease
from ticketpager.secretfiles import EnvWithSecretFiles
from ticketpager.settings import Settings
from ticketpager.wakeups import Wakeups

log = logging.getLogger("ticketpager.service")

#: After a wake-up the engine lets the webhook commits of the next few milliseconds join its batch: one claim
#: for several changes instead of one per group commit (issue 19, docs/performance.md). Capped by the idle wait.
ENGINE_COALESCE_SECONDS = 0.02

#: An idle delivery worker waits for a wake-up (the engine queued rows, the delivery timer saw a row come due)
#: and looks by itself only this often: a safety net should a wake-up ever be missed, not a poll.
WORKER_FALLBACK_SECONDS = 30.0

#: "integration key … a 32 character" string (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/)
INTEGRATION_KEY = re.compile(r"[A-Za-z0-9]{32}")


def _pagerduty(svc: Service) -> Destination:
    # requests sessions are not shared between threads: each delivery worker gets its own sink
    return PagerDutyDestination(svc._injected_sink or svc._new_sink(), svc.limiter)


#: The destinations incident actions can go to, by name: how the application builds each (per delivery
#: worker). Adding a destination = its module + one line here. Ticket notes go to each source's write-back
#: (:class:`~connectors.base.NoteDestination`, added for every connector).
DESTINATIONS: dict[str, Callable[[Service], Destination]] = {
    "pagerduty": _pagerduty,
}


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
    ) -> None:
        self.settings = settings
        redact.configure(settings)  # every error text this process stores, shows or logs is redacted
        self.clock = clock or SystemClock()
        self.store = store or Store(settings.database_url)
        self.rule_store = rule_store if rule_store is not None else load_rule_store(settings, self.clock)
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started_at = self.clock.now()  # a source that never polled successfully lags from here
        zero_series(tuple(CONNECTORS))  # failure counters exist from the start, so alerts see the first one
        self._connectors: dict[str, Connector] = dict(connectors or {})
        self._injected: dict[str, Connector] = dict(connectors or {})
        self._write_back_connectors: dict[str, Connector] = {}
        self._pollable: list[str] | None = None
        self._connector_lock = threading.Lock()
        self.wake = threading.Event()  # set by the webhook writer and pollers: changes are waiting
        # every delivery worker's own wake-up: the engine (or a recheck) queued rows, or the timer saw one due
        self.outbox_wake = Wakeups()
        self.stopping = threading.Event()
        self.writer = Writer(self.store, on_commit=self.wake.set)
        pd = settings.pagerduty
        self._injected_sink = sink  # tests may pass one; otherwise each delivery worker gets its own session
        self.sink = sink or self._new_sink()
        self.incidents = incidents  # the destination (in DESTINATIONS) of incident actions
        self.policy = RetryPolicy(
            max_attempts=pd.max_attempts,
            max_total_seconds=pd.max_retry_seconds,
            base_seconds=pd.backoff_base_seconds,
            cap_seconds=pd.backoff_cap_seconds,
            max_retry_after_seconds=pd.max_retry_seconds,
            later_uses_attempts=False,  # while PagerDuty says "later" only the operator's time budget ends it
            budget_name="retry budget max_retry_seconds",
        )
        self.limiter = RateLimiter(  # per routing key across the replicas: theirs are read from the outbox
            pd.rate_limit_per_minute,
            self.clock,
            elsewhere=lambda key, since: self.store.sends_elsewhere(key, since, self.instance),
            # connect + read of the longest timeout a retry may use: the longest one POST can be in flight
            send_seconds=2 * send_timeout(pd.timeout_seconds, 1_000, settings.engine.claim_seconds),
        )
        self.engine = Engine(
            self.store,
            lambda: self.rule_store.current,
            self.clock,
            incidents=DESTINATIONS[incidents](self),
            batch_size=settings.engine.batch_size,
            on_queued=self.outbox_wake.set,  # a batch that queued nothing wakes no delivery worker
        )
        self.heartbeat = Heartbeat(
            self.store,
            self.clock,
            self.instance,
            interval=settings.engine.heartbeat_seconds,
            timeout=settings.engine.replica_timeout_seconds,
        )
        self._threads: list[threading.Thread] = []
        self._reload_failures_seen = 0
        self._learn_routing_keys()

    def __repr__(self) -> str:
        return f"<Service {self.instance}>"

    # -- connectors ------------------------------------------------------------------------------
    def connector(self, source: str) -> Connector:
        found = self._connectors.get(source)  # every webhook asks: no lock once it exists
        if found is not None:
            return found
        with self._connector_lock:
            if source not in self._connectors:
                cls = connector_class(source)
                self._connectors[source] = cls(
                    self.settings.connector(source),
                    clock=self.clock,
                    insecure=self.settings.insecure_webhooks,
                    rule_custom_fields=functools.partial(self._rule_custom_fields, source),
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
        for source in CONNECTORS:
            if not self.settings.connector(source).enabled:
                continue
            if self.connector(source).can_poll:
                out.append(source)
            else:
                log.warning("%s is enabled but has no API credentials: webhooks only, no polling", source)
        return out

    def write_back_sources(self) -> dict[str, bool]:
        if self.settings.dry_run:
            return {}
        return {s: self.settings.connector(s).write_back for s in self.pollable_sources()}

    def _new_sink(self) -> PagerDutySink:
        pd = self.settings.pagerduty
        return PagerDutySink(pd.url, timeout=pd.timeout_seconds, clock=self.clock)

    def destinations(self) -> dict[str, Destination]:
        """One delivery worker's destinations: the incident destination and every source's write-back."""
        out: dict[str, Destination] = {
            source: NoteDestination(source, functools.partial(self._write_back_connector, source))
            for source in CONNECTORS
        }
        out[self.incidents] = DESTINATIONS[self.incidents](self)
        return out

    def _write_back_connector(self, source: str) -> Connector:
        """The connector delivery workers write notes with: one attempt per call, because the outbox
        retries with backoff — a connector sleeping through its own retries would stall the worker (and
        the pages queued behind the note) and let its claims expire."""
        with self._connector_lock:
            if source in self._injected:
                return self._injected[source]
            if source not in self._write_back_connectors:
                self._write_back_connectors[source] = connector_class(source)(
                    self.settings.connector(source),
                    clock=self.clock,
                    retry=RetryPolicy(max_attempts=1),
                    insecure=self.settings.insecure_webhooks,
                )
            return self._write_back_connectors[source]

    def delivery(self, worker: str = "0", *, heartbeat: Heartbeat | None = None) -> Delivery:
        """A delivery worker. It takes over the claims of replicas whose heartbeat stopped; ``heartbeat``
        (this process's, when it runs) keeps it from sending while this replica may be presumed dead."""
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
            heartbeat=heartbeat,
        )

    # -- one-shot operations (CLI) ---------------------------------------------------------------
    def poll_source(self, source: str, on_page: Callable[[Any], None] | None = None) -> Any:
        return poll_once(self.store, self.connector(source), self.clock, on_page=on_page)

    def process_all(self) -> tuple[int, int]:
        """Run the engine and delivery until nothing is due (``poll --once``, tests)."""
        processed = self.engine.drain()
        delivery = self.delivery()
        delivered = 0
        for _ in range(100):
            n = delivery.drain()
            delivered += n
            more = self.engine.drain()
            processed += more
            if not n and not more:
                break
        return processed, delivered

    # -- readiness -------------------------------------------------------------------------------
    def readiness(self, detail: bool = True) -> dict[str, Any]:
        """What ``/readyz`` shows. Without ``detail`` (a probe without the metrics token) a failing source
        is named with the kind of failure only, never the vendor's text."""
        report: dict[str, Any] = {"ready": True, "instance": self.instance}
        try:
            self.store.ping()
            report["database"] = "ok"
        except Exception as exc:  # noqa: BLE001
            report["ready"] = False
            report["database"] = f"unreachable: {type(exc).__name__}"
        rules = getattr(self.rule_store, "current", None)
        report["rules"] = {
            "loaded": rules is not None,
            "count": len(getattr(rules, "names", ()) or ()),
            "digest": getattr(rules, "digest", None),
            "last_reload_error": _redacted(getattr(self.rule_store, "last_error", None)),
        }
        if rules is None:
            report["ready"] = False
        else:
            if report["rules"]["last_reload_error"]:  # serving the last good set: an edit did not take
                report["degraded"] = True
            if not self.settings.dry_run:
                keys = self.routing_key_problems()  # every page of these rules would be a dead letter
                if keys:
                    report["rules"]["routing_key_problems"] = keys
                    report["degraded"] = True
            unnamed = self.unnamed_jira_fields()
            if unnamed:
                report["rules"]["jira_custom_field_names"] = unnamed
                report["degraded"] = True
        if report["database"] == "ok":
            problems = self.store.permanent_poll_errors()
            if not detail:
                problems = {source: _without_vendor_text(text) for source, text in problems.items()}
            report["sources"] = {"permanent_errors": problems}
            if problems:
                report["degraded"] = True
        return report

    # -- the long-running service ----------------------------------------------------------------
    def start(self) -> None:
        """Start the writer and every background thread (the HTTP server is run by the caller)."""
        self.writer.start()
        try:
            self.heartbeat.register()  # before the workers: they send only while it is recent
        except (OperationalError, InterfaceError) as exc:  # the heartbeat thread keeps trying
            log.warning("first heartbeat failed (%s); retrying", failure_reason(exc)[:300])
        self._spawn("heartbeat", self._heartbeat_loop)
        self._spawn("engine", self._engine_loop)
        for i in range(max(self.settings.pagerduty.workers, 1)):
            worker = self.delivery(str(i), heartbeat=self.heartbeat)
            self._spawn(f"delivery-{i}", functools.partial(self._delivery_loop, worker, self.outbox_wake.new()))
        self._spawn("delivery-timer", self._delivery_timer_loop)
        for source in self.pollable_sources():
            self._spawn(f"poll-{source}", functools.partial(self._poll_loop, source))
        self._spawn("scheduler", self._scheduler_loop)
        self.rule_store.start_watching()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.outbox_wake.set()
        self.rule_store.stop()
        for thread in self._threads:
            thread.join(timeout=15)
        try:  # our claims are handed back: the others need not wait for our heartbeat to go stale
            self.heartbeat.forget()
        except (OperationalError, InterfaceError) as exc:
            log.warning("could not remove this replica's heartbeat (%s)", failure_reason(exc)[:300])
        self.writer.stop()

    def routing_key_problems(self) -> list[str]:
        """Rules whose routing key cannot be a PagerDuty integration key (32 letters and digits): with a
        placeholder such as the examples' ``dry-run-…`` default, every page would become a dead letter."""
        problems = []
        for rule in self.rule_store.current.spec.rules:
            key = rule.trigger.routing_key
            if not INTEGRATION_KEY.fullmatch(key):
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

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=self._guard(name, target), name=f"ticketpager-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self.stopping.is_set():
                try:
                    target()
                    return
                except (OperationalError, InterfaceError) as exc:  # the database is restarting or unreachable
                    reason = failure_reason(exc)[:300]
                    log.warning("worker %s: database unavailable (%s); retrying in 1 s", name, reason)
                    self.stopping.wait(1.0)
                except Exception:  # noqa: BLE001 - a worker never dies silently; it restarts
                    log.exception("worker %s crashed; restarting in 1 s", name)
                    self.stopping.wait(1.0)

        return run

    def _idle(self) -> float:
        return self.settings.engine.idle_seconds

    def _engine_loop(self) -> None:
        """Woken by the webhook writer's commits and the pollers; looks by itself every ``idle_seconds`` only
        for changes stored by another replica that it did not process (it died, or its engine lags)."""
        coalesce = min(ENGINE_COALESCE_SECONDS, self._idle())
        while not self.stopping.is_set():
            self.wake.clear()
            if self.engine.run_once():  # wakes the delivery workers itself if it queued anything
                continue
            if self.wake.wait(self._idle()) and coalesce > 0:
                self.stopping.wait(coalesce)  # let the next commits join this batch

    def _delivery_loop(self, delivery: Delivery, wake: threading.Event) -> None:
        """One worker: claim and send while rows are due, then sleep on its own event until woken."""
        while not self.stopping.is_set():
            wake.clear()  # before the claim: a wake-up during it makes the next wait return at once
            if delivery.run_once(stopping=self.stopping.is_set):
                continue
            wake.wait(WORKER_FALLBACK_SECONDS)

    def _delivery_timer_loop(self) -> None:
        """The one idle look at the outbox for all of this process's workers: sleep until the next row comes due
        (a retry, a rate-limit hold), at most ``idle_seconds``, and wake the workers when one is due. So a row
        queued by another replica, freed by an expired claim or taken over from a dead replica is claimed here
        within ``idle_seconds`` (plus the claim's own time), one queued by this replica's engine at once."""
        takeover = self.settings.engine.replica_timeout_seconds
        statement = next_due_statement(takeover=True)
        while not self.stopping.is_set():
            now = self.clock.now()
            due = next_due(self.store, statement, now, takeover)
            wait = self._idle()
            if due is not None:
                ahead = (due - now).total_seconds()
                if ahead <= 0:
                    self.outbox_wake.set()
                else:
                    wait = min(wait, ahead)
            self.stopping.wait(wait)

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

    def _poll_loop(self, source: str) -> None:
        interval = self.settings.connector(source).poll_interval_seconds
        lease = max(self.settings.engine.lease_seconds, interval * 2)
        name = f"poll:{source}"
        try:
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
            with self.store.begin() as conn:
                release_lease(conn, name, self.instance)

    def _scheduler_loop(self) -> None:
        """Time rules, metrics gauges and retention: singleton jobs under leases."""
        eng = self.settings.engine
        next_recheck = 0.0
        next_prune = 0.0
        while not self.stopping.is_set():
            now_m = self.clock.monotonic()
            self.update_gauges()
            if now_m >= next_recheck:
                next_recheck = now_m + eng.recheck_interval_seconds
                rules = self.rule_store.current
                if rules.has_time_rules and self._with_lease(
                    "recheck", eng.recheck_interval_seconds
                ):
                    if self.engine.recheck():
                        self.outbox_wake.set()
            if now_m >= next_prune:
                next_prune = now_m + 3600
                if self._with_lease("retention", 3600):
                    self.store.prune(self.clock.now() - timedelta(days=self.settings.retention_days))
            self.stopping.wait(self.settings.engine.gauge_interval_seconds)

    def update_gauges(self) -> None:
        """Refresh the gauges read from the database (the scheduler does this every few seconds)."""
        self._update_rule_metrics()
        depth, age = self.store.outbox_depth(self.clock.now())
        METRICS.outbox_depth.set(depth)
        METRICS.outbox_oldest.set(age)
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


def _without_vendor_text(error: str) -> str:
    """A stored poll error as an unauthenticated probe may see it: the HTTP status, never the body."""
    status = _HTTP_STATUS.search(error)
    what = f"refused (HTTP {status.group(1)})" if status else "failed permanently"
    return f"last poll {what}; details in /admin/status (with the metrics token) or 'ticketpager status'"


def _redacted(text: str | None) -> str | None:
    return redact.redact(text) if text else text
