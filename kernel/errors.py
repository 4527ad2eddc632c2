"""Failures, classified once, as data.

Every failure ticketpager handles is a :class:`TicketpagerError` of one of three kinds:

* :class:`RetryableError` — try again later (``retry_after`` seconds if the vendor said so);
  :class:`UnknownOutcome` is the retryable kind for a request that timed out after it was sent;
* :class:`PermanentError` — trying again will not help (bad credentials, invalid event): surface it;
* :class:`SkippableError` — this one item is not for us; count the reason and move on.

Vendor HTTP statuses map onto these kinds through per-vendor :data:`StatusTable` dicts, each entry with
the URL of the vendor document that says why. :func:`classify_response` applies a table.
"""

from __future__ import annotations

import email.utils
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from kernel.redact import MAX_SCAN_CHARS, redact


class Kind(StrEnum):
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    SKIPPABLE = "skippable"


class TicketpagerError(Exception):
    """Root of every error ticketpager raises on purpose."""

    kind: Kind = Kind.PERMANENT

    def __init__(self, message: str, *, status: int | None = None, vendor: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.vendor = vendor

    def __str__(self) -> str:
        return self.message


class RetryableError(TicketpagerError):
    kind = Kind.RETRYABLE

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        vendor: str | None = None,
    ) -> None:
        super().__init__(message, status=status, vendor=vendor)
        self.retry_after = retry_after


class UnknownOutcome(RetryableError):
    """The request was sent but no answer came in time: the vendor may have acted on it. Retried (for an
    idempotent request, such as a PagerDuty event with its ``dedup_key``), never reported as a failure of
    the request itself."""


class PermanentError(TicketpagerError):
    kind = Kind.PERMANENT


class SkippableError(TicketpagerError):
    kind = Kind.SKIPPABLE


class WebhookRejected(TicketpagerError):
    """A webhook request we refuse: answered with ``status`` and a JSON ``reason``; nothing is stored."""

    kind = Kind.PERMANENT

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason, status=status)
        self.reason = reason


class ConfigError(PermanentError):
    """The operator's configuration is wrong (settings, rule files, a misspelled vendor filter)."""


@dataclass(frozen=True, slots=True)
class StatusRule:
    kind: Kind
    doc: str  # URL of the vendor document behind this entry
    note: str = ""


StatusTable = Mapping[int, StatusRule]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3). ``None`` if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def classify_status(
    vendor: str,
    status: int,
    table: StatusTable,
    *,
    message: str,
    headers: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> TicketpagerError | None:
    """The error for an HTTP status per ``table`` (``None`` for 2xx). Unknown 5xx retry, other 4xx are permanent."""
    if 200 <= status < 300:
        return None
    rule = table.get(status)
    kind = rule.kind if rule else (Kind.RETRYABLE if status >= 500 else Kind.PERMANENT)
    text = redact(f"{vendor} answered HTTP {status}: {message}")  # vendors may echo our credentials
    if rule and rule.note:
        text += f" ({rule.note})"
    if kind is Kind.RETRYABLE:
        given = headers or {}
        retry_after = parse_retry_after(given.get("Retry-After") or given.get("retry-after"), now)
        return RetryableError(text, retry_after=retry_after, status=status, vendor=vendor)
    if kind is Kind.SKIPPABLE:
        return SkippableError(text, status=status, vendor=vendor)
    return PermanentError(text, status=status, vendor=vendor)


def classify_response(
    vendor: str, response: Any, table: StatusTable, now: datetime | None = None
) -> TicketpagerError | None:
    """:func:`classify_status` for a ``requests.Response`` (message = the first 300 characters of the body,
    redacted before the cut: a cut through a secret would leave a fragment no longer recognisable)."""
    body = ""
    try:
        body = redact((response.text or "")[:MAX_SCAN_CHARS])[:300]
    except Exception:  # noqa: BLE001 - a body we cannot decode still has a status
        body = ""
    return classify_status(vendor, response.status_code, table, message=body, headers=response.headers, now=now)


def network_error(vendor: str, exc: BaseException) -> RetryableError:
    """Timeouts and connection failures: always retryable, said in one sentence (not urllib3's reprs)."""
    return RetryableError(redact(f"{vendor} unreachable: {network_reason(exc)}"), vendor=vendor)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it: ``__cause__`` / ``__context__`` and exceptions carried in ``args``
    (requests wraps urllib3's ``MaxRetryError``, which carries the socket error as ``reason``)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if any(current is known for known in seen):
            continue
        seen.append(current)
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(item for item in nested if isinstance(item, BaseException))
    return seen


def network_reason(exc: BaseException) -> str:
    """Why a request got no answer, in words: refused, timed out, name not found, TLS, reset."""
    url = getattr(getattr(exc, "request", None), "url", None)
    where = urlsplit(url).netloc.rsplit("@", 1)[-1] if isinstance(url, str) else ""
    chain = _chain(exc)
    names = {type(item).__name__ for item in chain}
    at = f" {where}" if where else ""
    if any(isinstance(item, ConnectionRefusedError) for item in chain):
        return f"connection refused by{at or ' the server'}"
    if any(isinstance(item, socket.gaierror) for item in chain) or "NameResolutionError" in names:
        return f"host name{at} not found (DNS)"
    if any(isinstance(item, ssl.SSLError) for item in chain) or "SSLError" in names:
        return f"TLS with{at or ' the server'} failed (certificate or protocol)"
    if "ConnectTimeout" in names or "ConnectTimeoutError" in names:
        return f"no connection to{at or ' the server'} within the timeout"
    if any(isinstance(item, TimeoutError) for item in chain) or "ReadTimeout" in names:
        return f"no answer from{at or ' the server'} within the timeout"
    if any(isinstance(item, ConnectionResetError) for item in chain):
        return f"connection reset by{at or ' the server'}"
    return f"{type(exc).__name__} talking to{at or ' the server'}"
