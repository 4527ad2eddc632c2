"""The incident check: PagerDuty's REST API asked about open incidents that had no news for a while, so a status
change whose webhook was lost still reaches the ticket.

PagerDuty retries a webhook that failed with a timeout, a 5xx or a 429 for up to 48 hours, in order per incident,
but drops it on any other 4xx and on most TLS errors, and disables a subscription after repeated drops
(:data:`DOC_BEHAVIOR`). A rotated secret we did not get, or a proxy answering 403, then loses every resolve: the
ticket stays open behind a resolved incident, and the link, still open, keeps the ticket from paging again.

Per run (one replica at a time, under the ``incident-check`` lease): up to ``batch`` incidents of open links with
no news and no check for ``quiet_seconds``, the least recently checked first. For each, ``GET /incidents/{id}``
(``last_status_change_at`` / ``_by``). A status the link has not followed (resolved; acknowledged while the link
says triggered), changed after the newest state news applied, is stored in the PagerDuty inbox as the event a
webhook would have carried (its id starts with :data:`kernel.incidents.RECONCILED_EVENT_PREFIX`, the same for every
check of that change, so it is stored once).
The reverse worker then handles it like any webhook: link state, echo rules, the rules' write-back, the decision
log. If the lost webhook arrives after all, the reverse worker knows the change was applied and writes nothing
again (``incidents.reconciled_status`` / ``reconciled_at``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from kernel.clock import Clock
from kernel.errors import RetryableError, TicketpagerError
from kernel.incidents import (
    DOC_BEHAVIOR,
    RECONCILED_EVENT_PREFIX,
    Agent,
    EventType,
    IncidentEvent,
    IncidentStatus,
)
from kernel.model import IncidentState
from kernel.ports import IncidentStatusReader
from kernel.redact import redact
from sync.metrics import METRICS
from sync.repos import incidents as repo
from sync.store import Store

log = logging.getLogger("ticketpager.reconcile")

__all__ = ["CHECK_BATCH", "DOC_BEHAVIOR", "IncidentCheck"]

#: incidents asked about per run at most (the REST client paces itself below PagerDuty's rate limit)
CHECK_BATCH = 50

#: (PagerDuty's status now, the link's state) → the event that would have told it. Not "triggered" while the link
#: says acknowledged: PagerDuty triggers an incident again when it is delegated (its webhook is the delegation,
#: and the new on-call must be paged, not acknowledged for), and an acknowledge of ours still queued (PagerDuty
#: down) leaves the link ahead of PagerDuty; its ``last_status_change_at`` is then only ``updated_at``
_NEWS: dict[tuple[str, IncidentState], EventType] = {
    ("resolved", IncidentState.TRIGGERED): EventType.RESOLVED,
    ("resolved", IncidentState.ACKNOWLEDGED): EventType.RESOLVED,
    ("acknowledged", IncidentState.TRIGGERED): EventType.ACKNOWLEDGED,
}
#: a run's bound (the clock's monotonic seconds): what is left waits for the next run, so the scheduler's
#: other jobs are not held up
RUN_SECONDS = 60.0
#: an incident PagerDuty no longer answers for (404: deleted, or merged into another) is asked again after a day
GONE_RECHECK = timedelta(days=1)


class IncidentCheck:
    """``run_once`` checks one batch and returns how many changes it stored as news (the caller wakes the
    reverse worker)."""

    def __init__(
        self,
        store: Store,
        reader: IncidentStatusReader,
        encode: Callable[[IncidentEvent], bytes],
        clock: Clock,
        *,
        quiet_seconds: float,
        batch: int = CHECK_BATCH,
        run_seconds: float = RUN_SECONDS,
    ) -> None:
        self.store = store
        self.reader = reader
        self.encode = encode  # the webhook body of an event (connectors.pagerduty_webhooks.incident_event_body)
        self.clock = clock
        self.quiet = timedelta(seconds=quiet_seconds)
        self.batch = batch
        self.run_seconds = run_seconds

    def run_once(self) -> int:
        now = self.clock.now()
        with self.store.engine.connect() as conn:
            due = repo.incidents_to_check(conn, now - self.quiet, self.batch)
        stored = 0
        until = self.clock.monotonic() + self.run_seconds
        for item in due:
            if self.clock.monotonic() > until:
                break
            try:
                status = self.reader.incident_status(item.incident_id)
            except RetryableError as exc:  # PagerDuty busy or away: the rest of the batch waits for the next run
                METRICS.incident_checks.labels("failed").inc()
                log.warning("incident check: PagerDuty did not answer (%s); trying again next run", redact(str(exc)))
                break
            except TicketpagerError as exc:  # 404: the incident is gone (deleted, merged); 401/403: the token
                METRICS.incident_checks.labels("failed").inc()
                log.warning("incident check of %s failed: %s", item.incident_id[:64], redact(str(exc)))
                self._checked(item.incident_id, now + GONE_RECHECK if exc.status == 404 else now)
                continue
            event = _news(item, status, now)
            self._checked(item.incident_id, now)
            if event is None:
                METRICS.incident_checks.labels("same").inc()
                continue
            new = repo.store_event(
                self.store,
                webhook_id=event.event_id,
                event_id=event.event_id,
                event_type=event.event_type.value,
                incident_id=event.incident_id,
                occurred_at=event.occurred_at,
                received_at=now,
                body=self.encode(event),
            )
            if not new:  # told by an earlier run already (it waits in the inbox, or failed there)
                continue
            stored += 1
            METRICS.incident_checks.labels("applied").inc()
            log.warning(
                "PagerDuty incident %s is %s (since %s) but no webhook said so: applying it. Check the webhook "
                "subscription (ticketpager pagerduty ping)",
                item.incident_id[:64],
                status.incident.status[:16],
                event.occurred_at.isoformat(),
            )
        return stored

    def _checked(self, incident_id: str, now: datetime) -> None:
        with self.store.begin() as conn:
            repo.mark_checked(conn, incident_id, now)


def _change_id(incident_id: str, status: str, at: datetime) -> str:
    """The same for every check of one change (so it is stored once), short as PagerDuty's own event ids."""
    return hashlib.sha256(f"{incident_id}\0{status}\0{at.isoformat()}".encode()).hexdigest()[:26]


def _news(item: repo.ToCheck, status: IncidentStatus, now: datetime) -> IncidentEvent | None:
    """The event that would have told the link what PagerDuty has now; None when the link follows it, or when
    the change is not newer than the state news applied (that news is newer than what the API said)."""
    event_type = _NEWS.get((status.incident.status, item.link_state))
    if event_type is None:
        return None
    at = status.changed_at or now
    if item.moved_at is not None and at <= item.moved_at:
        return None
    by = status.changed_by
    return IncidentEvent(
        event_id=RECONCILED_EVENT_PREFIX + _change_id(item.incident_id, status.incident.status, at),
        event_type=event_type,
        occurred_at=at,
        incident_id=item.incident_id,
        incident_summary=status.incident.title,
        agent=Agent(by.id, by.type, by.summary) if by is not None else None,
        incident=status.incident,
    )
