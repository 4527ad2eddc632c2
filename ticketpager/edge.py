"""The HTTP edge: limits every connection is held to before the app (and any signature check) sees a request.

uvicorn's httptools protocol reads request headers without any size limit, has no deadline for the headers
or the body, and no cap on connections: one client could make the process buffer 64 MiB of an unfinished
header, or hold connections open forever one byte at a time (issue 13, items 1 and 2). This subclass of it
adds, per connection (every limit a setting, ``TICKETPAGER_HTTP__*``, listed in docs/operations.md):

* a header-block limit counted on the raw bytes *before* they reach the parser: past it, 431;
* a limit on header fields per request, trailers included (a one-byte field costs ~150 bytes once parsed):
  past it, 431;
* a limit on what a chunked body's framing and trailers add to its data (the parser buffers a trailer whole,
  and the header limit only counted the header block): past it, 431;
* a deadline for the whole header block (from the first byte of a request, or from the connect) and one for
  the whole body (from the end of the headers): past them, 408;
* the idle keep-alive timeout (uvicorn's own timer, set from the settings);
* a cap on open connections, checked at connect: past it, the connection whose request has been arriving the
  longest (at least :data:`MIN_EVICTABLE_SECONDS`), or else an idle keep-alive one, is closed to make room (408,
  ``evicted``), so a client holding every slot with requests sent a byte at a time cannot lock others out; when
  none is, 503 before anything is read;
* a cap on requests pipelined behind the one being answered (each parsed one is queued with its scope):
  past it, the connection is closed without an answer;
* a JSON body for every answer it gives itself, also the 400 for what the parser refuses (a malformed
  ``Content-Length``, say), which uvicorn answers in plain text.

After a refusal the connection is half-closed and unread input is discarded (never parsed or kept) for
``linger_seconds``, so a client still writing reads the answer instead of a reset.

Why a protocol subclass rather than uvicorn's knobs or an ASGI middleware: ``h11_max_incomplete_event_size``
needs the pure-Python h11 parser, and an ASGI middleware only runs once the headers are complete, too late
for items 1 and 2. The guard costs a few attribute reads per socket read; docs/performance.md has the
ingest figures with and without it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from http import HTTPStatus
from typing import ClassVar

import httptools
import orjson
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from kernel.logs import LogThrottle
from sync.metrics import METRICS
from ticketpager.settings import HttpSettings

log = logging.getLogger("ticketpager.http")

#: the ``reason`` label values of ``ticketpager_http_refused_total``
REASONS = ("header_too_large", "too_many_header_fields", "trailers_too_large", "header_timeout", "body_timeout",
           "too_many_connections", "too_deeply_pipelined", "bad_request", "evicted")
#: at the connection cap, a request that has been arriving for this long gives its connection up to a new one: a
#: vendor's webhook arrives in milliseconds; a client sending a byte a second to hold every slot is evicted (the
#: oldest first) each time someone else connects
MIN_EVICTABLE_SECONDS = 1.0
_REQUESTS = itertools.count()  # orders requests by start across connections (one event loop: no lock)
#: a chunked body's framing and trailers may add this share of its data on top of ``max_header_bytes``: chunks of
#: 100 bytes or more stay within it; the parser's buffer for an endless trailer stays within the sum
FRAMING_SHARE = 16
#: requests parsed and queued behind the one being answered; nobody pipelines this deep (browsers and vendors'
#: senders do not pipeline at all), and each queued one holds its scope until answered
MAX_PIPELINED = 32
LOG_EVERY_SECONDS = 1.0  # a flood of refusals logs one line per reason per second, with the count


def refusal(status: int, message: str) -> bytes:
    """A complete ``Connection: close`` response with a JSON ``{"error": message}`` body."""
    body = orjson.dumps({"error": message})
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        status,
        HTTPStatus(status).phrase.encode(),
        len(body),
        body,
    )


class _Stop(Exception):
    """Raised from a parser callback to stop parsing a request already refused."""


class _RefusalLog:
    """One log line per reason per :data:`LOG_EVERY_SECONDS`, saying how many were refused since."""

    def __init__(self) -> None:
        self.throttle = LogThrottle(LOG_EVERY_SECONDS)

    def __call__(self, reason: str, status: int, message: str, client: object) -> None:
        more = self.throttle.due(reason)
        if more is None:
            return
        also = f" (and {more} more since the last line)" if more else ""
        log.warning("refused a connection from %s (%s): %s%s", client, status or "closed unanswered", message, also)


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`~ticketpager.settings.HttpSettings`."""

    limits: ClassVar[HttpSettings] = HttpSettings()
    refused_log: ClassVar[_RefusalLog] = _RefusalLog()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.timeout_keep_alive = self.limits.keepalive_timeout_seconds  # type: ignore[assignment]
        self._in_head = True  # reading a request line and headers (or waiting for the first byte of one)
        self._head_bytes = 0  # raw bytes of the current header block fed to the parser so far
        self._fields = 0  # header fields (and trailers) of the current request parsed so far
        self._raw_body = 0  # raw bytes fed after the header block (body, chunk framing, trailers)
        self._body_seen = 0  # body bytes the parser delivered of them
        self._due: float | None = None  # loop time by which the current header block or body must be in
        self._started = 0.0  # loop time the current request (or the wait for its first byte) started
        self._order = 0  # which request started first, where loop times tie (uvloop's clock ticks in ms)
        self._due_body = False  # the deadline is the body's (else the headers')
        self._timer: asyncio.TimerHandle | None = None  # checks the deadline; fires at ``_timer_at``
        self._timer_at = 0.0
        self._linger: asyncio.TimerHandle | None = None
        self._running: RequestResponseCycle | None = None  # the cycle being answered (not ``cycle`` if pipelined)
        self._completed = 0  # requests whose last byte was parsed (a pipelined one may end mid-read)
        self._refused = False

    # -- connection ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        if len(self.connections) > cap:
            active = [c for c in self.connections if isinstance(c, EdgeProtocol) and not c._refused and c is not self]
            if len(active) >= cap and not self._evict(active):
                self._refuse(503, "too_many_connections", f"more than {cap} open connections; retry later")
                return
        self._set_deadline(self.limits.header_timeout_seconds, body=False)

    def _evict(self, others: list[EdgeProtocol]) -> bool:
        """Make room at the cap: close the connection whose request has been arriving the longest, if for at least
        :data:`MIN_EVICTABLE_SECONDS`, else the longest idle keep-alive one; False when none may go (every other
        connection is being answered, or just started). Connections refused earlier and still lingering do not
        hold a slot."""
        now = self.loop.time()
        slow = [c for c in others if c._due is not None and now - c._started >= MIN_EVICTABLE_SECONDS]
        if slow:
            victim = min(slow, key=lambda c: c._order)
            seconds = now - victim._started
            victim._refuse(408, "evicted", f"request incomplete after {seconds:.1f} s, its connection given to another")
            return True
        idle = [c for c in others if c._idle()]
        if idle:
            min(idle, key=lambda c: c._order)._refuse(0, "evicted", "idle keep-alive connection given to another")
            return True
        return False

    def _idle(self) -> bool:
        """Between requests on a kept-alive connection: nothing being read, answered or queued."""
        cycle = self.cycle
        return self._due is None and not self.pipeline and (cycle is None or cycle.response_complete)

    def connection_lost(self, exc: Exception | None) -> None:
        self._due = None
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: input is discarded, never parsed or kept
        limit = self.limits.max_header_bytes
        while data and self._in_head:
            if self._due is None:  # the first byte after an idle keep-alive: this request's headers are timed
                self._set_deadline(self.limits.header_timeout_seconds, body=False)
            room = limit - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                self._feed(data)
                return
            if room > 0:  # the end of the header block may still be in the bytes the limit allows
                self._head_bytes = limit
                completed = self._completed
                self._feed(data[:room])
                data = data[room:]
                if self._refused or self.transport.is_closing():
                    return
                if self._completed != completed:  # pipelined: those bytes held whole requests, not one header
                    continue
            if self._in_head:
                self._refuse(431, "header_too_large", f"request headers larger than {limit} bytes")
                return
        if data:  # body bytes (a pipelined request's header bytes in the same read are counted from the next)
            self._raw_body += len(data)
            self._feed(data)
            limit = self.limits.max_header_bytes
            if (not self._refused and not self._in_head
                    and self._raw_body - self._body_seen > limit + self._body_seen // FRAMING_SHARE):
                self._refuse(431, "trailers_too_large", f"chunk framing and trailers larger than {limit} bytes")

    def _feed(self, data: bytes) -> None:
        """What uvicorn's ``data_received`` does, with the parser's reason in a JSON 400."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self._refused:  # else a callback refused and stopped the parser (too many fields)
                self._refuse(400, "bad_request", f"invalid HTTP request: {exc}")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- parser callbacks -----------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.limits.max_header_fields:
            if not self._refused:
                cap = self.limits.max_header_fields
                self._refuse(431, "too_many_header_fields", f"more than {cap} request header fields")
            raise _Stop  # the parser stops here: feed_data raises, and the rest of the read is dropped
        super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_body = self._body_seen = 0
        self._set_deadline(self.limits.body_timeout_seconds, body=True)
        super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:
            self._refuse(0, "too_deeply_pipelined", f"more than {MAX_PIPELINED} requests pipelined")
            raise _Stop

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._completed += 1
        self._due = None  # the app's own time is not the client's: no deadline until the next request starts
        self._in_head = True
        self._head_bytes = self._fields = 0

    # -- deadlines ---------------------------------------------------------------------------------------
    # Setting a deadline is two stores; one timer per connection checks it when it fires and re-arms for the
    # deadline then current. A timer armed and cancelled per request cost measurable ingest (docs/performance.md).
    def _set_deadline(self, seconds: float, *, body: bool) -> None:
        now = self.loop.time()
        due = now + seconds
        if not body:
            self._started, self._order = now, next(_REQUESTS)
        self._due, self._due_body = due, body
        if self._timer is None or due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self.loop.call_at(due, self._check_deadline), due

    def _check_deadline(self) -> None:
        self._timer = None
        due = self._due
        if due is None or self._refused:
            return
        if self.loop.time() < due:
            self._timer, self._timer_at = self.loop.call_at(due, self._check_deadline), due
            return
        if self._due_body:
            seconds = self.limits.body_timeout_seconds
            self._refuse(408, "body_timeout", f"request body not received within {seconds:g} s")
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # a pipelined earlier request is being answered
            self._set_deadline(self.limits.header_timeout_seconds, body=False)
            return
        seconds = self.limits.header_timeout_seconds
        self._refuse(408, "header_timeout", f"request headers not received within {seconds:g} s")

    # -- refusal --------------------------------------------------------------------------------------------
    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` (0: no answer) if no response has started, half-close, discard input, close after the
        linger."""
        self._refused = True
        self._due = None
        METRICS.http_refused.labels(reason).inc()
        self.refused_log(reason, status, message, self.client and self.client[0])
        cycle = self.cycle
        answerable = status and (cycle is None or cycle.response_complete or not cycle.response_started)
        queued = [queued for queued, _ in self.pipeline]
        self.pipeline.clear()  # never started now: their scopes go at once
        for each in {id(c): c for c in (self._running, cycle, *queued) if c is not None}.values():
            if not each.response_complete:
                each.disconnected = True  # the app's receive() returns http.disconnect and its send() is a no-op
                each.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        if answerable:
            transport.write(refusal(status, message))
        self.flow.resume_reading()  # keep reading (and discarding), or the unread input turns close into a reset
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = self.loop.call_later(self.limits.linger_seconds, transport.close)


def protocol(limits: HttpSettings) -> type[EdgeProtocol]:
    """The protocol class uvicorn instantiates per connection (``uvicorn.Config(http=...)``), with ``limits``."""
    for reason in REASONS:  # the series exist at 0, so the first refusal shows in increase()
        METRICS.http_refused.labels(reason)
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits, "refused_log": _RefusalLog()})
