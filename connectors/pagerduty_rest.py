"""PagerDuty REST API v2 client for the reverse direction: find the incident of a ``dedup_key``, act on it
(acknowledge, resolve, reassign to an escalation policy, note, add responders) and manage the v3 webhook
subscription. One ``requests.Session`` per token, paced to PagerDuty's documented limit, every failure
classified through :data:`STATUS_TABLE`. No retries here: callers run a method under
:func:`kernel.retry.call` (a 429 is a :class:`~kernel.errors.RetryableError` with ``retry_after``).

Facts and their sources: ``shared/notes/pagerduty-two-way.md`` §2, the operations in
``shared/specs/pagerduty-rest-subset.openapi.json``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import requests
from pydantic import SecretStr

from connectors.base import timed_out_after_sending
from connectors.pagerduty_webhooks import Incident, Reference
from kernel.clock import Clock, SystemClock
from kernel.errors import (
    ConfigError,
    Kind,
    PermanentError,
    RetryableError,
    StatusRule,
    StatusTable,
    TicketpagerError,
    UnknownOutcome,
    classify_status,
    network_error,
    parse_retry_after,
)
from kernel.incidents import INTEGRATION_AGENT, IncidentStatus
from kernel.redact import redact

VENDOR = "PagerDuty REST"

DOC_OVERVIEW = "https://developer.pagerduty.com/docs/rest-api-v2/rest-api/"
DOC_AUTH = "https://developer.pagerduty.com/docs/rest-api-v2/authentication/"
DOC_ERRORS = "https://developer.pagerduty.com/docs/rest-api-v2/errors/"
DOC_RATE_LIMITS = "https://developer.pagerduty.com/docs/rest-api-v2/rate-limiting/"
DOC_PAGINATION = "https://developer.pagerduty.com/docs/rest-api-v2/pagination/"
DOC_REGIONS = "https://pagerduty.github.io/python-pagerduty/user_guide.html#using-non-us-service-regions"
DOC_INCIDENTS = "https://developer.pagerduty.com/api-reference/9d0b4b12e36f9-list-incidents"
DOC_RESPONDERS = (
    "https://developer.pagerduty.com/api-reference/4dc9e4f4ebbd1-create-a-responder-request-for-an-incident"
)

#: Base URLs per service region (DOC_REGIONS); ``TICKETPAGER_PAGERDUTY__API_URL`` overrides (a proxy, a fake)
US_API_URL = "https://api.pagerduty.com"
EU_API_URL = "https://api.eu.pagerduty.com"


class Region(StrEnum):
    US = "us"
    EU = "eu"


API_URLS: Mapping[Region, str] = {Region.US: US_API_URL, Region.EU: EU_API_URL}

#: The versioning header every request carries (DOC_OVERVIEW)
ACCEPT = "application/vnd.pagerduty+json;version=2"
#: "960 requests per minute" per API key, user or app+account (DOC_RATE_LIMITS)
REQUESTS_PER_MINUTE = 960
PACING_WINDOW_SECONDS = 60.0
#: A 429 may come without any header saying when to come back (DOC_RATE_LIMITS): wait the window out
RATE_LIMIT_FALLBACK_SECONDS = 60.0
#: ``limit`` is at most 100 and ``offset + limit`` at most 10,000, else 400 (DOC_PAGINATION)
PAGE_LIMIT = 100
MAX_OFFSET_PLUS_LIMIT = 10_000
#: Error codes in ``{"error": {"code"}}`` that mean the incident is already in the state asked for (DOC_ERRORS)
ALREADY_RESOLVED, ALREADY_ACKNOWLEDGED = 1001, 1002
OPEN_STATUSES = ("triggered", "acknowledged")

STATUS_TABLE: StatusTable = {
    400: StatusRule(Kind.PERMANENT, DOC_ERRORS, "invalid input (2001), unknown policy (1014) or From user (1008)"),
    401: StatusRule(Kind.PERMANENT, DOC_AUTH, "check the REST API token (Authorization: Token token=…)"),
    402: StatusRule(Kind.PERMANENT, DOC_RESPONDERS, "the account lacks this ability (e.g. coordinated_responding)"),
    403: StatusRule(Kind.PERMANENT, DOC_ERRORS, "the token's user or role may not do this (1018, 2010)"),
    404: StatusRule(Kind.PERMANENT, DOC_ERRORS, "not found (2100): incident, policy, service or API URL"),
    429: StatusRule(Kind.RETRYABLE, DOC_RATE_LIMITS, "rate limited (2020): 960 requests/min per token"),
    500: StatusRule(Kind.RETRYABLE, DOC_ERRORS),
    502: StatusRule(Kind.RETRYABLE, DOC_ERRORS),
    503: StatusRule(Kind.RETRYABLE, DOC_ERRORS),
    504: StatusRule(Kind.RETRYABLE, DOC_ERRORS),
}


@dataclass(frozen=True, slots=True)
class IncidentNote:
    id: str
    content: str
    user: Reference | None  # ``bot_user_reference`` for notes written by services or rules
    created_at: str


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    escalation_policy_id: str | None
    integration_ids: tuple[str, ...]  # with ``include[]=integrations``: our Events API integration is one


@dataclass(frozen=True, slots=True)
class WebhookSubscription:
    id: str
    url: str
    events: tuple[str, ...]
    filter_type: str
    filter_id: str | None
    active: bool
    secret: SecretStr | None = None  # only in the answer to the create: store it at once


class Pacer:
    """At most ``per_minute`` requests in any rolling :data:`PACING_WINDOW_SECONDS`, waiting on ``clock``
    (one per token: PagerDuty counts per token, and asks for requests made serially)."""

    def __init__(self, clock: Clock, per_minute: int = REQUESTS_PER_MINUTE) -> None:
        self.clock = clock
        self.per_minute = max(per_minute, 1)
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block (on the clock) until a request may go; returns the seconds waited."""
        with self._lock:
            now = self.clock.monotonic()
            while self._sent and self._sent[0] <= now - PACING_WINDOW_SECONDS:
                self._sent.popleft()
            waited = 0.0
            if len(self._sent) >= self.per_minute:
                waited = self._sent[0] + PACING_WINDOW_SECONDS - now
                self.clock.sleep(waited)
                self._sent.popleft()
            self._sent.append(self.clock.monotonic())
            return waited


def incident_from_json(data: Any) -> Incident:
    """A REST ``Incident`` object as the typed :class:`Incident` webhooks also give."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise PermanentError(f"{VENDOR} answered an incident without an id", vendor=VENDOR)
    number = data.get("incident_number")
    priority = data.get("priority")
    key = data.get("incident_key")
    return Incident(
        id=data["id"],
        number=number if isinstance(number, int) and not isinstance(number, bool) else None,
        html_url=str(data.get("html_url") or ""),
        status=str(data.get("status") or ""),
        title=str(data.get("title") or ""),
        service_id=_id(data.get("service")),
        escalation_policy_id=_id(data.get("escalation_policy")),
        priority=_priority(priority),
        assignees=tuple(
            ref for a in data.get("assignments") or [] if isinstance(a, dict) and (ref := _reference(a.get("assignee")))
        ),
        incident_key=key if isinstance(key, str) and key else None,
    )


def _priority(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    return str(value.get("summary") or value.get("name") or "") or None


def _id(value: Any) -> str | None:
    return value["id"] if isinstance(value, dict) and isinstance(value.get("id"), str) else None


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time with its zone (PagerDuty writes ``Z``); None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _agent(value: Any) -> Reference | None:
    """``last_status_change_by`` as a webhook's agent would name it: the REST API's ``integration_reference`` is
    the webhooks' ``inbound_integration_reference`` (so our own Events-API action is still known as ours)."""
    ref = _reference(value)
    if ref is None or ref.type != "integration_reference":
        return ref
    return Reference(ref.id, INTEGRATION_AGENT, ref.summary)


def _reference(value: Any) -> Reference | None:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        return None
    return Reference(value["id"], str(value.get("type") or ""), str(value.get("summary") or value.get("name") or ""))


class PagerDutyRestClient:
    """One token, one session, one pacer. ``from_email`` is the user PagerDuty records as acting (required on
    updates and notes with an account-level token; our webhooks' echo filter knows it as our bot user)."""

    def __init__(
        self,
        token: SecretStr,
        *,
        region: Region = Region.US,
        api_url: str | None = None,
        from_email: str | None = None,
        timeout: float = 10.0,
        clock: Clock | None = None,
        requests_per_minute: int = REQUESTS_PER_MINUTE,
        session: requests.Session | None = None,
    ) -> None:
        if not token.get_secret_value():
            raise ConfigError("PagerDuty REST API token is not configured (TICKETPAGER_PAGERDUTY__API_TOKEN)")
        self.base_url = (api_url or API_URLS[region]).rstrip("/")
        self.from_email = from_email
        self.timeout = timeout
        self.clock = clock or SystemClock()
        self.pacer = Pacer(self.clock, requests_per_minute)
        self._token = token
        self.session = session or requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Token token={token.get_secret_value()}",
                "Accept": ACCEPT,
                "Content-Type": "application/json",  # declared required on every operation of the spec
            }
        )

    def __repr__(self) -> str:
        return f"<PagerDutyRestClient {self.base_url}>"

    # -- incidents -------------------------------------------------------------------------------------------
    def find_incident(
        self, dedup_key: str, *, service_ids: Sequence[str] = (), open_only: bool = True
    ) -> Incident | None:
        """The incident whose alert has ``alert_key == dedup_key`` (Events-API incidents have no incident key:
        PagerDuty matches the alerts), confirmed by listing that alert; None if there is none.

        An empty key is refused: PagerDuty would answer with *every* open incident."""
        if not dedup_key.strip():
            raise PermanentError("refusing to look up an incident by an empty dedup_key", vendor=VENDOR)
        params: dict[str, Any] = {"incident_key": dedup_key, "date_range": "all"}  # not only the last month
        if open_only:
            params["statuses[]"] = list(OPEN_STATUSES)
        if service_ids:
            params["service_ids[]"] = list(service_ids)
        for item in self._paginate("/incidents", "incidents", params):
            incident = incident_from_json(item)
            alerts = self._paginate(f"/incidents/{_seg(incident.id)}/alerts", "alerts", {"alert_key": dedup_key})
            if any(isinstance(a, dict) and a.get("alert_key") == dedup_key for a in alerts):
                return incident
        return None

    def alert_keys(self, incident_id: str) -> list[str]:
        """The ``alert_key`` of every alert of the incident: for an Events-API incident, the ``dedup_key``s it
        grouped (how the reverse direction learns which incident a webhook is about; ``kernel.ports``)."""
        alerts = self._paginate(f"/incidents/{_seg(incident_id)}/alerts", "alerts", {})
        return [a["alert_key"] for a in alerts if isinstance(a, dict) and isinstance(a.get("alert_key"), str)]

    def get_incident(self, incident_id: str) -> Incident:
        return incident_from_json(self._json("GET", f"/incidents/{_seg(incident_id)}").get("incident"))

    def incident_status(self, incident_id: str) -> IncidentStatus:
        """The incident's status now, with who changed it last and when (``last_status_change_at`` / ``_by``)."""
        data = self._json("GET", f"/incidents/{_seg(incident_id)}").get("incident")
        incident = incident_from_json(data)
        assert isinstance(data, dict)  # incident_from_json refused anything else
        changed_at, changed_by = _time(data.get("last_status_change_at")), _agent(data.get("last_status_change_by"))
        return IncidentStatus(incident, changed_at, changed_by)

    def acknowledge(self, incident_id: str) -> Incident:
        return self._update(incident_id, {"status": "acknowledged"}, already=ALREADY_ACKNOWLEDGED)

    def resolve(self, incident_id: str, resolution: str | None = None) -> Incident:
        """Resolve; ``resolution`` goes to the resolve log entry only (not shown in the UI: add a note too)."""
        change: dict[str, Any] = {"status": "resolved"}
        if resolution:
            change["resolution"] = resolution
        return self._update(incident_id, change, already=ALREADY_RESOLVED)

    def reassign_to_policy(self, incident_id: str, escalation_policy_id: str) -> Incident:
        """Hand the incident to another escalation policy (``incident.delegated``). Not to a user: that would
        stop escalation (notes §0.3)."""
        ref = {"id": escalation_policy_id, "type": "escalation_policy_reference"}
        return self._update(incident_id, {"escalation_policy": ref})

    def _update(self, incident_id: str, change: dict[str, Any], *, already: int | None = None) -> Incident:
        body = {"incident": {"type": "incident_reference", **change}}
        try:
            answer = self._json("PUT", f"/incidents/{_seg(incident_id)}", json=body, already=already)
        except _AlreadyDone:
            return self.get_incident(incident_id)  # already in that state: success (DOC_ERRORS codes 1001/1002)
        return incident_from_json(answer.get("incident"))

    def add_note(self, incident_id: str, content: str) -> IncidentNote:
        answer = self._json("POST", f"/incidents/{_seg(incident_id)}/notes", json={"note": {"content": content}})
        return _note(answer.get("note"))

    def list_notes(self, incident_id: str) -> list[IncidentNote]:
        notes = self._json("GET", f"/incidents/{_seg(incident_id)}/notes").get("notes")
        return [_note(n) for n in notes] if isinstance(notes, list) else []

    def add_responders(self, incident_id: str, requester_id: str, message: str, targets: Sequence[Reference]) -> str:
        """Ask users or escalation policies to join (``incident.responder.added``); returns the request's id.
        Targets are sent wrapped, as PagerDuty's own example and go-pagerduty do (the schema shows them flat)."""
        body = {
            "requester_id": requester_id,
            "message": message,
            "responder_request_targets": [{"responder_request_target": {"id": t.id, "type": t.type}} for t in targets],
        }
        answer = self._json("POST", f"/incidents/{_seg(incident_id)}/responder_requests", json=body)
        request = answer.get("responder_request")
        return str(request.get("id") or "") if isinstance(request, dict) else ""

    # -- configuration lookups -----------------------------------------------------------------------------
    def list_escalation_policies(self, query: str | None = None) -> list[Reference]:
        params = {"query": query} if query else {}
        return [
            ref for p in self._paginate("/escalation_policies", "escalation_policies", params) if (ref := _reference(p))
        ]

    def get_service(self, service_id: str) -> Service:
        data = self._json("GET", f"/services/{_seg(service_id)}", params={"include[]": "integrations"}).get("service")
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise PermanentError(f"{VENDOR} answered a service without an id", vendor=VENDOR)
        integrations = data.get("integrations") or []
        return Service(
            id=data["id"],
            name=str(data.get("name") or data.get("summary") or ""),
            escalation_policy_id=_id(data.get("escalation_policy")),
            integration_ids=tuple(
                i["id"] for i in integrations if isinstance(i, dict) and isinstance(i.get("id"), str)
            ),
        )

    def user_id_by_email(self, email: str) -> str:
        """The id of the user with exactly this email (``GET /users?query=``, which also matches names and parts
        of emails); LookupError if there is none."""
        wanted = email.strip().casefold()
        if not wanted:
            raise LookupError("no email to look up")
        for user in self._paginate("/users", "users", {"query": email.strip()}):
            if isinstance(user, dict) and str(user.get("email") or "").casefold() == wanted and user.get("id"):
                return str(user["id"])
        raise LookupError(f"no PagerDuty user has the email {email} (GET /users?query=…, exact match)")

    def current_user(self) -> Reference:
        """The token's user (user-level tokens only; an account key is answered 400)."""
        ref = _reference(self._json("GET", "/users/me").get("user"))
        if ref is None:
            raise PermanentError(f"{VENDOR} answered /users/me without a user", vendor=VENDOR)
        return ref

    # -- webhook subscriptions -----------------------------------------------------------------------------
    def list_webhook_subscriptions(
        self, filter_type: str | None = None, filter_id: str | None = None
    ) -> list[WebhookSubscription]:
        """``filter_type`` is ``service``, ``team`` or ``account`` (match on URL to register idempotently)."""
        params = {k: v for k, v in (("filter_type", filter_type), ("filter_id", filter_id)) if v}
        return [_subscription(s) for s in self._paginate("/webhook_subscriptions", "webhook_subscriptions", params)]

    def create_webhook_subscription(
        self, url: str, events: Sequence[str], *, service_id: str | None = None, description: str = "ticketpager"
    ) -> WebhookSubscription:
        """A v3 subscription for one service (or the account); its ``secret`` is only in this answer."""
        scope = {"type": "service_reference", "id": service_id} if service_id else {"type": "account_reference"}
        body = {
            "webhook_subscription": {
                "type": "webhook_subscription",
                "delivery_method": {"type": "http_delivery_method", "url": url},
                "events": list(dict.fromkeys(events)),
                "filter": scope,
                "description": description,
                "active": True,
            }
        }
        return _subscription(self._json("POST", "/webhook_subscriptions", json=body).get("webhook_subscription"))

    def ensure_webhook_subscription(
        self, url: str, events: Sequence[str], *, service_id: str | None = None, description: str = "ticketpager"
    ) -> tuple[WebhookSubscription, bool]:
        """The subscription of ``service_id`` (or the account) delivering to ``url``: the existing one (its secret
        is not shown again), or a new one (``True``: store its secret now). Registering twice creates nothing,
        and PagerDuty allows only 10 per scope."""
        kind = "service" if service_id else "account"
        for existing in self.list_webhook_subscriptions(kind, service_id):
            if existing.url == url:
                return existing, False
        return self.create_webhook_subscription(url, events, service_id=service_id, description=description), True

    def ping(self, subscription_id: str) -> None:
        """PagerDuty sends the ``pagey.ping`` test event to the subscription's URL (202)."""
        self._send("POST", f"/webhook_subscriptions/{_seg(subscription_id)}/ping")

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _paginate(self, path: str, key: str, params: Mapping[str, Any]) -> Iterator[Any]:
        offset = 0
        while offset + PAGE_LIMIT <= MAX_OFFSET_PLUS_LIMIT:
            page = self._json("GET", path, params={**params, "limit": PAGE_LIMIT, "offset": offset})
            items = page.get(key)
            if not isinstance(items, list):
                raise PermanentError(f"{VENDOR} answered {path} without a {key} list", vendor=VENDOR)
            yield from items
            if page.get("more") is not True or not items:
                return
            offset += len(items)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise PermanentError(
                f"{VENDOR} answered {method} {path} with a body that is not a JSON object", vendor=VENDOR
            )
        return data

    def _send(self, method: str, path: str, *, already: int | None = None, **kwargs: Any) -> requests.Response:
        """One paced request. ``From`` goes on every request when configured (required on updates and notes
        with an account key; a user-level token acts as its user). ``already``: the error code that means
        the change is already made (raised as :class:`_AlreadyDone`)."""
        headers = {"From": self.from_email} if self.from_email else {}
        self.pacer.wait()
        try:
            response = self.session.request(
                method, self.base_url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            if method != "GET" and timed_out_after_sending(exc):
                raise UnknownOutcome(
                    f"{VENDOR} timed out: no answer to {method} {path} within {self.timeout:g} s (it may have acted)",
                    vendor=VENDOR,
                ) from None
            raise network_error(VENDOR, exc) from None
        if 200 <= response.status_code < 300:
            return response
        error, code = self._error(response)
        if already is not None and code == already:
            raise _AlreadyDone
        raise error

    def _error(self, response: requests.Response) -> tuple[TicketpagerError, int | None]:
        """The classified error (its text redacted, the token included) and PagerDuty's error code."""
        secret = self._token.get_secret_value()
        code: int | None = None
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            raw_code = error.get("code")
            code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
            details = "; ".join(str(e) for e in error.get("errors") or [] if isinstance(e, str | int))
            message = f"{error.get('message') or ''}{f' ({code})' if code is not None else ''}"
            message += f": {details}" if details else ""
        else:
            message = (response.text or "")[:2000]
        result = classify_status(
            VENDOR,
            response.status_code,
            STATUS_TABLE,
            message=redact(message, secret)[:500],
            headers=response.headers,
            now=self.clock.now(),
        )
        assert result is not None
        if isinstance(result, RetryableError) and response.status_code == 429 and result.retry_after is None:
            reset = parse_retry_after(response.headers.get("ratelimit-reset"))
            result.retry_after = reset if reset is not None else RATE_LIMIT_FALLBACK_SECONDS
        return result, code


class _AlreadyDone(Exception):
    """The incident is already in the state asked for (PagerDuty error 1001 or 1002)."""


def _seg(value: str) -> str:
    """One path segment: an id from a webhook is hostile input (``../``, ``?``)."""
    if not value:
        raise PermanentError("empty PagerDuty id", vendor=VENDOR)
    return quote(value, safe="")


def _note(data: Any) -> IncidentNote:
    if not isinstance(data, dict):
        raise PermanentError(f"{VENDOR} answered a note that is not an object", vendor=VENDOR)
    return IncidentNote(
        id=str(data.get("id") or ""),
        content=str(data.get("content") or ""),
        user=_reference(data.get("user")),
        created_at=str(data.get("created_at") or ""),
    )


def _subscription(data: Any) -> WebhookSubscription:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise PermanentError(f"{VENDOR} answered a webhook subscription without an id", vendor=VENDOR)
    method, scope = data.get("delivery_method"), data.get("filter")
    method = method if isinstance(method, dict) else {}
    scope = scope if isinstance(scope, dict) else {}
    secret = method.get("secret")
    return WebhookSubscription(
        id=data["id"],
        url=str(method.get("url") or ""),
        events=tuple(str(e) for e in data.get("events") or []),
        filter_type=str(scope.get("type") or ""),
        filter_id=scope.get("id") if isinstance(scope.get("id"), str) else None,
        active=data.get("active") is not False,
        secret=SecretStr(secret) if isinstance(secret, str) and secret else None,
    )
