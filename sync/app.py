"""The HTTP app (Starlette): webhooks in, health, readiness and metrics out.

``POST /webhooks/{source}`` answers 202 only after the change is committed (group commit, see
:mod:`sync.ingest`); processing happens after the answer. Rejections carry a JSON ``{"error": reason}``
and store nothing: unknown source 404, missing/wrong signature 401, malformed body 400, too large 413.
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
from starlette.routing import Route

from connectors import CONNECTORS
from sync.errors import WebhookRejected
from sync.metrics import METRICS
from sync.model import unstorable_reason

if TYPE_CHECKING:
    from sync.service import Service

log = logging.getLogger("ticketpager.http")


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise WebhookRejected(400, "invalid Content-Length header") from None
        if length > limit:
            raise BodyTooLarge
        body = await request.body()  # the server enforces Content-Length: at most ``limit`` bytes
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks: list[bytes] = []  # chunked: count as it streams in
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson: the webhook answer is on the hot path, the stdlib encoder is slower."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, reason: str, **extra: Any) -> JSONResponse:
    return FastJSONResponse({"error": reason, **extra}, status_code=status)


def build_app(service: Service) -> Starlette:
    settings = service.settings
    counted: dict[tuple[Any, tuple[str, ...]], Any] = {}  # metric children, each looked up once (bounded labels)

    def count(metric: Any, *labels: str, amount: int = 1) -> None:
        key = (metric, labels)
        child = counted.get(key)
        if child is None:
            child = counted[key] = metric.labels(*labels)
        if amount:
            child.inc(amount)

    async def webhook(request: Request) -> Response:
        source = request.path_params["source"]
        if source not in CONNECTORS:
            count(METRICS.webhooks, "unknown", "unknown_source")
            log.info("webhook for unknown source %r rejected (404)", source[:40])
            return error(404, f"unknown source '{source[:40]}'; expected one of: {', '.join(CONNECTORS)}")
        try:
            body = await read_body(request, settings.max_body_bytes)
        except BodyTooLarge:
            count(METRICS.webhooks, source, "too_large")
            log.warning(
                "webhook %s rejected (413): body over TICKETPAGER_MAX_BODY_BYTES=%d", source, settings.max_body_bytes
            )
            return error(413, f"body larger than {settings.max_body_bytes} bytes")
        except WebhookRejected as exc:
            count(METRICS.webhooks, source, f"rejected_{exc.status}")
            return error(exc.status or 400, exc.reason)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            connector = service.connector(source)
        except Exception as exc:  # noqa: BLE001 - a connector that cannot load is an outage, not a crash
            log.error("connector %s unavailable: %s", source, exc)
            count(METRICS.webhooks, source, "unavailable")
            return error(503, f"connector '{source}' unavailable")
        try:
            connector.verify_webhook(headers, body)
            if connector.parse_may_block:
                result = await run_in_threadpool(connector.parse_webhook, headers, body)
            else:
                result = connector.parse_webhook(headers, body)
        except WebhookRejected as exc:
            status = exc.status or 400
            count(METRICS.webhooks, source, f"rejected_{status}")
            reason = exc.reason
            if reason == "webhook secret not configured":  # an operator's mistake, not a caller's
                reason += f": set TICKETPAGER_{source.upper()}__WEBHOOK_SECRETS"
                log.warning("webhook %s rejected (401): %s", source, reason)
            else:
                log.info("webhook %s rejected (%d): %s", source, status, reason)
            return error(status, reason)
        except Exception as exc:  # noqa: BLE001 - never a 500 for input; the poller reconciles
            count(METRICS.webhooks, source, "unparseable")
            log.exception("webhook %s could not be parsed", source)
            return error(400, f"could not parse the payload ({type(exc).__name__})")
        for change in result.changes:
            problem = unstorable_reason(change)
            if problem is not None:
                count(METRICS.webhooks, source, "rejected_400")
                log.info("webhook %s rejected (400): %s", source, problem)
                return error(400, problem)
        if not result.changes:
            reason = result.ignored_reason or "nothing to do"
            count(METRICS.webhooks, source, "ignored")
            return FastJSONResponse({"status": "ignored", "reason": reason}, status_code=202)
        try:
            stored = await service.writer.submit(result.changes)
        except Exception as exc:  # noqa: BLE001
            log.error("storing webhook from %s failed: %s", source, exc)
            count(METRICS.webhooks, source, "store_failed")
            return error(503, "could not store the change; retry later")
        count(METRICS.webhooks, source, "accepted")
        count(METRICS.changes_received, source, "webhook", "stored", amount=stored)
        count(METRICS.changes_received, source, "webhook", "duplicate", amount=len(result.changes) - stored)
        return FastJSONResponse(
            {"status": "accepted", "stored": stored, "duplicates": len(result.changes) - stored}, status_code=202
        )

    def authorized(request: Request) -> bool:
        token = settings.metrics_token.get_secret_value()
        if not token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        report = await run_in_threadpool(service.readiness)
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    async def metrics(request: Request) -> Response:
        if not authorized(request):
            return error(401, "metrics need 'Authorization: Bearer <metrics_token>'")
        return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        if not authorized(request):
            return error(401, "admin endpoints need 'Authorization: Bearer <metrics_token>'")
        return JSONResponse((await run_in_threadpool(service.store.status)).to_json())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route("/webhooks/{source}", webhook, methods=["POST"]),
            Route("/webhooks/{source}/", webhook, methods=["POST"]),  # vendors do not follow a 307 with a POST
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/status", status, methods=["GET"]),
        ],
    )
