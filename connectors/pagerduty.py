"""The PagerDuty destination: build Events API v2 bodies within PagerDuty's limits, and ``send`` them.

Building is pure (:func:`build_event`) so ``rules test`` shows the exact body that would be sent; sending
(:class:`PagerDutySink`) is one POST classified through :data:`STATUS_TABLE` — no retries here, the
delivery worker owns them. :class:`RateLimiter` spaces events per routing key instead of provoking 429s.
:class:`PagerDutyDestination` is all of it behind the kernel's ``Destination`` seam (incident actions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests

from connectors.base import timed_out_after_sending
from kernel import jsonutil
from kernel.clock import Clock
from kernel.errors import (
    Kind,
    PermanentError,
    StatusRule,
    StatusTable,
    UnknownOutcome,
    classify_status,
    network_error,
)
from kernel.model import (
    SEVERITIES,
    Action,
    EventAction,
    IncidentAction,
    Outbound,
    Outcome,
    PlannedEvent,
    Rendered,
    Ticket,
    web_url,
)
from kernel.redact import mask, redact

log = logging.getLogger("ticketpager.pagerduty")

DOC_TRIGGER = "https://developer.pagerduty.com/docs/events-api-v2/trigger-events/"
DOC_OVERVIEW = "https://developer.pagerduty.com/docs/events-api-v2/overview/"
DOC_RATE_LIMITS = "https://developer.pagerduty.com/docs/events-api-v2/rate-limiting/"

#: payload.summary: "Maximum of 1024 characters" (DOC_TRIGGER)
SUMMARY_MAX = 1024
#: dedup_key: "Maximum of 255 characters" (DOC_TRIGGER); a longer key is hashed (:func:`fit_dedup_key`)
DEDUP_KEY_MAX = 255
#: "the total size of the payload must not exceed 512 KB" (DOC_OVERVIEW, "Size Limits"); a 524,328-byte body
#: was answered 400 "event larger than 512 KB" (issue 13), so PagerDuty counts the bytes it receives
EVENT_MAX_BYTES = 512 * 1024
#: The most ticketpager sends, measured on the very bytes it posts: 500 KiB = 512,000 bytes, within "512 KB"
#: read either way (512 × 1000 or 512 × 1024 bytes); the 12 KiB left under 512 KiB is the margin for whatever
#: PagerDuty counts that we do not
EVENT_BUDGET_BYTES = 500 * 1024
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


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def encode_event(body: Mapping[str, Any]) -> bytes:
    """The bytes of ``body`` on the wire: the one serialization that is measured against the size budget, stored
    in the outbox (``jsonutil.dumps``, compact UTF-8) and posted as is. A lone surrogate (not encodable) becomes
    ``?`` rather than failing the page."""
    return jsonutil.dumps(body).encode("utf-8", "replace")


def fit_dedup_key(dedup_key: str) -> str:
    """``dedup_key`` within :data:`DEDUP_KEY_MAX`: unchanged, or hashed (planned keys are already short;
    this defends against any caller)."""
    if len(dedup_key) <= DEDUP_KEY_MAX:
        return dedup_key
    key = f"ticketpager/x/{dedup_key}//0"  # the spelling older versions hashed: the same key as before
    return f"ticketpager/x/sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def build_event(event: PlannedEvent, ticket: Ticket | None = None) -> dict[str, Any]:
    """The exact Events API v2 JSON for ``event``, with PagerDuty's limits enforced so it is never a 400.

    summary ≤ 1024 characters (visibly truncated), ``dedup_key`` ≤ 255 (hashed), severity one of four,
    whole body ≤ :data:`EVENT_BUDGET_BYTES` as :func:`encode_event` sends it (custom details trimmed largest
    first, named in ``ticketpager_trimmed``).
    """
    dedup_key = fit_dedup_key(event.dedup_key)
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
    links = [dict(link) for link in spec.links if web_url(link.get("href"))]  # a rule may link any ticket field
    if links:
        body["links"] = links
    images = [dict(img) for img in spec.images if str(img.get("src", "")).startswith("https://")]
    if images:
        body["images"] = images
    body["client"] = "ticketpager"
    if ticket is not None and web_url(ticket.url):
        body["client_url"] = ticket.url
    _fit(body)
    return body


def _fit(body: dict[str, Any]) -> None:
    """Trim custom details (largest value first) until the event's wire form fits :data:`EVENT_BUDGET_BYTES`."""
    payload = body.get("payload")
    details = payload.get("custom_details") if isinstance(payload, dict) else None
    if not isinstance(details, dict):
        return
    trimmed: list[str] = []
    while len(encode_event(body)) > EVENT_BUDGET_BYTES and details:
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


def environment_session(url: str) -> requests.Session:
    """A session for ``url`` whose proxy (``HTTPS_PROXY`` … with ``NO_PROXY``) and CA bundle
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) are read from the environment once, when it is made.
    requests reads them again on every request of a session that trusts the environment: about a fifth of
    the CPU of one event's POST here (docs/performance.md)."""
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session


#: the header of every Events API POST, on both of :meth:`PagerDutySink._post`'s paths
JSON_BODY = {"Content-Type": "application/json"}


class PagerDutySink:
    """One ``send``: POST an event body to the Events API. Raises ``RetryableError`` / ``PermanentError``."""

    def __init__(
        self, url: str, *, timeout: float = 10.0, session: requests.Session | None = None, clock: Clock | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.session = session or environment_session(url)
        self.clock = clock  # reads Retry-After HTTP dates against this clock
        self._prepared: tuple[requests.Session, str, requests.PreparedRequest] | None = None

    def _post(self, data: bytes, timeout: float) -> requests.Response:
        """POST ``data``: a copy of the session's request to :attr:`url`, prepared once (the URL and the session's
        headers merged) and given this body and its cookies. ``session.post`` merges all of that again for every
        event: a quarter of one event's CPU through requests here (docs/performance.md). A session that reads
        the environment per request or has auth (which may sign the body) is posted to as ``session.post`` does."""
        session = self.session
        if session.trust_env or session.auth is not None:
            return session.post(self.url, data=data, headers=JSON_BODY, timeout=timeout)
        if self._prepared is None or self._prepared[:2] != (session, self.url):  # built for this session and URL
            template = requests.Request("POST", self.url, headers=JSON_BODY)
            self._prepared = (session, self.url, session.prepare_request(template))
        request = self._prepared[2].copy()
        request.prepare_body(data, None)  # the body and its Content-Length
        if session.cookies:  # what the jar holds now (a load balancer's cookie set by an earlier answer)
            request.headers.pop("Cookie", None)
            request.prepare_cookies(session.cookies)
        return session.send(request, timeout=timeout)

    def __repr__(self) -> str:
        return f"<PagerDutySink {self.url}>"

    def send(self, body: Mapping[str, Any] | bytes, *, timeout: float | None = None) -> SendResult:
        """POST ``body`` (an event, or its stored wire bytes) exactly as measured: bytes over the budget (a body
        not built by :func:`build_event`, or stored by an older version) are fitted first, never sent to a 400.

        ``timeout`` (connect and read, default :attr:`timeout`): no answer in time after the event was sent
        raises :class:`~kernel.errors.UnknownOutcome` — PagerDuty may have the event."""
        timeout = self.timeout if timeout is None else timeout
        data = body if isinstance(body, bytes) else encode_event(body)
        if len(data) > EVENT_BUDGET_BYTES:
            event = jsonutil.loads(data)
            if isinstance(event, dict):
                _fit(event)
                data = encode_event(event)
        try:
            response = self._post(data, timeout)
        except requests.RequestException as exc:
            if timed_out_after_sending(exc):
                raise UnknownOutcome(
                    f"PagerDuty timed out: no answer within {timeout:g} s (outcome unknown: PagerDuty may have the "
                    "event)",
                    vendor="PagerDuty",
                ) from None
            raise network_error("PagerDuty", exc) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code == 202 or 200 <= response.status_code < 300:
            return SendResult(response.status_code, answer.get("dedup_key"), str(answer.get("message", "")))
        key = _routing_key(body)  # PagerDuty may repeat it: redacted here, before any cut
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


def _routing_key(body: Mapping[str, Any] | bytes) -> str:
    """The routing key of an event or of its wire bytes (read on the error path only)."""
    if isinstance(body, bytes):
        try:
            event = jsonutil.loads(body)
        except ValueError:
            return ""
        body = event if isinstance(event, dict) else {}
    return str(body.get("routing_key") or "")


WINDOW = timedelta(seconds=60)  # PagerDuty counts events per routing key over a rolling minute (DOC_RATE_LIMITS)
#: Added to the window: PagerDuty's clock, ours and the other replicas' differ a little, and an event may be
#: counted there a moment after our send ended. Costs ~2% of the throughput of one routing key at the limit.
WINDOW_MARGIN = timedelta(seconds=1)


class Reservation:
    """One send the limiter counts. It counts until ``WINDOW`` after the send *ended* (the latest the event can
    have arrived at PagerDuty): until :meth:`finished` it is in flight, counted as ending ``send_seconds``
    after it began (so a send whose end is never reported cannot hold a slot for ever)."""

    __slots__ = ("_clock", "end", "open")

    def __init__(self, clock: Clock, end: datetime) -> None:
        self._clock = clock
        self.end = end
        self.open = True

    def finished(self) -> None:
        """The send is over (any outcome: a timed-out event may still have arrived): count it from now."""
        if self.open:
            self.open = False
            self.end = self._clock.now()


# Held-back events remembered by RateLimiter.first_hold until sent (about 140 bytes each: 3 MB at most). Past it
# the oldest are forgotten (e.g. held here, then sent by another replica): such an event may count twice.
HELD_MEMORY = 20_000
#: how long the other replicas' sends for a routing key, once read, are trusted while the key is far from its
#: limit: the read is one query per send otherwise (~0.3 ms of CPU, a fifth of a send). Within
#: :data:`OTHERS_HEADROOM` of the limit every send reads them again, so the spacing there stays exact; and a
#: read is trusted for at most :data:`OTHERS_REUSE` of this replica's sends of the key, so a cluster's
#: replicas starting on an idle key together go over the limit by at most (replicas − 1) × that many.
OTHERS_TTL = timedelta(seconds=1)
OTHERS_REUSE = 5
#: "far from the limit": at least this share of ``per_minute`` (and at least one event) still free by our count
OTHERS_HEADROOM = 0.1
#: how long a read of the other replicas' sends is kept, near the limit too, while this replica is alone on its
#: database (``alone_since``): no other replica sends then, so the read stays true and the window drops what leaves
#: it (issue 19: those reads were about two thirds of the delivery workers' SELECTs at keep-up). A replica that
#: starts is seen at this one's next heartbeat, which ends the streak; a process without a heartbeat (``poll
#: --once``) is not seen at all, so its sends count here up to this (and :data:`OTHERS_TTL`) late.
ALONE_TRUST = timedelta(seconds=10)


class RateLimiter:
    """At most ``per_minute`` events per routing key *arrive at PagerDuty* in any rolling 60 s (its documented
    limit), across every replica.

    An event arrives somewhere between the start and the end of its POST, so each send is counted from when
    it began until ``WINDOW`` (plus :data:`WINDOW_MARGIN`) after it ended: a send that was slow to arrive can
    no longer let a later, faster one in early. ``elsewhere(key, since)`` gives the *other* replicas' sends
    (the service reads their ``sent_at``, the POST's end, from the shared outbox; a replica that was alone on its
    database until another started writes the row at its batch's end, up to a batch per worker late, for up to a
    heartbeat interval, ``sync.heartbeat``); this process's
    own are kept here, in flight included. Another replica's send that is in flight at that moment is not
    seen yet, so a cluster can go over by the sends in flight at once; PagerDuty then answers 429 and the
    event is retried. While a key is far from its limit (more than :data:`OTHERS_HEADROOM` of it free) the
    other replicas' sends are read at most once per :data:`OTHERS_TTL` or :data:`OTHERS_REUSE` sends of this
    replica, whichever comes first, not on every send; near the limit, on every send. So the cluster can go over
    by the sends in flight plus (replicas − 1) × :data:`OTHERS_REUSE`. While ``alone_since()`` gives the start of
    this replica's streak alone on its database (``sync.heartbeat.Heartbeat.alone_since``), a read made in it is
    kept for :data:`ALONE_TRUST`, near the limit too.

    :meth:`reserve` returns how long a send for ``key`` must wait (0 = go) and, to go, the
    :class:`Reservation` to mark :meth:`~Reservation.finished` when the POST is over. :meth:`wait_for` is
    ``reserve`` for a send whose end is not reported (it counts as ending ``send_seconds`` after it began).
    :meth:`first_hold` tells whether an event is held back for the first time (the metric counts events), and
    :meth:`sent` forgets it when it goes out. :meth:`slots` is when the next sends for a key could go (a held
    backlog's schedule).
    """

    def __init__(
        self,
        per_minute: int,
        clock: Clock,
        elsewhere: Callable[[str, datetime], list[datetime]] | None = None,
        *,
        send_seconds: float = 0.0,
        alone_since: Callable[[], datetime | None] | None = None,
    ) -> None:
        self.per_minute = max(per_minute, 1)
        self.clock = clock
        self.elsewhere = elsewhere
        self.alone_since = alone_since  # the start of this replica's streak alone on its database (None: not alone)
        self.send_seconds = timedelta(seconds=max(send_seconds, 0.0))  # the longest one POST may take
        self._sent: dict[str, list[Reservation]] = {}
        self._held: OrderedDict[object, None] = OrderedDict()  # events held back lately, oldest first
        self._others: dict[str, tuple[datetime, list[datetime]]] = {}  # key → (read at, other replicas' sends)
        self._reused: dict[str, int] = {}  # key → this replica's sends since that read
        self._headroom = max(1, int(self.per_minute * OTHERS_HEADROOM))
        self._lock = threading.Lock()

    def wait_for(self, key: str) -> float:
        return self.reserve(key)[0]

    def reserve(self, key: str) -> tuple[float, Reservation | None]:
        now = self.clock.now()
        since = now - WINDOW - WINDOW_MARGIN
        others = self._others_for(key, now, since)
        with self._lock:
            mine = self._sent[key] = [r for r in self._sent.get(key, []) if r.end > since]
            if len(mine) + sum(1 for t in others if t > since) < self.per_minute:
                reservation = Reservation(self.clock, now + self.send_seconds)
                mine.append(reservation)
                self._reused[key] = self._reused.get(key, 0) + 1
                return 0.0, reservation
            ends = sorted([*(r.end for r in mine), *(t for t in others if t > since)])
            frees_at = ends[len(ends) - self.per_minute] + WINDOW + WINDOW_MARGIN  # the exit that leaves a slot
            return max((frees_at - now).total_seconds(), 0.001), None

    def slots(self, key: str, n: int) -> list[datetime]:
        """When each of the next ``n`` sends for ``key`` could go, earliest first: the schedule of a backlog held
        back (:meth:`sync.delivery.Delivery.deliver` reschedules it in one statement rather than re-checking
        every held event each time a slot frees).

        E = the ends of the last ``per_minute`` sends counted (this replica's, in flight included, and the
        others'), oldest first; with ``p = per_minute`` and ``W = WINDOW + WINDOW_MARGIN``, slot ``k`` frees at
        ``E[k % p] + (k // p + 1) × W`` (never before now): the first is when :meth:`reserve` would let a send
        go, the next ``p - 1`` when the later counted sends leave the window, and each one after when the send
        of the slot ``p`` earlier leaves it, counted as ending at its slot. Sends end a little after their
        slot, so times past the first ``p`` are early estimates: an event due then that :meth:`reserve` still
        holds is rescheduled again (the window then holds the real ends). Fewer than ``p`` counted: the free
        slots are now. Reads the other replicas' sends as :meth:`reserve` just did (its read, when recent)."""
        now = self.clock.now()
        span = WINDOW + WINDOW_MARGIN
        since = now - span
        with self._lock:
            cached = self._others.get(key)
        others = cached[1] if cached is not None and now - cached[0] < OTHERS_TTL else self._others_for(key, now, since)
        with self._lock:
            mine = [r.end for r in self._sent.get(key, []) if r.end > since]
        p = self.per_minute
        ends = sorted([*mine, *(t for t in others if t > since)])[-p:]
        ends = [now - span] * (p - len(ends)) + ends  # a free slot: as if its send left the window just now
        return [max(ends[k % p] + (k // p + 1) * span, now) for k in range(max(n, 0))]

    def _others_for(self, key: str, now: datetime, since: datetime) -> list[datetime]:
        """The other replicas' sends for ``key`` since ``since``: the last read while it is recent and the key
        far from its limit, or made in this replica's current streak alone (:data:`ALONE_TRUST`), else read again
        (a failed read counts this replica's sends only)."""
        if self.elsewhere is None:
            return []
        streak = self.alone_since() if self.alone_since is not None else None
        with self._lock:
            cached = self._others.get(key)
            if cached is not None and streak is not None and streak <= cached[0] and now - cached[0] < ALONE_TRUST:
                return cached[1]
            if cached is not None and now - cached[0] < OTHERS_TTL and self._reused.get(key, 0) < OTHERS_REUSE:
                counted = sum(1 for r in self._sent.get(key, []) if r.end > since)
                counted += sum(1 for t in cached[1] if t > since)
                if counted + self._headroom < self.per_minute:
                    return cached[1]
        try:
            others = self.elsewhere(key, since)
        except Exception as exc:  # noqa: BLE001 - the database is down: count our own sends, keep paging
            log.warning("rate limiter: other replicas' sends unknown (%s); counting this replica's", exc)
            return []
        with self._lock:
            if len(self._others) >= HELD_MEMORY:  # bounded: routing keys come from rules, but stay safe
                self._others.clear()
                self._reused.clear()
            self._others[key] = (now, others)
            self._reused[key] = 0
        return others

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


class PagerDutyDestination:
    """PagerDuty Events API v2 as a destination: incident actions rendered by :func:`build_event` (stored as
    :func:`encode_event` bytes, posted as is), sent by a :class:`PagerDutySink`, spaced per routing key by a
    :class:`RateLimiter` (shared by the delivery workers of one process)."""

    name = "pagerduty"
    label = "PagerDuty"

    def __init__(self, sink: PagerDutySink, limiter: RateLimiter | None = None) -> None:
        self.sink = sink
        self._limiter = limiter

    def __repr__(self) -> str:
        return f"<PagerDutyDestination {self.sink.url}>"

    @property
    def timeout(self) -> float:
        return self.sink.timeout

    @property
    def limiter(self) -> RateLimiter | None:
        return self._limiter

    def render(self, action: Action) -> Rendered:
        if not isinstance(action, IncidentAction):
            raise TypeError(f"PagerDuty takes incident actions, not {type(action).__name__}")
        body = jsonutil.dumps(build_event(action.event, action.ticket))
        return Rendered(body, limit_key=action.event.routing_key)

    def send(self, item: Outbound, *, timeout: float | None = None) -> Outcome:
        result = self.sink.send(item.body.encode("utf-8", "replace"), timeout=timeout)  # the stored bytes
        return Outcome(result.status, result.message)

    def preview(self, item: Outbound) -> str:
        body = jsonutil.loads(item.body)
        shown = dict(body, routing_key=mask(body.get("routing_key", "")))
        return json.dumps(shown, sort_keys=True, default=str)
