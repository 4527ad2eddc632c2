"""A local fake of PagerDuty's Events API v2 (``POST /v2/enqueue``) for end-to-end tests.

Behaves like the vendor: 202 with ``{"status","message","dedup_key"}`` for a valid event, 400 with
``{"status":"invalid event","message":"Event object is invalid","errors":[...]}`` for an invalid one
(validated against PagerDuty's OpenAPI plus the prose limits; the 512 KB limit on the bytes received, as
PagerDuty counts them), and scripted failures (500, 429 with ``Retry-After``) on demand. Every accepted event
is recorded in order, with its size on the wire and its arrival time. Latency is either slept (a real slow
PagerDuty, for socket timeouts) or, given a fake ``clock``, spent on that clock (``latency`` per request), so
arrival times can be checked against the sender's injected clock without sleeping. Connections stay open
between events (HTTP/1.1 keep-alive), as the vendor's do; stopping the fake ends them too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema

from kernel.clock import FakeClock

SPEC_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "pagerduty" / "events-v2.openapi.json"
SHARED_SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "specs" / "pagerduty-events-v2.openapi.json"
#: "the total size of the payload must not exceed 512 KB" (https://developer.pagerduty.com/docs/events-api-v2/overview/),
#: counted here on the bytes received: a 524,328-byte body was answered 400 "event larger than 512 KB" (issue 13)
PAGERDUTY_MAX_BYTES = 512 * 1024


def _load_event_schema() -> dict[str, Any]:
    spec = json.loads(SPEC_PATH.read_text())  # vendored: validation never silently turns off
    body = spec["paths"]["/enqueue"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # resolve local refs against the whole document
    return {"$defs": {}, "components": spec.get("components", {}), **body}


EVENT_SCHEMA: dict[str, Any] | None = _load_event_schema()


def most_in_any_minute(arrivals: list[datetime]) -> int:
    """The most arrivals in any rolling 60 s: what PagerDuty's per-routing-key limit (120 a minute) counts."""
    window = timedelta(seconds=60)
    times = sorted(arrivals)
    most, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def validate_event(event: Any, raw: bytes | None = None) -> list[str]:
    """PagerDuty's OpenAPI schema plus the documented limits the file lacks. Empty list = valid.

    The size limit applies to ``raw`` (the bytes received) when given, else to the compact JSON of ``event``."""
    errors: list[str] = []
    if not isinstance(event, dict):
        return ["event must be a JSON object"]
    if EVENT_SCHEMA is not None:
        validator = jsonschema.Draft202012Validator(EVENT_SCHEMA)
        errors += [e.message for e in validator.iter_errors(event)]
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append(f"'event_action' is invalid: {action!r}")
    if action in ("acknowledge", "resolve") and not event.get("dedup_key"):
        errors.append("'dedup_key' is required for acknowledge/resolve")
    if len(str(event.get("dedup_key", ""))) > 255:
        errors.append("'dedup_key' is too long (maximum is 255 characters)")
    payload = event.get("payload")
    if action == "trigger":
        if not isinstance(payload, dict):
            errors.append("'payload' is required for trigger")
        else:
            if len(str(payload.get("summary", ""))) > 1024:
                errors.append("'summary' is too long (maximum is 1024 characters)")
            if payload.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("'severity' is invalid")
            for key in ("summary", "source"):
                if not payload.get(key):
                    errors.append(f"'{key}' is missing")
    size = len(raw) if raw is not None else len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    if size > PAGERDUTY_MAX_BYTES:
        errors.append("event is larger than 512 KB")
    return errors


class MockPagerDuty:
    """Run with ``with MockPagerDuty() as pd:``; point ticketpager at ``pd.url``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: FakeClock | None = None,
        latency: Callable[[int], float] | None = None,
    ) -> None:
        self.events: list[dict[str, Any]] = []  # accepted, in arrival order
        self.arrivals: list[float] = []  # time.perf_counter() of each accepted event (same order)
        self.sizes: list[int] = []  # bytes on the wire of each accepted event (same order)
        self.arrived_at: list[datetime] = []  # ``clock.now()`` at each request's arrival, accepted or not
        self.clock = clock  # given: latency is spent on this clock, not slept
        self.latency = latency  # request number (0-based) -> seconds before it arrives; with ``clock``
        self.requests: list[dict[str, Any]] = []  # every request body, accepted or not
        self._script: deque[tuple[int, dict[str, str]]] = deque()
        self._window: tuple[float, int, dict[str, str]] | None = None  # (until monotonic, status, headers)
        self.latency_seconds = 0.0  # added to every answer (a slow PagerDuty)
        self.failed: dict[int, int] = {}  # status -> requests answered with it by an outage window (fail_for)
        self.echo_routing_key_next = 0  # answer this many requests 400, repeating their routing key
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()  # open client connections (closed when the mock stops)
        self._stopping = threading.Event()  # set when the mock stops: a request waiting in its latency ends unanswered
        owner = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1: connections stay open between events, as the Events API's do (an HTTP/1.0 mock made
            # every page pay a TCP connect and close: a bare POST cost 1.34× the CPU, docs/performance.md,
            # the twelfth session)
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall between them

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner._connections.add(self.connection)
                if owner._stopping.is_set():  # accepted while the mock stopped: ended like the others
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)

            def finish(self) -> None:
                with owner._lock:
                    owner._connections.discard(self.connection)
                super().finish()

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, body, headers = owner._handle(self.path, raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                if not owner._stopping.is_set():  # a client gone while the mock stops is not an error
                    super().handle_error(request, client_address)

        self._server = Server((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        return f"http://{host}:{port}/v2/enqueue"

    def fail_next(self, count: int, status: int = 500, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (e.g. 429 with ``{"Retry-After": "30"}``)."""
        with self._lock:
            for _ in range(count):
                self._script.append((status, headers or {}))

    def fail_for(self, seconds: float, status: int = 500, headers: dict[str, str] | None = None) -> None:
        """Answer every request with ``status`` for the next ``seconds`` (an outage window, not a count);
        ``fail_next`` scripts still take precedence. A new window replaces the previous one."""
        with self._lock:
            self._window = (time.monotonic() + seconds, status, headers or {})

    def _handle(self, path: str, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.latency_seconds > 0:
            self._stopping.wait(self.latency_seconds)  # a slow PagerDuty (real time); a stop ends the wait
        if self._stopping.is_set():  # stopped while this request waited: no answer, nothing recorded
            raise ConnectionAbortedError("the mock stopped")
        if self.clock is not None:
            with self._lock:  # requests are numbered in arrival order; the clock moves by each one's latency
                if self.latency is not None:
                    self.clock.advance(self.latency(len(self.arrived_at)))
                self.arrived_at.append(self.clock.now())
        try:
            event = json.loads(raw)
        except ValueError:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": ["bad JSON"]}, {}
        with self._lock:
            self.requests.append(event)
            if self.echo_routing_key_next > 0:
                self.echo_routing_key_next -= 1
                key = str(event.get("routing_key") if isinstance(event, dict) else "")
                return (
                    400,
                    {
                        "status": "invalid event",
                        "message": f"Event object is invalid: routing_key {key} unknown",
                        "errors": [f"'routing_key' {key!r} does not match an integration"],
                    },
                    {},
                )
            if self._script:
                status, headers = self._script.popleft()
                return status, {"status": "error", "message": f"scripted {status}"}, headers
            if self._window is not None:
                until, status, headers = self._window
                if time.monotonic() < until:
                    self.failed[status] = self.failed.get(status, 0) + 1
                    return status, {"status": "error", "message": f"outage window {status}"}, headers
                self._window = None
        if path.rstrip("/") != "/v2/enqueue":
            return 404, {"status": "error", "message": "not found"}, {}
        errors = validate_event(event, raw)
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}, {}
        with self._lock:
            if self._stopping.is_set():
                raise ConnectionAbortedError("the mock stopped")
            self.events.append(event)
            self.arrivals.append(time.perf_counter())
            self.sizes.append(len(raw))
        return 202, {"status": "success", "message": "Event processed", "dedup_key": event.get("dedup_key")}, {}

    def __enter__(self) -> MockPagerDuty:
        self._thread.start()
        return self

    @property
    def open_connections(self) -> int:
        """Client connections open now (kept alive between events)."""
        with self._lock:
            return len(self._connections)

    def __exit__(self, *exc: object) -> None:
        with self._lock:  # a stopped PagerDuty answers nothing: kept-alive connections end too
            self._stopping.set()
            connections, self._connections = list(self._connections), set()
        self._server.shutdown()
        self._server.server_close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
