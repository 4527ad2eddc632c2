"""The PagerDuty sink: build Events API v2 bodies within PagerDuty's limits, and ``send`` them.

Building is pure (:func:`build_event`) so ``rules test`` shows the exact body that would be sent; sending
(:class:`PagerDutySink`) is one POST classified through :data:`STATUS_TABLE` — no retries here, the
delivery worker owns them. :class:`RateLimiter` spaces events per routing key instead of provoking 429s.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests

from sync.clock import Clock
from sync.errors import Kind, PermanentError, StatusRule, StatusTable, classify_status, network_error
from sync.lifecycle import DEDUP_KEY_MAX, dedup_key_for
from sync.model import SEVERITIES, EventAction, PlannedEvent, Ticket
from sync.redact import redact

log = logging.getLogger("ticketpager.pagerduty")

DOC_TRIGGER = "https://developer.pagerduty.com/docs/events-api-v2/trigger-events/"
DOC_OVERVIEW = "https://developer.pagerduty.com/docs/events-api-v2/overview/"
DOC_RATE_LIMITS = "https://developer.pagerduty.com/docs/events-api-v2/rate-limiting/"

#: payload.summary: "Maximum of 1024 characters" (DOC_TRIGGER)
SUMMARY_MAX = 1024
#: "the total size of the payload must not exceed 512 KB" (DOC_OVERVIEW, "Size Limits")
EVENT_MAX_BYTES = 512 * 1024
TRUNCATION_MARK = "… [truncated]"

#: Events API v2 response codes ("Response Codes & Retry Logic", DOC_OVERVIEW)
STATUS_TABLE: StatusTable = {
    400: StatusRule(Kind.PERMANENT, DOC_OVERVIEW, "invalid event: dead letter, keep PagerDuty's errors"),
    401: StatusRule(Kind.PERMANENT, DOC_OVERVIEW, "unauthorized"),
    403: StatusRule(Kind.PERMANENT, DOC_OVERVIEW, "forbidden"),
    404: StatusRule(Kind.PERMANENT, DOC_OVERVIEW, "wrong events URL"),
    413: StatusRule(Kind.PERMANENT, DOC_OVERVIEW, "event too large"),
    429: StatusRule(Kind.RETRYABLE, DOC_RATE_LIMITS, "rate limited: ~120 events/min per routing key"),
    500: StatusRule(Kind.RETRYABLE, DOC_OVERVIEW),
    502: StatusRule(Kind.RETRYABLE, DOC_OVERVIEW),
    503: StatusRule(Kind.RETRYABLE, DOC_OVERVIEW),
    504: StatusRule(Kind.RETRYABLE, DOC_OVERVIEW),
}


def mask(secret: str) -> str:
    """Show only the last 4 characters of a routing key (enough to tell services apart)."""
    return "****" + secret[-4:] if len(secret) > 8 else "****"


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def _size(event: Mapping[str, Any]) -> int:
    return len(json.dumps(event, separators=(",", ":"), default=str).encode())


def build_event(event: PlannedEvent, ticket: Ticket | None = None) -> dict[str, Any]:
    """The exact Events API v2 JSON for ``event``, with PagerDuty's limits enforced so it is never a 400.

    summary ≤ 1024 characters (visibly truncated), ``dedup_key`` ≤ 255 (hashed), severity one of four,
    whole body ≤ 512 KB (custom details trimmed largest first, named in ``ticketpager_trimmed``).
    """
    dedup_key = event.dedup_key
    if len(dedup_key) > DEDUP_KEY_MAX:  # planned keys are already short; defend against any caller
        dedup_key = dedup_key_for("x", dedup_key, "", 0)
    body: dict[str, Any] = {
        "routing_key": event.routing_key,
        "event_action": event.action.value,
        "dedup_key": dedup_key,
    }
    if event.action is not EventAction.TRIGGER:
        return body
    spec = event.trigger
    if spec is None:
        raise PermanentError(f"trigger for rule {event.rule!r} has no rendered payload")
    severity = spec.severity if spec.severity in SEVERITIES else "critical"  # never under-page on bad input
    details: dict[str, Any] = {
        "ticketpager_rule": event.rule,
        "ticketpager_reason": event.reason,
    }
    if ticket is not None:
        details.update({"ticket": ticket.key, "status": ticket.status, "priority": ticket.priority, "url": ticket.url})
    details.update(dict(spec.custom_details))
    if severity != spec.severity:
        details["ticketpager_invalid_severity"] = str(spec.severity)[:100]
    payload: dict[str, Any] = {
        "summary": truncate(spec.summary.strip() or (ticket.key if ticket else event.rule), SUMMARY_MAX),
        "source": truncate(spec.source or (ticket.source if ticket else "ticketpager"), SUMMARY_MAX),
        "severity": severity,
        "custom_details": details,
    }
    if ticket is not None:
        payload["timestamp"] = ticket.updated.isoformat()
    for name, value in (("component", spec.component), ("group", spec.group), ("class", spec.class_)):
        if value:
            payload[name] = truncate(str(value), SUMMARY_MAX)
    body["payload"] = payload
    links = [dict(link) for link in spec.links if link.get("href")]
    if links:
        body["links"] = links
    images = [dict(img) for img in spec.images if str(img.get("src", "")).startswith("https://")]
    if images:
        body["images"] = images
    body["client"] = "ticketpager"
    if ticket is not None and ticket.url:
        body["client_url"] = ticket.url
    _fit(body)
    return body


def _fit(body: dict[str, Any]) -> None:
    """Trim custom details (largest value first) until the event fits in 512 KB."""
    details: dict[str, Any] = body["payload"]["custom_details"]
    trimmed: list[str] = []
    while _size(body) > EVENT_MAX_BYTES and details:
        candidates = [k for k in details if k != "ticketpager_trimmed"]
        if not candidates:
            break
        largest = max(candidates, key=lambda k: len(json.dumps(details[k], default=str)))
        size = len(json.dumps(details[largest], default=str))
        details[largest] = f"[trimmed by ticketpager: {size} bytes over PagerDuty's 512 KB event limit]"
        trimmed.append(largest)
        details["ticketpager_trimmed"] = trimmed
        if size < 200:  # nothing big left to trim
            break


@dataclass(frozen=True, slots=True)
class SendResult:
    status: int
    dedup_key: str | None
    message: str


class PagerDutySink:
    """One ``send``: POST an event body to the Events API. Raises ``RetryableError`` / ``PermanentError``."""

    def __init__(
        self, url: str, *, timeout: float = 10.0, session: requests.Session | None = None, clock: Clock | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.session = session or requests.Session()
        self.clock = clock  # reads Retry-After HTTP dates against this clock

    def __repr__(self) -> str:
        return f"<PagerDutySink {self.url}>"

    def send(self, body: Mapping[str, Any]) -> SendResult:
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise network_error("PagerDuty", exc) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code == 202 or 200 <= response.status_code < 300:
            return SendResult(response.status_code, answer.get("dedup_key"), str(answer.get("message", "")))
        key = str(body.get("routing_key") or "")  # PagerDuty may repeat it: redacted here, before any cut
        message = redact(str(answer.get("message") or ""), key) or redact(response.text, key)[:200]
        errors = answer.get("errors")
        if errors:
            message = f"{message}: {redact('; '.join(str(e) for e in errors), key)[:1000]}"
        error = classify_status(
            "PagerDuty",
            response.status_code,
            STATUS_TABLE,
            message=str(message),
            headers=response.headers,
            now=self.clock.now() if self.clock else None,
        )
        assert error is not None
        raise error


WINDOW = timedelta(seconds=60)  # PagerDuty counts events per routing key over a rolling minute


# Held-back events remembered by RateLimiter.first_hold until sent (about 140 bytes each: 3 MB at most). Past it
# the oldest are forgotten (e.g. held here, then sent by another replica): such an event may count twice.
HELD_MEMORY = 20_000


class RateLimiter:
    """At most ``per_minute`` sends per routing key in any rolling 60 s (PagerDuty's documented limit),
    across every replica: ``elsewhere(key, since)`` gives the send times of the *other* replicas (the
    service reads them from the shared outbox), this process's own sends are kept here (in flight
    included). Another replica's send that is in flight at that moment is not seen yet, so a cluster can go
    over by the sends in flight at once; PagerDuty then answers 429 and the event is retried.

    :meth:`wait_for` returns how long a send for ``key`` must wait (0 = go, and the send is counted);
    :meth:`first_hold` tells whether an event is held back for the first time (the metric counts events), and
    :meth:`sent` forgets it when it goes out.
    """

    def __init__(
        self,
        per_minute: int,
        clock: Clock,
        elsewhere: Callable[[str, datetime], list[datetime]] | None = None,
    ) -> None:
        self.per_minute = max(per_minute, 1)
        self.clock = clock
        self.elsewhere = elsewhere
        self._sent: dict[str, deque[datetime]] = {}
        self._held: OrderedDict[object, None] = OrderedDict()  # events held back lately, oldest first
        self._lock = threading.Lock()

    def wait_for(self, key: str) -> float:
        now = self.clock.now()
        since = now - WINDOW
        others: list[datetime] = []
        if self.elsewhere is not None:
            try:
                others = self.elsewhere(key, since)
            except Exception as exc:  # noqa: BLE001 - the database is down: count our own sends, keep paging
                log.warning("rate limiter: other replicas' sends unknown (%s); counting this replica's", exc)
        with self._lock:
            window = self._sent.setdefault(key, deque())
            while window and window[0] <= since:
                window.popleft()
            times = sorted([*window, *(t for t in others if t > since)])
            if len(times) < self.per_minute:
                window.append(now)
                return 0.0
            frees_at = times[len(times) - self.per_minute] + WINDOW  # the send whose exit leaves a free slot
            return max((frees_at - now).total_seconds(), 0.001)

    def first_hold(self, event: object) -> bool:
        """True the first time ``event`` (an outbox row id) is held back. A held event is re-checked each time
        the window frees a slot, which another held event may take: counting every check would count a burst
        of n held events about n²/2 times. Remembers an event until :meth:`sent` (at most :data:`HELD_MEMORY`)."""
        with self._lock:
            if event in self._held:
                self._held.move_to_end(event)
                return False
            self._held[event] = None
            if len(self._held) > HELD_MEMORY:
                self._held.popitem(last=False)
            return True

    def sent(self, event: object) -> None:
        """``event`` goes out now: forget it (an id the database hands out again is a new event)."""
        with self._lock:
            self._held.pop(event, None)
