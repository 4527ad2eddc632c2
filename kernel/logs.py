"""Logging setup with a last line of defence: every configured secret is redacted from every record."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime

from pydantic import BaseModel

from kernel.redact import REDACTED, SECRETS, Redactor, credentials

__all__ = [
    "FILTER",
    "REDACTED",
    "JsonFormatter",
    "LogThrottle",
    "RedactSecrets",
    "TextFormatter",
    "configure",
    "secret_values",
]


def secret_values(model: BaseModel) -> set[str]:
    """Every non-empty SecretStr value anywhere in a settings tree."""
    return credentials(model)[0]


class RedactSecrets(logging.Filter):
    """Passes every record through :mod:`kernel.redact` (its own redactor, or the process-wide one)."""

    def __init__(self, secrets: Iterable[str] = (), redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor if redactor is not None else Redactor(secrets)

    def add(self, secrets: Iterable[str], users: Iterable[str] = ()) -> None:
        self.redactor.add(secrets, users)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = self.redactor.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            # RFC 3339 in UTC with milliseconds: lines of several replicas interleave correctly
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:  # exc_text is what the secret filter redacted: never format the exception anew
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, one line per record: line breaks inside the message (a vendor's error text,
    a ticket title) are written as ``\\n``, so no input can forge a log line of its own; a traceback, appended
    after the message, keeps its lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")


class LogThrottle:
    """When a line that may repeat (a refusal, a database error) is due: the first time for its key, then at most
    every ``every`` seconds, saying how many it held back meanwhile; a flood is a line a period, not a line a
    request. At most ``max_keys`` keys are kept (texts that vary stay bounded: past it they start over). Safe
    from several threads."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 32) -> None:
        self.every, self.clock, self.max_keys = every, clock, max_keys
        self._seen: dict[Hashable, tuple[float, int]] = {}  # key -> when last logged, occurrences held back since
        self._lock = threading.Lock()

    def due(self, key: Hashable) -> int | None:
        """None: not yet (this occurrence is counted); else log now, with the number held back since the last
        line of ``key``."""
        now = self.clock()
        with self._lock:
            last, held = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.every:
                self._seen[key] = (last, held + 1)
                return None
            if last is None and len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = (now, 0)
        return held


FILTER = RedactSecrets(redactor=SECRETS)
_HANDLER: logging.Handler | None = None


def configure(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = (), users: Iterable[str] = ()) -> None:
    """Log to stderr (text or JSON lines) with secrets redacted. Replaces only its own earlier handler."""
    global _HANDLER
    FILTER.add(secrets, users)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter()
    )
    handler.addFilter(FILTER)
    root = logging.getLogger()
    if _HANDLER is not None:
        root.removeHandler(_HANDLER)
    root.addHandler(handler)
    _HANDLER = handler
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
