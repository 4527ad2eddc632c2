"""Prometheus metrics, one registry for the process. Label values are bounded (sources, actions, rule
names from the rule files, fixed reasons) — never ticket ids or anything secret.

The registry is our own (not prometheus_client's default one, which other libraries may fill), so the
process collector and ``ticketpager_build_info`` are registered here explicitly. ``_created`` series are
off: one per counter and histogram child (71 on a fresh service), read by no alert or dashboard."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)

from kernel.errors import Kind
from kernel.model import EventAction

disable_created_metrics()  # process-wide in prometheus_client; read when a scrape is rendered


def package_version() -> str:
    try:
        return version("ticketpager")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds …
        self.build = Info("ticketpager_build", "The running ticketpager and Python versions (value 1)", registry=r)
        self.build.info({"version": package_version(), "python_version": platform.python_version()})
        self.webhooks = Counter(
            "ticketpager_webhooks_total", "Webhook requests by source and outcome", ["source", "outcome"], registry=r
        )
        self.changes_received = Counter(
            "ticketpager_changes_received_total",
            "Ticket changes received by source, origin (webhook/poll/recheck) and outcome (stored/duplicate)",
            ["source", "origin", "outcome"],
            registry=r,
        )
        self.changes_processed = Counter(
            "ticketpager_changes_processed_total",
            "Changes processed by the engine by source and outcome "
            "(paged, silenced, no_action, stale, same_version, failed)",
            ["source", "outcome"],
            registry=r,
        )
        self.rule_matches = Counter(
            "ticketpager_rule_events_total", "Events planned per rule and action", ["rule", "action"], registry=r
        )
        self.events = Counter(
            "ticketpager_events_total",
            "PagerDuty events by action and outcome (sent, retry, unknown, dead, dry_run, rate_limited)",
            ["action", "outcome"],
            registry=r,
        )
        self.write_backs = Counter(
            "ticketpager_write_backs_total",
            "Ticket write-backs by source and outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.outbox_depth = Gauge("ticketpager_outbox_pending", "Outbox rows waiting to be sent", registry=r)
        self.outbox_oldest = Gauge(
            "ticketpager_outbox_oldest_age_seconds", "Age of the oldest pending outbox row", registry=r
        )
        self.dead_letters = Gauge(
            "ticketpager_dead_letters",
            "Outbox rows in the dead-letter state, by kind (event: a page; writeback: a note on a ticket)",
            ["kind"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "ticketpager_delivery_latency_seconds",
            "From change received to PagerDuty 202",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.webhook_commit = Histogram(
            "ticketpager_webhook_commit_seconds",
            "Group commits of webhook changes, from taking the batch to durable (mostly the disk's flush)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.engine_batch_changes = Histogram(
            "ticketpager_engine_batch_changes",
            "Changes decided by one engine transaction (its fixed cost is shared by them: issue 19)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.webhook_commit_requests = Histogram(
            "ticketpager_webhook_commit_requests",
            "Webhook requests stored by one group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.poll_lag = Gauge(
            "ticketpager_poll_lag_seconds", "Seconds since the last successful poll per source", ["source"], registry=r
        )
        self.poll_errors = Counter(
            "ticketpager_poll_errors_total", "Poll failures by source and kind", ["source", "kind"], registry=r
        )
        self.worker_restarts = Counter(
            "ticketpager_worker_restarts_total",
            "Background workers restarted after a failure, by worker (engine, delivery, ...) and reason"
            " (database, crash)",
            ["worker", "reason"],
            registry=r,
        )
        self.rules_reload_failures = Counter(
            "ticketpager_rules_reload_failures_total", "Rule reloads rejected (last good set kept)", registry=r
        )
        self.rules_last_reload_ok = Gauge(
            "ticketpager_rules_last_reload_ok",
            "1 if the last rule (re)load validated, 0 if it was rejected",
            registry=r,
        )
        self.rules_loaded = Gauge("ticketpager_rules_loaded", "Rules in the active rule set", registry=r)
        self.http_refused = Counter(
            "ticketpager_http_refused_total",
            "Connections or requests refused at the HTTP edge, by reason (ticketpager/edge.py)",
            ["reason"],
            registry=r,
        )
        # the way back from PagerDuty (issue 16)
        self.pagerduty_webhooks = Counter(
            "ticketpager_pagerduty_webhooks_total",
            "PagerDuty v3 webhook requests by event type and outcome (accepted, duplicate, ignored, rejected_*)",
            ["event_type", "outcome"],
            registry=r,
        )
        self.pagerduty_webhooks_processed = Counter(
            "ticketpager_pagerduty_events_processed_total",
            "PagerDuty webhooks handled by the reverse worker by event type and outcome",
            ["event_type", "outcome"],
            registry=r,
        )
        self.echoes_suppressed = Counter(
            "ticketpager_echoes_suppressed_total",
            "PagerDuty webhooks that were our own action coming back (nothing written back), by event type",
            ["event_type"],
            registry=r,
        )
        self.incident_checks = Counter(
            "ticketpager_incident_checks_total",
            "Open incidents the incident check asked PagerDuty's REST API about, by outcome (same: PagerDuty agrees; "
            "applied: a status change no webhook told was stored as news; failed: the API did not answer)",
            ["outcome"],
            registry=r,
        )
        self.pagerduty_inbox = Gauge(
            "ticketpager_pagerduty_inbox_pending", "PagerDuty webhooks stored and not yet handled", registry=r
        )


# The outcomes alerts look for, created at zero when a source is set up: a counter series that first
# appears with the value 1 has no earlier sample, so increase()/rate() would miss that first failure.
WEBHOOK_FAILURES = ("rejected_400", "rejected_401", "too_large", "unparseable", "unavailable", "store_failed", "error")
POLL_ERROR_KINDS = (*(kind.value for kind in Kind), "bug")  # "bug": a poll that raised something unclassified
EVENT_FAILURES = ("retry", "unknown", "dead")
EVENT_ACTIONS = (*(action.value for action in EventAction), "writeback")


#: why a background worker restarted (``ticketpager_worker_restarts_total``): ``database``, unreachable or its schema
#: or grants not as expected (:func:`sync.db.database_fault`); ``crash``, anything else (a bug, logged with its
#: traceback)
WORKER_RESTART_REASONS = ("database", "crash")
#: the ``worker`` label's values: the service's background threads by kind (``ticketpager.service.worker_kind``)
WORKER_KINDS = ("engine", "delivery", "write-back", "reverse", "poll", "heartbeat", "idle-look", "scheduler")


def zero_series(sources: list[str] | tuple[str, ...]) -> None:
    """Create the failure series of these sources (and of PagerDuty deliveries) at 0."""
    for source in sources:
        for outcome in WEBHOOK_FAILURES:
            METRICS.webhooks.labels(source, outcome)
        for kind in POLL_ERROR_KINDS:
            METRICS.poll_errors.labels(source, kind)
        METRICS.changes_processed.labels(source, "failed")
    for action in EVENT_ACTIONS:
        for outcome in EVENT_FAILURES:
            METRICS.events.labels(action, outcome)
    METRICS.incident_checks.labels("applied")  # the lost-webhooks alert's series
    for worker in WORKER_KINDS:  # the restarting-workers alerts' series
        for reason in WORKER_RESTART_REASONS:
            METRICS.worker_restarts.labels(worker, reason)


METRICS = Metrics()
