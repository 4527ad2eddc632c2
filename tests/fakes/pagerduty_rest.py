"""A local fake of PagerDuty's REST API v2 (the operations the two-way sync uses) that also sends signed v3
webhooks, for tests of the reverse direction.

REST (a real HTTP server on 127.0.0.1; each request and each answer is checked against PagerDuty's OpenAPI,
``tests/fakes/pagerduty_openapi.py``; a request the spec refuses is answered 400 and kept in ``spec_errors``):

* ``GET /incidents`` with ``incident_key`` (matching an alert's ``alert_key``, as PagerDuty does for
  Events-API incidents), ``statuses[]``, ``service_ids[]``, ``date_range=all`` (else only the last month),
  offset pagination (``limit`` ≤ 100, ``offset + limit`` ≤ 10,000, ``total=true``); ``GET/PUT
  /incidents/{id}`` (acknowledge, resolve with ``resolution``, reopen, reassign to an escalation policy or
  to users, escalate, priority by object or name); ``GET …/alerts`` (``alert_key``); ``GET/POST …/notes``;
  ``POST …/responder_requests``; ``GET /escalation_policies``; ``GET /services/{id}``
  (``include[]=integrations``); ``GET /users`` (``query`` on names and
  emails); ``GET /users/me`` (user tokens only); ``GET/POST /webhook_subscriptions``
  (the secret is in the create answer only) and ``POST …/{id}/ping`` (202, queues ``pagey.ping``).
* ``Authorization: Token token=<key>`` (401 otherwise); ``From: <user email>`` where the spec requires it,
  unless the token belongs to a user (400 otherwise); scripted failures (``fail_next``), 429 with
  ``Retry-After`` and the ``ratelimit-*`` headers, or without them (PagerDuty may omit them).

Webhooks: every change (through REST, or a person's action the test performs with :meth:`acknowledge`,
:meth:`resolve`, :meth:`add_note`, … or an Events API event fed to :meth:`apply_event`) queues one v3 event per
matching active subscription, built as PagerDuty documents it (``notes/pagerduty-two-way.md`` §1.2; agent: the
acting user, the Events API integration, or null for automation). :meth:`deliver` POSTs the queue, in order,
with ``X-PagerDuty-Signature`` (one ``v1=`` per secret: two during a rotation), ``X-Webhook-Id`` (kept on a
redelivery) and ``X-Webhook-Subscription``. Nothing is sent from the server thread: tests decide when.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from tests.fakes.pagerduty_openapi import SPEC
from tests.fakes.timeline import Timeline

TOKEN = "pd-rest-token-0123456789"  # an account-level API key (needs From)
BOT_EMAIL = "ticketpager-bot@acme.example"
HTML = "https://acme.pagerduty.com"
MAX_LIMIT = 100  # https://developer.pagerduty.com/docs/rest-api-v2/pagination/
MAX_OFFSET_PLUS_LIMIT = 10_000
DEFAULT_WINDOW = timedelta(days=30)  # since/until default to the last month (listIncidents, since)
USER_AGENT = "PagerDuty-Webhook/V3.0"


def sign(secret: str, body: bytes) -> str:
    """One ``v1=`` signature: hex HMAC-SHA256 of the raw body (https://developer.pagerduty.com/docs/webhooks/webhook-signatures/)."""
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, message: str, code: int | None = None, errors: Iterable[str] = ()) -> tuple[int, Any]:
    body: dict[str, Any] = {"message": message}
    if code is not None:
        body["code"] = code
    if errors:
        body["errors"] = list(errors)
    return status, {"error": body}


@dataclass
class Delivery:
    """One webhook POST: the exact bytes and headers, to one subscription's URL."""

    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None = None  # set once delivered


@dataclass
class Subscription:
    id: str
    url: str
    secrets: list[str]
    events: list[str]
    filter: dict[str, str]
    description: str = ""
    active: bool = True

    def covers(self, event_type: str, service_id: str) -> bool:
        if not self.active or event_type not in self.events and event_type != "pagey.ping":
            return False
        kind = self.filter.get("type")
        return kind == "account_reference" or (kind == "service_reference" and self.filter.get("id") == service_id)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class _State:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    responder_requests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)


class FakePagerDutyRest:
    """Run with ``with FakePagerDutyRest() as pd:``; point the client at ``pd.url``.

    Seeded with one service (``PSVC001``, Events API integration ``PINTEG1``) on escalation policy ``PEP0001``
    (on call: Jane Doe ``PUSER01``), a second policy ``PEP0002`` (Sam Roe ``PUSER02``), and the bot user
    ``PBOT001`` (:data:`BOT_EMAIL`). ``token_users`` maps extra tokens to the user they belong to."""

    def __init__(
        self, *, token: str = TOKEN, token_users: dict[str, str] | None = None, now: datetime | None = None
    ) -> None:
        self.token = token
        self.token_users = dict(token_users or {})  # user-level tokens: From is not needed
        self.now = now or datetime(2026, 9, 27, 10, 0, tzinfo=UTC)
        self.timeline: Timeline | None = None  # shared with a fake ticketing system: one wall clock for both
        self.requests: list[Recorded] = []
        self.spec_errors: list[str] = []  # requests the spec refuses and answers the spec does not allow
        self.outbox: list[Delivery] = []  # webhooks not delivered yet, in order
        self.delivered: list[Delivery] = []
        self._script: deque[tuple[int, dict[str, str], Any]] = deque()
        self.latency_seconds = 0.0  # slept before every answer: a slow PagerDuty, for real socket timeouts
        self._ids = itertools.count(1)
        self._numbers = itertools.count(800)
        self._lock = threading.RLock()
        self.state = _State()
        self._seed()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = owner._handle(self.command, self.path, dict(self.headers.items()), raw)
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _serve  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # -- set-up ------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        return f"http://{host}:{port}"

    def __enter__(self) -> FakePagerDutyRest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _seed(self) -> None:
        self.add_user("PBOT001", "ticketpager bot", BOT_EMAIL)
        self.add_user("PUSER01", "Jane Doe", "jane@acme.example")
        self.add_user("PUSER02", "Sam Roe", "sam@acme.example")
        self.add_policy("PEP0001", "Checkout EP", "PUSER01")
        self.add_policy("PEP0002", "DB on-call", "PUSER02")
        self.add_service("PSVC001", "Checkout", "PEP0001", integration_id="PINTEG1")

    def add_user(self, user_id: str, name: str, email: str) -> None:
        self.state.users[user_id] = {
            "id": user_id,
            "type": "user",
            "name": name,
            "email": email,
            "summary": name,
            "self": f"/users/{user_id}",
            "html_url": f"{HTML}/users/{user_id}",
        }

    def add_policy(self, policy_id: str, name: str, on_call_user: str) -> None:
        self.state.policies[policy_id] = {
            "id": policy_id,
            "type": "escalation_policy",
            "name": name,
            "summary": name,
            "self": f"/escalation_policies/{policy_id}",
            "html_url": f"{HTML}/escalation_policies/{policy_id}",
            "escalation_rules": [
                {
                    "id": f"R{policy_id}",
                    "escalation_delay_in_minutes": 30,
                    "targets": [{"id": on_call_user, "type": "user_reference"}],
                }
            ],
        }

    def add_service(self, service_id: str, name: str, policy_id: str, *, integration_id: str) -> None:
        self.state.services[service_id] = {
            "id": service_id,
            "type": "service",
            "name": name,
            "summary": name,
            "status": "active",
            "self": f"/services/{service_id}",
            "html_url": f"{HTML}/service-directory/{service_id}",
            "escalation_policy": self._ref("escalation_policy", policy_id, self.state.policies[policy_id]["name"]),
            "integrations": [
                {
                    "id": integration_id,
                    "type": "events_api_v2_inbound_integration_reference",
                    "summary": "Events API V2",
                    "self": f"/services/{service_id}/integrations/{integration_id}",
                }
            ],
        }

    def subscribe(
        self, url: str, secret: str, *, service_id: str | None = "PSVC001", events: Iterable[str] = ()
    ) -> str:
        """A subscription as if created in PagerDuty's UI; returns its id."""
        sub_id = f"PSUB{next(self._ids):03d}"
        scope = {"type": "service_reference", "id": service_id} if service_id else {"type": "account_reference"}
        self.state.subscriptions[sub_id] = Subscription(sub_id, url, [secret], list(events) or ALL_EVENTS, scope)
        return sub_id

    def rotate_secret(self, sub_id: str, new_secret: str) -> None:
        """During a rotation PagerDuty signs with both secrets; :meth:`finish_rotation` drops the old one."""
        self.state.subscriptions[sub_id].secrets.append(new_secret)

    def finish_rotation(self, sub_id: str) -> None:
        self.state.subscriptions[sub_id].secrets = self.state.subscriptions[sub_id].secrets[-1:]

    def fail_next(self, count: int, status: int = 500, headers: dict[str, str] | None = None, body: Any = None) -> None:
        """Answer the next ``count`` requests with ``status`` (after authentication)."""
        with self._lock:
            for _ in range(count):
                self._script.append((status, headers or {}, body))

    def rate_limit_next(self, count: int = 1, *, retry_after: int | None = 30) -> None:
        """429 as PagerDuty sends it: ``{"error": {"message": "Rate Limit Exceeded", "code": 2020}}`` with the
        ``ratelimit-*`` headers (and ``Retry-After``), or bare when ``retry_after`` is None (it may be)."""
        headers = (
            {}
            if retry_after is None
            else {
                "Retry-After": str(retry_after),
                "ratelimit-limit": "960",
                "ratelimit-remaining": "0",
                "ratelimit-reset": str(retry_after),
            }
        )
        body = None if retry_after is None else {"error": {"message": "Rate Limit Exceeded", "code": 2020}}
        self.fail_next(count, 429, headers, body)

    # -- what people and integrations do in PagerDuty ---------------------------------------------------------
    def apply_event(self, event: dict[str, Any]) -> str:
        """An Events API v2 event, as PagerDuty applies it: trigger opens an incident with one alert whose
        ``alert_key`` is the ``dedup_key`` (or adds nothing to an open one); acknowledge/resolve act on it.
        The agent of the webhooks is the service's Events API integration. Returns the incident id."""
        key, action = str(event["dedup_key"]), event["event_action"]
        with self._lock:
            found = self._open_incident_for(key)
            if action == "trigger":
                if found:
                    return str(found["id"])
                return self._create(key, str(event["payload"]["summary"]), "PSVC001")
            if found is None:
                return ""
            agent = self._integration_agent(found)
            if action == "acknowledge":
                self._set_status(found, "acknowledged", agent)
            elif action == "resolve":
                self._set_status(found, "resolved", agent)
            return str(found["id"])

    def acknowledge(self, incident_id: str, by: str = "PUSER01") -> None:
        with self._lock:
            self._set_status(self.state.incidents[incident_id], "acknowledged", self._user_agent(by))

    def resolve(self, incident_id: str, by: str = "PUSER01") -> None:
        with self._lock:
            self._set_status(self.state.incidents[incident_id], "resolved", self._user_agent(by))

    def add_note(self, incident_id: str, content: str, by: str = "PUSER01") -> dict[str, Any]:
        with self._lock:
            return self._note(self.state.incidents[incident_id], content, self._user_agent(by))

    def delegate(self, incident_id: str, policy_id: str, by: str = "PUSER01") -> None:
        with self._lock:
            self._delegate(self.state.incidents[incident_id], policy_id, self._user_agent(by))

    def reassign(self, incident_id: str, user_ids: list[str], by: str = "PUSER01") -> None:
        """A person hands the incident to users (``incident.reassigned``; escalation stops)."""
        with self._lock:
            incident = self.state.incidents[incident_id]
            self._assign(incident, user_ids)
            self._queue(
                "incident.reassigned",
                self._incident_data(incident),
                str(incident["service"]["id"]),
                self._user_agent(by),
            )

    def unacknowledge(self, incident_id: str) -> None:
        """The acknowledgement timed out (``incident.unacknowledged``, no agent: automation)."""
        with self._lock:
            self._set_status(self.state.incidents[incident_id], "triggered", None)

    def emit(self, incident_id: str, event_type: str, agent: dict[str, Any] | None = None) -> None:
        """Queue a webhook of ``event_type`` for the incident as it is now (e.g. ``incident.escalated`` by a
        timeout, agent None)."""
        with self._lock:
            inc = self.state.incidents[incident_id]
            self._queue(event_type, self._incident_data(inc), str(inc["service"]["id"]), agent)

    # -- webhooks ----------------------------------------------------------------------------------------------
    def deliver(self, *, timeout: float = 5.0) -> list[int]:
        """POST every queued webhook, in order; returns the statuses (a failed POST stays delivered once:
        call :meth:`redeliver` to send it again with the same ``X-Webhook-Id``, as PagerDuty retries)."""
        with self._lock:
            queue, self.outbox = self.outbox, []
        statuses = []
        for delivery in queue:
            response = requests.post(delivery.url, data=delivery.body, headers=delivery.headers, timeout=timeout)
            delivery.status = response.status_code
            self.delivered.append(delivery)
            statuses.append(response.status_code)
        return statuses

    def redeliver(self, delivery: Delivery, *, timeout: float = 5.0) -> int:
        response = requests.post(delivery.url, data=delivery.body, headers=delivery.headers, timeout=timeout)
        delivery.status = response.status_code
        return response.status_code

    def events(self) -> list[dict[str, Any]]:
        """The queued webhook events (parsed), oldest first."""
        return [json.loads(d.body)["event"] for d in self.outbox]

    def _queue(
        self,
        event_type: str,
        data: dict[str, Any],
        service_id: str,
        agent: dict[str, Any] | None,
        only: Subscription | None = None,
        client: dict[str, str] | None = None,
    ) -> None:
        occurred = self._tick()
        resource = event_type.split(".")[0]
        event = {
            "event": {
                "id": f"01FAKE{next(self._ids):020d}",
                "event_type": event_type,
                "resource_type": resource,
                "occurred_at": occurred.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "agent": agent,
                "client": client,
                "data": data,
            }
        }
        body = json.dumps(event).encode()
        targets = [only] if only else [s for s in self.state.subscriptions.values() if s.covers(event_type, service_id)]
        for sub in targets:
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-PagerDuty-Signature": ",".join(sign(secret, body) for secret in sub.secrets),
                "X-Webhook-Id": f"wh-{next(self._ids):08d}",
                "X-Webhook-Subscription": sub.id,
            }
            self.outbox.append(Delivery(sub.url, body, headers))

    # -- model -------------------------------------------------------------------------------------------------
    def _tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        if self.timeline is not None:
            self.now = self.timeline.after(self.now)
        return self.now

    @staticmethod
    def _ref(kind: str, ref_id: str, summary: str) -> dict[str, Any]:
        return {
            "id": ref_id,
            "type": f"{kind}_reference",
            "summary": summary,
            "self": f"/{kind}s/{ref_id}",
            "html_url": f"{HTML}/{kind}s/{ref_id}",
        }

    def _user_agent(self, user_id: str) -> dict[str, Any]:
        return self._ref("user", user_id, str(self.state.users[user_id]["name"]))

    def _integration_agent(self, incident: dict[str, Any]) -> dict[str, Any]:
        service = self.state.services[incident["service"]["id"]]
        integration = service["integrations"][0]
        return {
            "id": integration["id"],
            "type": "inbound_integration_reference",
            "summary": "Events API V2",
            "self": f"https://api.pagerduty.com/services/{service['id']}/integrations/{integration['id']}",
        }

    def _open_incident_for(self, key: str) -> dict[str, Any] | None:
        for incident_id, alerts in self.state.alerts.items():
            incident = self.state.incidents[incident_id]
            if incident["status"] != "resolved" and any(a["alert_key"] == key for a in alerts):
                return incident
        return None

    def _on_call(self, policy_id: str) -> str:
        return str(self.state.policies[policy_id]["escalation_rules"][0]["targets"][0]["id"])

    def _assign(self, incident: dict[str, Any], user_ids: list[str]) -> None:
        at = _iso(self.now)
        incident["assignments"] = [{"at": at, "assignee": self._user_agent(u)} for u in user_ids]

    def _create(self, key: str, title: str, service_id: str) -> str:
        incident_id = f"Q{next(self._ids):07d}"
        service = self.state.services[service_id]
        policy_id = str(service["escalation_policy"]["id"])
        created = self._tick()
        incident: dict[str, Any] = {
            "id": incident_id,
            "type": "incident",
            "summary": f"[#{next(self._numbers)}] {title}",
            "title": title,
            "self": f"/incidents/{incident_id}",
            "html_url": f"{HTML}/incidents/{incident_id}",
            "status": "triggered",
            "urgency": "high",
            "created_at": _iso(created),
            "updated_at": _iso(created),
            "service": self._ref("service", service_id, str(service["name"])),
            "escalation_policy": self._ref("escalation_policy", policy_id, str(self.state.policies[policy_id]["name"])),
            "teams": [],
            "incident_type": {"name": "incident_default"},
            "last_status_change_at": _iso(created),
            "last_status_change_by": self._ref("service", service_id, str(service["name"])),
        }
        incident["incident_number"] = int(incident["summary"][2:].split("]")[0])
        self._assign(incident, [self._on_call(policy_id)])
        self.state.incidents[incident_id] = incident
        self.state.alerts[incident_id] = [
            {
                "id": f"PA{next(self._ids):05d}",
                "type": "alert",
                "summary": title,
                "status": "triggered",
                "alert_key": key,
                "created_at": _iso(created),
                "self": f"/alerts/{incident_id}",
                "html_url": f"{HTML}/alerts/{incident_id}",
                "service": incident["service"],
                "incident": self._ref("incident", incident_id, title),
            }
        ]
        self.state.notes[incident_id] = []
        self._queue(
            "incident.triggered",
            self._incident_data(incident),
            service_id,
            self._integration_agent(incident),
            client={"name": "ticketpager", "url": ""},
        )
        return incident_id

    def _set_status(self, incident: dict[str, Any], status: str, agent: dict[str, Any] | None) -> None:
        before = incident["status"]
        if before == status:
            return
        incident["status"] = status
        incident["updated_at"] = _iso(self._tick())
        # REST's AgentReference: a user, a service (automation, a timeout) or an integration (the Events API)
        by = agent or incident["service"]
        kind = "integration_reference" if by["type"] == "inbound_integration_reference" else by["type"]
        incident["last_status_change_at"] = incident["updated_at"]
        incident["last_status_change_by"] = {k: v for k, v in by.items() if k in ("id", "summary", "self")} | {
            "type": kind
        }
        if status == "resolved":
            incident["assignments"] = []
            for alert in self.state.alerts.get(incident["id"], []):
                alert["status"] = "resolved"
            event = "incident.resolved"
        elif before == "resolved":
            self._assign(incident, [self._on_call(str(incident["escalation_policy"]["id"]))])
            event = "incident.reopened"
        else:
            event = "incident.acknowledged" if status == "acknowledged" else "incident.unacknowledged"
        self._queue(event, self._incident_data(incident), str(incident["service"]["id"]), agent)

    def _delegate(self, incident: dict[str, Any], policy_id: str, agent: dict[str, Any] | None) -> None:
        policy = self.state.policies[policy_id]
        incident["escalation_policy"] = self._ref("escalation_policy", policy_id, str(policy["name"]))
        self._assign(incident, [self._on_call(policy_id)])
        if incident["status"] == "acknowledged":
            incident["status"] = "triggered"  # a delegated incident escalates anew
            # and, triggered, its last_status_change_at is its updated_at (the spec's Incident schema)
            incident["updated_at"] = incident["last_status_change_at"] = _iso(self._tick())
            incident["last_status_change_by"] = {k: v for k, v in (agent or incident["service"]).items()
                                                 if k in ("id", "type", "summary", "self")}  # fmt: skip
        self._queue("incident.delegated", self._incident_data(incident), str(incident["service"]["id"]), agent)

    def _note(self, incident: dict[str, Any], content: str, agent: dict[str, Any]) -> dict[str, Any]:
        note = {
            "id": f"PN{next(self._ids):05d}",
            "content": content,
            "created_at": _iso(self._tick()),
            "user": dict(agent),
            "channel": {"summary": "The PagerDuty website or APIs"},
        }
        self.state.notes[incident["id"]].append(note)
        data = {
            "id": note["id"],
            "type": "incident_note",
            "content": content,
            "trimmed": False,
            "incident": self._ref("incident", incident["id"], incident["title"]),
        }
        self._queue("incident.annotated", data, str(incident["service"]["id"]), agent)
        return note

    @staticmethod
    def _incident_data(incident: dict[str, Any]) -> dict[str, Any]:
        """``event.data`` of an incident-typed v3 webhook (its documented fields; ``incident_key`` null)."""
        return {
            "id": incident["id"],
            "type": "incident",
            "self": incident["self"],
            "html_url": incident["html_url"],
            "number": incident["incident_number"],
            "status": incident["status"],
            "incident_key": None,
            "created_at": incident["created_at"],
            "title": incident["title"],
            "service": incident["service"],
            "assignees": [a["assignee"] for a in incident.get("assignments", [])],
            "escalation_policy": incident["escalation_policy"],
            "teams": incident.get("teams", []),
            "priority": incident.get("priority"),
            "urgency": incident["urgency"],
            "conference_bridge": None,
            "resolve_reason": None,
            "incident_type": incident.get("incident_type"),
        }

    # -- HTTP --------------------------------------------------------------------------------------------------
    def _handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any, dict[str, str]]:
        if self.latency_seconds > 0:
            time.sleep(self.latency_seconds)
        parts = urlsplit(target)
        path, query = parts.path.rstrip("/") or "/", parse_qs(parts.query, keep_blank_values=True)
        lower = {k.lower(): v for k, v in headers.items()}
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return (*_error(400, "Invalid Input Provided", 2001, ["body is not JSON"]), {})
        with self._lock:
            self.requests.append(Recorded(method, path, query, headers, body))
            auth = lower.get("authorization", "")
            tokens = {self.token, *self.token_users}
            if not auth.startswith("Token token=") or auth.removeprefix("Token token=") not in tokens:
                return (*_error(401, "Unauthorized", 2006), {})
            user_id = self.token_users.get(auth.removeprefix("Token token="))
            if self._script:
                status, extra, scripted = self._script.popleft()
                return status, scripted, extra
            problems = SPEC.check_request(method, path, query, headers, body)
            if user_id is not None:  # a user token acts as its user: From is not needed (notes §2.1)
                problems = [p for p in problems if not p.startswith("header From is required")]
            if problems:
                self.spec_errors += [f"{method} {path}: {p}" for p in problems]
                return (*_error(400, "Invalid Input Provided", 2001, problems), {})
            actor = user_id
            if actor is None and "from" in lower:
                actor = next((u for u, d in self.state.users.items() if d["email"] == lower["from"]), None)
                if actor is None:
                    return (*_error(400, "Invalid Input Provided", 2001, ["Requester User Not Found"]), {})
            status, answer = self._route(method, path, query, body, actor)
            self.spec_errors += [
                f"{method} {path} answer: {p}" for p in SPEC.check_response(method, path, status, answer)
            ]
            return status, answer, {}

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, actor: str | None
    ) -> tuple[int, Any]:
        seg = path.strip("/").split("/")
        if seg == ["incidents"]:
            return self._list_incidents(query)
        if seg == ["users", "me"]:
            if actor is None or not self.token_users:
                return _error(400, "Invalid Input Provided", 2001, ["GET /users/me needs a user-level token"])
            return 200, {"user": self.state.users[actor]}
        if seg == ["users"]:  # listUsers: ``query`` matches names and emails, in part and ignoring case
            needle = query.get("query", [""])[0].casefold()
            users = [u for u in self.state.users.values() if needle in f"{u['name']} {u['email']}".casefold()]
            return self._page("users", users, query)
        if seg == ["escalation_policies"]:
            items = [
                p for p in self.state.policies.values() if query.get("query", [""])[0].lower() in p["name"].lower()
            ]
            return self._page("escalation_policies", items, query)
        if seg[0] == "services" and len(seg) == 2:
            service = self.state.services.get(seg[1])
            if service is None:
                return _error(404, "Not Found", 2100)
            shown = dict(service)
            if "integrations" not in query.get("include[]", []):
                shown["integrations"] = [{"id": i["id"], "type": i["type"]} for i in service["integrations"]]
            return 200, {"service": shown}
        if seg[0] == "webhook_subscriptions":
            return self._webhooks(method, seg, query, body)
        if seg[0] == "incidents" and len(seg) >= 2:
            incident = self.state.incidents.get(seg[1])
            if incident is None:
                return _error(404, "Not Found", 2100)
            rest = seg[2:]
            if not rest:
                if method == "GET":
                    return 200, {"incident": incident}
                return self._update(incident, body["incident"], actor)
            if rest == ["alerts"]:
                alerts = [
                    a
                    for a in self.state.alerts[incident["id"]]
                    if a["alert_key"] in query.get("alert_key", [a["alert_key"]])
                ]
                return self._page("alerts", alerts, query)
            if rest == ["notes"]:
                if method == "GET":
                    return 200, {"notes": self.state.notes[incident["id"]]}
                if actor is None:
                    return _error(400, "Invalid Input Provided", 2001, ["From header required"])
                return 200, {"note": self._note(incident, body["note"]["content"], self._user_agent(actor))}
            if rest == ["responder_requests"]:
                return self._responders(incident, body)
        return _error(404, "Not Found", 2100)

    def _page(self, name: str, items: list[dict[str, Any]], query: dict[str, list[str]]) -> tuple[int, Any]:
        limit = int(query.get("limit", ["25"])[0])
        offset = int(query.get("offset", ["0"])[0])
        if limit > MAX_LIMIT or offset + limit > MAX_OFFSET_PLUS_LIMIT or limit < 1 or offset < 0:
            return _error(400, "Invalid Input Provided", 2001, ["Offset must be less than 10000 (limit at most 100)"])
        total = len(items) if query.get("total") == ["true"] else None
        page = items[offset : offset + limit]
        return 200, {name: page, "limit": limit, "offset": offset, "more": offset + limit < len(items), "total": total}

    def _list_incidents(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        items = list(self.state.incidents.values())
        key = query.get("incident_key", [None])[0]
        if key:  # an empty key filters nothing: every incident comes back (the pitfall in §2.2 of the notes)
            items = [i for i in items if any(a["alert_key"] == key for a in self.state.alerts[i["id"]])]
        if "statuses[]" in query:
            items = [i for i in items if i["status"] in query["statuses[]"]]
        if "service_ids[]" in query:
            items = [i for i in items if i["service"]["id"] in query["service_ids[]"]]
        if query.get("date_range") != ["all"] and "since" not in query:
            since = _iso(self.now - DEFAULT_WINDOW)
            items = [i for i in items if i["created_at"] >= since]
        return self._page("incidents", items, query)

    def _update(self, incident: dict[str, Any], change: dict[str, Any], actor: str | None) -> tuple[int, Any]:
        if actor is None:
            return _error(400, "Invalid Input Provided", 2001, ["From header required"])
        agent = self._user_agent(actor)
        policy = change.get("escalation_policy")
        if policy is not None:
            if policy.get("id") not in self.state.policies:
                return _error(400, "Escalation Policy Not Found", 1014)
            self._delegate(incident, str(policy["id"]), agent)
        if "assignments" in change:
            self._assign(incident, [a["assignee"]["id"] for a in change["assignments"]])
            self._queue("incident.reassigned", self._incident_data(incident), str(incident["service"]["id"]), agent)
        if "priority" in change:
            given = change["priority"]
            name = given if isinstance(given, str) else str(given.get("name") or given.get("id"))
            incident["priority"] = {"id": f"PPRIO{name}", "type": "priority_reference", "summary": name}
            self._queue(
                "incident.priority_updated", self._incident_data(incident), str(incident["service"]["id"]), agent
            )
        if "escalation_level" in change:
            self._queue("incident.escalated", self._incident_data(incident), str(incident["service"]["id"]), agent)
        if "status" in change:
            if change["status"] == "triggered" and incident["status"] == "acknowledged":
                return _error(400, "Invalid Input Provided", 2001, ["Incident cannot be unacknowledged"])
            if change.get("resolution"):
                incident["resolution"] = change["resolution"]  # the resolve log entry; not shown in the UI
            self._set_status(incident, str(change["status"]), agent)
        shown = {k: v for k, v in incident.items() if k != "resolution"}
        return 200, {"incident": shown}

    def _responders(self, incident: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        requester = body["requester_id"]
        if requester not in self.state.users:
            return _error(400, "Requester Not Found", 1008)
        targets = []
        for wrapped in body["responder_request_targets"]:
            target = wrapped.get("responder_request_target", wrapped)
            targets.append({"responder_request_target": {"id": target["id"], "type": target["type"]}})
            user = target["id"] if target["type"] == "user_reference" else None
            policy = target["id"] if target["type"] == "escalation_policy_reference" else None
            data = {
                "type": "incident_responder",
                "state": "pending",
                "message": body["message"],
                "incident": self._ref("incident", incident["id"], incident["title"]),
                "user": self._user_agent(user or self._on_call(str(policy))),
                "escalation_policy": self._ref("escalation_policy", policy, str(self.state.policies[policy]["name"]))
                if policy
                else None,
            }
            self._queue("incident.responder.added", data, str(incident["service"]["id"]), self._user_agent(requester))
        request = {
            "id": f"PRR{next(self._ids):04d}",
            "incident": self._ref("incident", incident["id"], incident["title"]),
            "requester": self._user_agent(requester),
            "requested_at": _iso(self.now),
            "message": body["message"],
            "responder_request_targets": targets,
        }
        self.state.responder_requests.setdefault(incident["id"], []).append(request)
        return 200, {"responder_request": request}

    def _webhooks(self, method: str, seg: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if len(seg) == 3 and seg[2] == "ping":
            sub = self.state.subscriptions.get(seg[1])
            if sub is None:
                return _error(404, "Not Found", 2100)
            self._queue("pagey.ping", {"message": "Hello from your friend Pagey!", "type": "ping"}, "", None, only=sub)
            return 202, None
        if method == "POST":
            given = body["webhook_subscription"]
            scope = given["filter"]
            same_scope = [s for s in self.state.subscriptions.values() if s.filter == scope]
            if len(same_scope) >= 10:
                return _error(400, "Webhook subscription limit exceeded for the selected scope", 2019)
            secret = f"whsec-{next(self._ids):06d}-{hashlib.sha256(str(self.now).encode()).hexdigest()[:16]}"
            sub = Subscription(
                f"PSUB{next(self._ids):03d}",
                given["delivery_method"]["url"],
                [secret],
                list(given["events"]),
                dict(scope),
                given.get("description", ""),
                given.get("active", True),
            )
            self.state.subscriptions[sub.id] = sub
            return 200, {"webhook_subscription": self._show(sub, secret)}
        subs = list(self.state.subscriptions.values())
        if "filter_type" in query:
            kind = query["filter_type"][0] + "_reference"
            subs = [
                s
                for s in subs
                if s.filter.get("type") == kind and s.filter.get("id") in query.get("filter_id", [s.filter.get("id")])
            ]
        return self._page("webhook_subscriptions", [self._show(s, None) for s in subs], query)

    @staticmethod
    def _show(sub: Subscription, secret: str | None) -> dict[str, Any]:
        return {
            "id": sub.id,
            "type": "webhook_subscription",
            "active": sub.active,
            "description": sub.description,
            "events": sub.events,
            "filter": sub.filter,
            "delivery_method": {
                "id": f"DM{sub.id}",
                "type": "http_delivery_method",
                "url": sub.url,
                "secret": secret,
                "temporarily_disabled": False,
            },
        }


#: The events a subscription created in the tests listens to (issue 16's list, plus responder.replied).
ALL_EVENTS = [
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reopened",
    "incident.reassigned",
    "incident.delegated",
    "incident.escalated",
    "incident.annotated",
    "incident.responder.added",
    "incident.responder.replied",
    "incident.priority_updated",
]
