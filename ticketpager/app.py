"""The HTTP app: webhooks in (a plain ASGI endpoint, the hot path), health, readiness and metrics out
(Starlette).

``POST /webhooks/{source}`` (the system's default connection) and ``POST /webhooks/{source}/{connection}``
(a named connection of it, see :mod:`ticketpager.connections`) answer 202 only after the change is committed
(group commit, see :mod:`sync.ingest`); processing happens after the answer. Rejections carry a JSON
``{"error": reason}`` and store nothing: unknown source or connection 404, missing/wrong signature 401,
malformed body 400, too large 413.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from connectors import CONNECTORS
from connectors import pagerduty_webhooks as pdw
from kernel.errors import WebhookRejected
from kernel.incidents import IgnoredEvent
from kernel.jsonutil import BadJSON
from kernel.logs import LogThrottle
from kernel.model import unstorable_reason
from sync.db import DATABASE_ERRORS, failure_reason
from sync.metrics import METRICS
from ticketpager.console import build_console

if TYPE_CHECKING:
    from ticketpager.service import Service

log = logging.getLogger("ticketpager.http")


class BodyTooLarge(Exception):
    """The body exceeds the limit; ``drained`` once all of it was read (and discarded), so the 413 is read too."""

    def __init__(self, drained: bool) -> None:
        super().__init__()
        self.drained = drained


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to store, nobody to answer."""


async def read_body(
    receive: Receive, declared: str | None, limit: int, drain: int = 0, *, expects_continue: bool = False
) -> bytes:
    """The request body, refused once it is known to exceed ``limit`` (declared or while streaming).

    A body over the limit but within ``drain`` bytes is read to its end and discarded first: senders that
    write the whole body before reading (Python's urllib, many vendors') would otherwise see a reset
    instead of the 413. Anything larger is refused at once, and so is a declared over-limit body whose sender
    waits for ``100 Continue`` (reading would invite it to send the body only to have it discarded).
    """
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise WebhookRejected(400, "invalid Content-Length header") from None
        if length > limit:
            if expects_continue:
                raise BodyTooLarge(drained=True)  # nothing was sent: nothing left unread
            if length > drain:
                raise BodyTooLarge(drained=False)
            await _discard(receive, 0, drain)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if chunk:
            size += len(chunk)
            if size > limit:
                if more:
                    await _discard(receive, size, drain)
                raise BodyTooLarge(drained=True)
            chunks.append(chunk)
        if not more:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _discard(receive: Receive, size: int, drain: int) -> None:
    """Read and drop the rest of the body; :class:`BodyTooLarge` when it ends, or once past ``drain`` bytes."""
    while size <= drain:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            raise BodyTooLarge(drained=True)
    raise BodyTooLarge(drained=False)


def error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


async def send_json(send: Send, status: int, content: Any, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


CLOSE = ((b"connection", b"close"),)


class Webhooks:
    """``POST /webhooks/{source}``, the hot path, as a plain ASGI app in front of Starlette.

    Starlette's middleware stack, router and request/response objects cost this endpoint more than its
    signature check and JSON parsing together (measured: a minimal durable endpoint ran at 0.46× the bare
    endpoint behind Starlette's router and 0.70× in front of it), so webhooks are dispatched before it.
    The rest of the app (health, metrics, admin) stays an ordinary Starlette app.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.limit = service.settings.max_body_bytes
        self.drain = service.settings.http.drain_bytes
        self._counted: dict[tuple[Any, tuple[str, ...]], Any] = {}  # metric children, looked up once

    def count(self, metric: Any, *labels: str, amount: int = 1) -> None:
        key = (metric, labels)
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = metric.labels(*labels)
        if amount:
            child.inc(amount)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, source: str, connection: str | None = None
    ) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, {"error": "Method Not Allowed"}, ((b"allow", b"POST"),))
            return
        try:
            status, content = await self.accept(scope, receive, source, connection)
        except _Disconnected:
            return
        except Exception:  # never a bare 500 page: log it, count it, answer JSON
            log.exception("webhook %s failed", source[:40])
            known = self.service.connection_of(source, connection)
            self.count(METRICS.webhooks, known or "unknown", "error")
            status, content = 500, {"error": "internal error; retry later"}
        # a refused body was not read (or only drained): the connection cannot carry another request
        await send_json(send, status, content, CLOSE if status == 413 else ())

    async def accept(
        self, scope: Scope, receive: Receive, system: str, connection: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Verify, parse and durably store one webhook of ``system`` for ``connection`` (``None``: the system's
        default connection); the status and JSON body to answer with."""
        count = self.count
        if system not in CONNECTORS:
            count(METRICS.webhooks, "unknown", "unknown_source")
            log.info("webhook for unknown source %r rejected (404)", system[:40])
            return 404, {"error": f"unknown source '{system[:40]}'; expected one of: {', '.join(CONNECTORS)}"}
        source = self.service.connection_of(system, connection)  # from here on: the connection's name
        if source is None:
            count(METRICS.webhooks, "unknown", "unknown_connection")
            log.info("webhook for unknown %s connection %r rejected (404)", system, str(connection)[:40])
            return 404, {"error": f"unknown {system} connection '{str(connection)[:40]}'"}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            expects = headers.get("expect", "").strip().lower() == "100-continue"
            body = await read_body(receive, headers.get("content-length"), self.limit, self.drain,
                                   expects_continue=expects)
        except BodyTooLarge as exc:
            count(METRICS.webhooks, source, "too_large")
            unread = "" if exc.drained else f", not read (over TICKETPAGER_HTTP__DRAIN_BYTES={self.drain})"
            log.warning("webhook %s rejected (413): body over TICKETPAGER_MAX_BODY_BYTES=%d%s", source, self.limit,
                        unread)
            return 413, {"error": f"body larger than {self.limit} bytes"}
        except WebhookRejected as exc:
            count(METRICS.webhooks, source, f"rejected_{exc.status}")
            return exc.status or 400, {"error": exc.reason}
        service = self.service
        try:
            connector = service.connector(source)
        except Exception as exc:  # noqa: BLE001 - a connector that cannot load is an outage, not a crash
            log.error("connector %s unavailable: %s", source, exc)
            count(METRICS.webhooks, source, "unavailable")
            return 503, {"error": f"connector '{source}' unavailable"}
        try:
            connector.verify_webhook(headers, body)
            if connector.parse_may_block:
                result = await run_in_threadpool(connector.parse_webhook, headers, body)
            else:
                result = connector.parse_webhook(headers, body)
        except WebhookRejected as exc:
            status = exc.status or 400
            # a 5xx is ours (a vendor API we depend on is down), not the caller's: "unavailable", as alerted on
            count(METRICS.webhooks, source, "unavailable" if status >= 500 else f"rejected_{status}")
            reason = exc.reason
            if reason == "webhook secret not configured":  # an operator's mistake, not a caller's
                if source == system:
                    reason += f": set TICKETPAGER_{source.upper()}__WEBHOOK_SECRETS"
                else:
                    reason += f": set webhook_secrets of connection '{source}' in the connections file"
                log.warning("webhook %s rejected (401): %s", source, reason)
            elif status >= 500:  # ours to fix or wait out, not the caller's: worth a warning
                log.warning("webhook %s refused (%d): %s", source, status, reason)
            else:
                log.info("webhook %s rejected (%d): %s", source, status, reason)
            return status, {"error": reason}
        except Exception as exc:  # noqa: BLE001 - never a 500 for input; the poller reconciles
            count(METRICS.webhooks, source, "unparseable")
            log.exception("webhook %s could not be parsed", source)
            return 400, {"error": f"could not parse the payload ({type(exc).__name__})"}
        changes = [change.in_connection(source) for change in result.changes]  # the instance they came from
        for change in changes:
            problem = unstorable_reason(change)
            if problem is not None:
                count(METRICS.webhooks, source, "rejected_400")
                log.info("webhook %s rejected (400): %s", source, problem)
                return 400, {"error": problem}
        if not changes:
            count(METRICS.webhooks, source, "ignored")
            return 202, {"status": "ignored", "reason": result.ignored_reason or "nothing to do"}
        try:
            stored = await service.writer.submit(changes)
        except BadJSON as exc:  # serialized before queueing: text that cannot be stored is the sender's, not a 503
            count(METRICS.webhooks, source, "rejected_400")
            log.info("webhook %s rejected (400): %s", source, exc)
            return 400, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001
            log.error("storing webhook from %s failed: %s", source, failure_reason(exc))  # one line, no rows
            count(METRICS.webhooks, source, "store_failed")
            return 503, {"error": "could not store the change; retry later"}
        duplicates = len(changes) - stored
        count(METRICS.webhooks, source, "accepted")
        count(METRICS.changes_received, source, "webhook", "stored", amount=stored)
        count(METRICS.changes_received, source, "webhook", "duplicate", amount=duplicates)
        return 202, {"status": "accepted", "stored": stored, "duplicates": duplicates}


PAGERDUTY = "pagerduty"  # POST /webhooks/pagerduty: PagerDuty's v3 webhooks, the way back (issue 16)
#: webhooks that fail authentication (401) log one WARNING per reason this often, saying how many it stands for;
#: every one is counted in ticketpager_pagerduty_webhooks_total{outcome="rejected_401"}. A flood of forged posts
#: (anyone can reach /webhooks/*) is a line a minute, not a line a request
REJECTED_LOG_EVERY_SECONDS = 60.0


class PagerDutyWebhooks:
    """``POST /webhooks/pagerduty``: verify (``X-PagerDuty-Signature``, any configured secret), parse, and store
    in the PagerDuty inbox (deduped on ``X-Webhook-Id``) before answering 202; the reverse worker handles it
    afterwards. PagerDuty waits 5 s and disables a subscription after three dropped deliveries, so nothing but
    the insert happens before the answer. Refusals as for the other sources: 401 signature, 400 malformed,
    413 over PagerDuty's own 256 KB; event types the sync does not act on are answered 202 and counted."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.drain = service.settings.http.drain_bytes
        self._rejected = LogThrottle(REJECTED_LOG_EVERY_SECONDS, service.clock.monotonic)  # per reason: fixed texts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, {"error": "Method Not Allowed"}, ((b"allow", b"POST"),))
            return
        try:
            status, content = await self.accept(scope, receive)
        except _Disconnected:
            return
        except Exception:  # never a bare 500 page: log it, count it, answer JSON
            log.exception("webhook pagerduty failed")
            METRICS.pagerduty_webhooks.labels("unknown", "error").inc()
            status, content = 500, {"error": "internal error; retry later"}
        await send_json(send, status, content, CLOSE if status == 413 else ())

    async def accept(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        count = METRICS.pagerduty_webhooks
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = pdw.MAX_BODY_BYTES
        try:
            expects = headers.get("expect", "").strip().lower() == "100-continue"
            body = await read_body(receive, headers.get("content-length"), limit, self.drain, expects_continue=expects)
        except BodyTooLarge:
            count.labels("unknown", "too_large").inc()
            log.warning("webhook pagerduty rejected (413): body over %d KB", limit // 1024)
            return 413, {"error": f"body larger than {limit // 1024} KB (PagerDuty drops those)"}
        except WebhookRejected as exc:
            count.labels("unknown", f"rejected_{exc.status}").inc()
            return exc.status or 400, {"error": exc.reason}
        settings = self.service.settings.pagerduty
        try:
            if settings.webhook_configured or not self.service.settings.insecure_webhooks:
                try:
                    pdw.verify_signature(headers, body, settings.webhook_secrets)
                except WebhookRejected as exc:
                    if exc.reason.endswith("not configured"):
                        raise WebhookRejected(
                            401, f"{exc.reason}: set TICKETPAGER_PAGERDUTY__WEBHOOK_SECRETS"
                        ) from None
                    raise
            pdw.webhook_id(headers)  # required, as PagerDuty always sends it; not the dedupe key (unsigned)
            event = pdw.parse_event(body)
        except WebhookRejected as exc:
            status = exc.status or 400
            count.labels("unknown", f"rejected_{status}").inc()
            if status == 401:
                self._warn_unauthenticated(exc.reason)
            else:
                log.info("webhook pagerduty rejected (%d): %s", status, exc.reason)
            return status, {"error": exc.reason}
        if isinstance(event, IgnoredEvent):
            count.labels("other", "ignored").inc()
            return 202, {"status": "ignored", "reason": f"event type {event.event_type[:100]!r} is not acted on"}
        label = event.event_type.value
        try:
            key = pdw.dedupe_key(event.event_id)  # the signed event id
            new = await run_in_threadpool(self.service.store_pagerduty_webhook, key, event, body)
        except Exception as exc:  # noqa: BLE001
            log.error("storing the PagerDuty webhook failed: %s", failure_reason(exc))  # one line, no body
            count.labels(label, "store_failed").inc()
            return 503, {"error": "could not store the webhook; retry later"}
        count.labels(label, "accepted" if new else "duplicate").inc()
        return 202, {"status": "accepted" if new else "duplicate"}

    def _warn_unauthenticated(self, reason: str) -> None:
        """One WARNING per ``reason`` per :data:`REJECTED_LOG_EVERY_SECONDS`, with how many were refused since."""
        more = self._rejected.due(reason)
        if more is None:
            return
        log.warning(
            "webhook pagerduty rejected (401): %s%s", reason, f" (and {more} more since the last line)" if more else ""
        )


WEBHOOK_PREFIX = "/webhooks/"


class App:
    """The ASGI app ``serve`` runs: webhooks straight to :class:`Webhooks`, everything else to Starlette."""

    def __init__(self, webhooks: Webhooks, rest: Starlette, pagerduty: PagerDutyWebhooks | None = None) -> None:
        self.webhooks = webhooks
        self.rest = rest
        self.pagerduty = pagerduty

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):  # behind --root-path or a mount, as Starlette's router does
                path = path[len(root) :]
            if path.startswith(WEBHOOK_PREFIX):
                rest = path[len(WEBHOOK_PREFIX) :]
                if rest.endswith("/"):  # vendors do not follow a 307 with a POST
                    rest = rest[:-1]
                if rest == PAGERDUTY and self.pagerduty is not None:
                    await self.pagerduty(scope, receive, send)
                    return
                source, _, connection = rest.partition("/")  # /webhooks/{system}[/{connection}]
                if source and "/" not in connection and (connection or not rest.endswith("/")):
                    await self.webhooks(scope, receive, send, source, connection or None)
                    return
        await self.rest(scope, receive, send)


def build_app(service: Service) -> App:
    settings = service.settings

    def authorized(request: Request) -> bool:
        token = settings.metrics_token.get_secret_value()
        if not token:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # the scheme is case-insensitive (RFC 9110 section 11.1): "bearer" is as good as "Bearer"
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        # a probe needs no token; the vendors' (redacted) error text is shown only with it
        detail = bool(settings.metrics_token.get_secret_value()) and authorized(request)
        report = await run_in_threadpool(service.readiness, detail)
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    async def metrics(request: Request) -> Response:
        if not authorized(request):
            return error(401, "metrics need 'Authorization: Bearer <metrics_token>'")
        return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        if not authorized(request):
            return error(401, "admin endpoints need 'Authorization: Bearer <metrics_token>'")
        try:
            report = await run_in_threadpool(service.status_report)
        except DATABASE_ERRORS as exc:  # unreachable, a role that cannot log in, a revoked grant, no schema
            return error(503, f"database unavailable: {service.database_unavailable('/admin/status', exc)}")
        return JSONResponse(report)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/status", status, methods=["GET"]),
    ]
    if settings.console.enabled:  # off unless asked for (the settings refuse it without a way to log in)
        routes.append(Mount("/console", app=build_console(service)))
    rest = Starlette(exception_handlers={HTTPException: http_error}, routes=routes)
    return App(Webhooks(service), rest, PagerDutyWebhooks(service))
