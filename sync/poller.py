"""One poll cycle of one connection (an instance of a source system): read pages from the connector, store
each page with its cursor (keyed by the connection's name: a system's default connection is named after it).

The cursor is saved in the same transaction as the page's changes, so it never runs ahead of stored
data; a failure records the error (``status``, ``/readyz``) and leaves the cursor where it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from kernel.clock import Clock
from kernel.errors import TicketpagerError
from kernel.model import unencodable_reason, unstorable_reason
from kernel.ports import Source
from sync.db import database_fault
from sync.metrics import METRICS
from sync.repos.changes import insert_changes
from sync.repos.cursors import load_cursor, record_poll_error, save_cursor
from sync.store import Store

log = logging.getLogger("ticketpager.poller")


@dataclass
class PollReport:
    source: str
    pages: int = 0
    seen: int = 0
    stored: int = 0
    error: str | None = None
    error_kind: str | None = None


def poll_once(
    store: Store,
    connector: Source,
    clock: Clock,
    *,
    lookback: timedelta | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    on_page: Callable[[PollReport], None] | None = None,
) -> PollReport:
    source = connector.connection  # the default connection is named after its system: today's cursor key
    report = PollReport(source)
    with store.begin() as conn:
        cursor = load_cursor(conn, source)
    try:
        if cursor is None:  # first poll of this source: the connector's look-back setting
            since = lookback or timedelta(seconds=connector.settings.lookback_seconds)
            cursor = dict(connector.start_cursor(clock.now() - since))
        for page in connector.poll(cursor):
            storable = []
            for received in page.changes:
                change = received.in_connection(source)  # tickets carry the connection they were read through
                problem = unstorable_reason(change) or unencodable_reason(change)
                if problem is None:
                    storable.append(change)
                    continue
                log.error(
                    "poll of %s: skipped ticket %r that cannot be stored (%s)", source, change.ticket.key[:80], problem
                )
                METRICS.changes_received.labels(source, "poll", "unstorable").inc()
            with store.begin() as conn:
                new = insert_changes(conn, storable)
                save_cursor(conn, source, page.cursor, clock.now())
            if page.malformed:  # each one logged by the connector with its reason
                METRICS.changes_received.labels(source, "poll", "malformed").inc(page.malformed)
            report.pages += 1
            report.seen += len(page.changes)
            report.stored += new
            METRICS.changes_received.labels(source, "poll", "stored").inc(new)
            METRICS.changes_received.labels(source, "poll", "duplicate").inc(len(storable) - new)
            if on_page:
                on_page(report)
            if not keep_going():
                break
        METRICS.poll_lag.labels(source).set(0)
    except TicketpagerError as exc:
        report.error, report.error_kind = str(exc), exc.kind.value
    except Exception as exc:  # noqa: BLE001 - a connector bug is reported, never crashes the service
        if database_fault(exc):
            raise  # ours, not the connector's: the failed page was not stored, the cursor stays at the last that was
        log.exception("poll of %s failed unexpectedly", source)
        report.error, report.error_kind = f"{type(exc).__name__}: {exc}", "bug"
    if report.error:
        log.error("poll of %s failed (%s): %s", source, report.error_kind, report.error)
        METRICS.poll_errors.labels(source, report.error_kind or "bug").inc()
        with store.begin() as conn:
            record_poll_error(conn, source, report.error, report.error_kind or "bug", clock.now())
    return report
