"""Webhook authentication helpers shared by the connectors: HMAC over the raw body, constant time,
several secrets (rotation), timestamp tolerance against replays."""

from __future__ import annotations

import base64
import hmac
import math
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import SecretStr

from kernel.errors import WebhookRejected


def hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.digest(secret.encode(), message, "sha256")  # the one-shot C path: no HMAC object per request


def matches_any(provided: str, expected: Iterable[str]) -> bool:
    """Constant-time compare of ``provided`` against every candidate (no early exit between candidates)."""
    ok = False
    given = provided.encode()
    for candidate in expected:
        ok |= hmac.compare_digest(given, candidate.encode())
    return ok


def hex_signatures(secrets: Iterable[SecretStr], message: bytes) -> list[str]:
    return [hmac_sha256(s.get_secret_value(), message).hex() for s in secrets if s.get_secret_value()]


def b64_signatures(secrets: Iterable[SecretStr], message: bytes) -> list[str]:
    return [
        base64.b64encode(hmac_sha256(s.get_secret_value(), message)).decode() for s in secrets if s.get_secret_value()
    ]


def _epoch(value: str) -> float:
    """Epoch seconds of a timestamp header (epoch seconds or ISO 8601 with a zone); ``ValueError`` naming
    the problem (``unparsable`` / ``no time zone``) otherwise."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("unparsable") from None
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.timestamp()


def signed_instant(value: str | None) -> datetime | None:
    """A (verified) signature timestamp header as an aware datetime; ``None`` if absent or unreadable."""
    try:
        return datetime.fromtimestamp(_epoch(value or ""), UTC)
    except (OverflowError, OSError, ValueError):  # also NaN and infinities
        return None


def check_timestamp(value: str | None, now: datetime, tolerance_seconds: float, header: str) -> None:
    """Reject a missing, unparsable or out-of-window timestamp (epoch seconds or ISO 8601) as a replay."""
    if not value:
        raise WebhookRejected(401, f"missing {header} header")
    try:
        stamp = _epoch(value)
    except ValueError as exc:
        if str(exc) == "no time zone":
            raise WebhookRejected(401, f"{header} header has no time zone") from None
        raise WebhookRejected(401, f"unparsable {header} header") from None
    if not math.isfinite(stamp) or abs(now.timestamp() - stamp) > tolerance_seconds:
        raise WebhookRejected(401, f"{header} outside the {int(tolerance_seconds)} s tolerance (replay?)")
