"""The console's last line of defence: an exception no handler expected (a database fault, a bug) is logged in one
line and answered with the console's own error page (500, :data:`~ticketpager.console.web.SECURITY_HEADERS`),
never Starlette's bare ``Internal Server Error`` without them nor a traceback in the log for every request."""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel.redact import redact
from sync.db import failure_reason

if TYPE_CHECKING:
    from ticketpager.console.web import Console

log = logging.getLogger("ticketpager.console")

#: what the error page says (the details are in the log line, not shown to the browser)
UNEXPECTED = "something went wrong on our side (it is logged); try again, or tell whoever runs ticketpager"
#: characters of the exception's text kept in the log line
MAX_LOGGED_CHARS = 300


class UnexpectedErrors:
    """ASGI middleware around the console's routes (inside Starlette's own error middleware, which would answer a
    plain-text 500 and let the server log the traceback)."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # the answer is half sent: nothing better to do than what the server does
                raise
            request = Request(scope)
            log.error(
                "console: %s %s failed: %s: %s (%s)",
                request.method,
                request.url.path,
                type(exc).__name__,
                redact(failure_reason(exc))[:MAX_LOGGED_CHARS],  # a database error's first line: no SQL
                _where(exc),
            )
            try:
                session = self.console.session(request)
            except Exception:  # noqa: BLE001 - the page is shown without the menu rather than not at all
                session = None
            response = self.console.refuse(request, 500, UNEXPECTED, session)
            await response(scope, receive, send)


def _where(exc: BaseException) -> str:
    """The file and line the exception was raised at (its last frame), for the one log line."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
