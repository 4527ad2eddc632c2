"""A local fake of the Zendesk Support API parts ticketpager uses, for end-to-end tests.

Behaves like the vendor where it matters to us:

* ``GET /api/v2/incremental/tickets/cursor.json`` (``start_time`` or ``cursor``, ``per_page``, ``include``
  sideloads): a ticket appears once, in its latest state, ordered by last change; ``after_cursor`` /
  ``after_url`` / ``end_of_stream``; changes from the last minute are withheld (``hide_recent_seconds``)
  and deleted tickets arrive with ``status: "deleted"``;
* ``GET/PUT /api/v2/tickets/{id}.json`` (a PUT with ``comment`` adds a comment by the API user and bumps
  ``updated_at``, answering with the ticket and a ``TicketAudit``), ``GET …/comments.json`` (cursor
  pagination ``meta.has_more`` / ``links.next``), ``GET /organizations/{id}.json``, ``GET /users/me.json``;
* basic auth ``{email}/token:{token}`` (401 otherwise) and scripted failures (``fail_next``: e.g. 429 with
  ``Retry-After``).

Point zenpy at it with ``TICKETPAGER_ZENDESK__URL=<server.url>`` (``http://127.0.0.1:<port>``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.echo import credential_echo

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "zendesk"
API_USER_ID = 777


def fixture(name: str) -> Any:
    """A JSON fixture from ``tests/fixtures/zendesk``."""
    return json.loads((FIXTURES / name).read_text())


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Zendesk's webhook signature: base64(HMAC-SHA256(secret as-is, timestamp + body))."""
    return base64.b64encode(hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()).decode()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeZendesk:
    """Run with ``with FakeZendesk() as zd:``; add tickets with :meth:`add_ticket`."""

    def __init__(
        self,
        *,
        email: str = "api@acme.example",
        token: str = "zd-api-token",  # noqa: S107 - a fake server's test credential
        hide_recent_seconds: float = 60.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.email, self.token = email, token
        self.hide_recent_seconds = hide_recent_seconds
        self._now = now
        self.offset = 0.0  # advance() moves the fake's clock forward (time passing in Zendesk)
        self.tickets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.organizations: dict[int, dict[str, Any]] = {}
        api_user = {"id": API_USER_ID, "name": "ticketpager", "email": email}
        self.users: dict[int, dict[str, Any]] = {API_USER_ID: api_user}
        self.groups: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path?query)
        self._log: list[tuple[int, int]] = []  # (seq, ticket id), latest change last
        self._seq = 0
        self._script: deque[tuple[int, dict[str, str]]] = deque()
        self._lock = threading.Lock()
        self.echo_credentials = False  # answer 401 echoing the request's credentials (as some proxies do)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                owner._handle(self, "GET")

            def do_PUT(self) -> None:  # noqa: N802
                owner._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FakeZendesk:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def now(self) -> float:
        return self._now() + self.offset

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass in the fake Zendesk (e.g. past the withheld newest minute)."""
        self.offset += seconds

    # -- data ------------------------------------------------------------------------------------
    def add_organization(self, org_id: int, name: str, tags: list[str]) -> None:
        self.organizations[org_id] = {"id": org_id, "name": name, "tags": tags}

    def add_user(self, user_id: int, name: str, email: str) -> None:
        self.users[user_id] = {"id": user_id, "name": name, "email": email}

    def add_ticket(self, ticket_id: int, *, age_seconds: float = 120.0, **fields: Any) -> dict[str, Any]:
        """Create a ticket last changed ``age_seconds`` ago (older than the withheld last minute)."""
        stamp = _iso(self.now() - age_seconds)
        ticket = {
            "id": ticket_id,
            "url": f"{self.url}/api/v2/tickets/{ticket_id}.json",
            "subject": f"Ticket {ticket_id}",
            "description": "",
            "status": "new",
            "priority": None,
            "type": None,
            "tags": [],
            "custom_fields": [],
            "requester_id": None,
            "assignee_id": None,
            "organization_id": None,
            "group_id": None,
            "brand_id": None,
            "via": {"channel": "web"},
            "created_at": stamp,
            "updated_at": stamp,
        }
        ticket.update(fields)
        with self._lock:
            self.tickets[ticket_id] = ticket
            self.comments.setdefault(ticket_id, [])
            self._touch(ticket_id)
        return ticket

    def update_ticket(self, ticket_id: int, *, age_seconds: float = 0.0, **fields: Any) -> None:
        with self._lock:
            self.tickets[ticket_id].update(fields, updated_at=_iso(self.now() - age_seconds))
            self._touch(ticket_id)

    def _touch(self, ticket_id: int) -> None:
        self._seq += 1
        self._log = [entry for entry in self._log if entry[1] != ticket_id] + [(self._seq, ticket_id)]

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None) -> None:
        for _ in range(count):
            self._script.append((status, headers or {}))

    # -- HTTP ------------------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((method, request.path))
            scripted = self._script.popleft() if self._script else None
        if scripted:
            status, headers = scripted
            self._send(request, status, {"error": "scripted failure"}, headers)
            return
        if self.echo_credentials:
            self._send(request, 401, credential_echo(request.headers.get("Authorization")))
            return
        expected = "Basic " + base64.b64encode(f"{self.email}/token:{self.token}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            self._send(request, 401, {"error": "Couldn't authenticate you"})
            return
        with self._lock:
            status, payload = self._route(method, parts.path, query, body)
        self._send(request, status, payload)

    def _send(
        self, request: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        request.send_header("X-Rate-Limit", "700")
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        segments = [s for s in path.removeprefix("/api/v2/").split("/") if s]
        if method == "GET" and segments == ["incremental", "tickets", "cursor.json"]:
            return self._export(query)
        if method == "GET" and segments == ["users", "me.json"]:
            return 200, {"user": self.users[API_USER_ID]}
        if len(segments) == 2 and segments[0] == "organizations" and segments[1].endswith(".json"):
            org = self.organizations.get(int(segments[1].removesuffix(".json")))
            return (200, {"organization": org}) if org else (404, {"error": "RecordNotFound"})
        if len(segments) >= 2 and segments[0] == "tickets":
            ticket_id = int(segments[1].removesuffix(".json"))
            if ticket_id not in self.tickets:
                return 404, {"error": "RecordNotFound", "description": "Not found"}
            if len(segments) == 3 and segments[2] == "comments.json":
                return 200, {
                    "comments": self.comments[ticket_id],
                    "meta": {"has_more": False, "after_cursor": None, "before_cursor": None},
                    "links": {"next": None, "prev": None},
                }
            if method == "GET":
                return 200, {"ticket": self.tickets[ticket_id], **self._sideloads([self.tickets[ticket_id]], query)}
            if method == "PUT":
                return self._update(ticket_id, json.loads(body or b"{}"))
        return 404, {"error": "InvalidEndpoint"}

    def _update(self, ticket_id: int, body: dict[str, Any]) -> tuple[int, Any]:
        changes = dict(body.get("ticket") or {})
        comment = changes.pop("comment", None)
        changes.pop("id", None)
        ticket = self.tickets[ticket_id]
        ticket.update(changes, updated_at=_iso(self.now()))
        if comment:
            self.comments[ticket_id].append(
                {
                    "id": 1000 + len(self.comments[ticket_id]),
                    "type": "Comment",
                    "author_id": API_USER_ID,
                    "body": comment.get("body", ""),
                    "public": bool(comment.get("public", True)),
                    "created_at": ticket["updated_at"],
                }
            )
        self._touch(ticket_id)
        audit = {"id": 5000 + self._seq, "ticket_id": ticket_id, "author_id": API_USER_ID,
                 "created_at": ticket["updated_at"], "events": []}
        return 200, {"ticket": ticket, "audit": audit}

    def _sideloads(self, tickets: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
        include = set((query.get("include") or "").split(","))
        out: dict[str, Any] = {}
        if "organizations" in include:
            ids = {t.get("organization_id") for t in tickets}
            out["organizations"] = [o for i, o in self.organizations.items() if i in ids]
        if "users" in include:
            ids = {t.get(k) for t in tickets for k in ("requester_id", "assignee_id")}
            out["users"] = [u for i, u in self.users.items() if i in ids]
        if "groups" in include:
            ids = {t.get("group_id") for t in tickets}
            out["groups"] = [g for i, g in self.groups.items() if i in ids]
        return out

    def _export(self, query: dict[str, str]) -> tuple[int, Any]:
        now = self.now()
        if "cursor" in query:
            try:
                after_seq = int(json.loads(base64.urlsafe_b64decode(query["cursor"]))["seq"])
            except (ValueError, KeyError):
                return 400, {"error": "InvalidPaginationParameter"}
            entries = [e for e in self._log if e[0] > after_seq]
        elif "start_time" in query:
            start = int(query["start_time"])
            if start > now - 60:
                return 422, {"error": "InvalidValue", "description": "start_time is too recent"}
            after_seq = 0
            entries = [e for e in self._log if _epoch(self.tickets[e[1]]["updated_at"]) >= start]
        else:
            return 400, {"error": "start_time or cursor is required"}
        per_page = min(int(query.get("per_page", 1000)), 1000)
        visible: list[tuple[int, int]] = []
        for entry in entries:  # withhold the last minute: stop at the first too-recent change
            if _epoch(self.tickets[entry[1]]["updated_at"]) > now - self.hide_recent_seconds:
                break
            visible.append(entry)
        page = visible[:per_page]
        last_seq = page[-1][0] if page else after_seq
        cursor = base64.urlsafe_b64encode(json.dumps({"seq": last_seq}).encode()).decode()
        tickets = [self.tickets[tid] for _, tid in page]
        return 200, {
            "tickets": tickets,
            "after_cursor": cursor,
            "after_url": f"{self.url}/api/v2/incremental/tickets/cursor.json?cursor={cursor}&per_page={per_page}",
            "before_cursor": None,
            "before_url": None,
            "end_of_stream": len(visible) <= per_page,
            **self._sideloads(tickets, query),
        }


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
