"""ServiceNow connector: Table API keyset polling, signed business-rule webhooks, work-note write-back.

**Client.** ServiceNow's maintained ``pysnc`` builds the client (https-only instance URL, session with
``Accept: application/json``, basic auth), the Table API URLs, the ``sysparm_*`` parameters
(:class:`pysnc.GlideRecord` fields / display value / limit) and the write-back (``GlideRecord.get`` +
``update``). Three parts of pysnc get in the way and are replaced by :class:`_TableAPI`, a small subclass
of its ``TableAPI`` on *our* ``requests`` session:

* its ``_validate_response`` raises exceptions that drop the status and headers, so a 429's
  ``Retry-After`` would be lost: we classify every response through :data:`STATUS_TABLE` instead;
* its ``_send`` has no timeout and its ``auto_retry`` mounts urllib3 retries (stacking with ours): we
  build it with ``auto_retry=False`` and send with ``settings.timeout_seconds``;
* its iteration pages by ``sysparm_offset`` and X-Total-Count, which skips rows when records change
  during the scan: we issue one ``table_api.list`` per page and page by keyset ourselves.

**Polling.** ``sys_updated_on>=<UTC watermark>^<admin filter>^ORDERBYsys_updated_on^ORDERBYsys_id``,
raw values (``sysparm_display_value=false``; dates are UTC without offset), explicit ``sysparm_fields``,
names of reference fields by dot-walking (``assignment_group.name``) in the same request. After each page
the next query starts at the last ``sys_updated_on`` read; rows are deduped on (sys_id, sys_updated_on).
When a full page shares one second, that second is finished by ``sys_id`` order. Each run re-reads
``overlap_seconds`` (long transactions commit with an earlier ``sys_updated_on``). ServiceNow silently
ignores invalid query parts, so field names are validated at start-up by a ``sysparm_limit=1`` probe and
rows outside the requested window stop the poll with a :class:`~kernel.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

import requests
from pysnc import ServiceNowClient
from pysnc.client import TableAPI

from connectors.base import Connector, Headers, PollPage, WebhookResult, WriteBack, webhook_json_object
from connectors.servicenow_normalize import (
    ALL_FIELDS,
    REQUIRED_FIELDS,
    Normalizer,
    format_sn_datetime,
    parse_sn_datetime,
)
from connectors.servicenow_update import ServiceNowUpdater
from connectors.settings import ServiceNowSettings
from connectors.signing import b64_signatures, check_timestamp, matches_any
from kernel.clock import Clock
from kernel.errors import (
    ConfigError,
    Kind,
    PermanentError,
    SkippableError,
    StatusRule,
    StatusTable,
    TicketpagerError,
    WebhookRejected,
    classify_response,
    network_error,
)
from kernel.model import Origin, StatusCategory, TicketChange, TicketUpdate
from kernel.retry import call

log = logging.getLogger(__name__)

VENDOR = "servicenow"

# Table API reference (parameters, 404 on empty v1 results, raw vs display values):
TABLE_API_DOC = "https://developer.servicenow.com/dev.do#!/reference/api/latest/rest/c_TableAPI"
# REST API status codes: https://docs.servicenow.com (REST API response codes)
STATUS_CODES_DOC = (
    "https://www.servicenow.com/docs/bundle/zurich-api-reference/page/integrate/inbound-rest/"
    "reference/r_RESTResponseCodes.html"
)
# Inbound REST rate limiting: 429 + Retry-After (seconds), X-RateLimit-* headers.
RATE_LIMIT_DOC = (
    "https://www.servicenow.com/docs/bundle/zurich-api-reference/page/integrate/inbound-rest/"
    "concept/inbound-REST-API-rate-limiting.html"
)

STATUS_TABLE: StatusTable = {
    400: StatusRule(Kind.PERMANENT, STATUS_CODES_DOC, "bad request: check the table name and query"),
    401: StatusRule(Kind.PERMANENT, STATUS_CODES_DOC, "authentication failed: check username and password"),
    403: StatusRule(
        Kind.PERMANENT,
        STATUS_CODES_DOC,
        "forbidden: the integration user lacks a role or ACL on the table (resolving needs itil, closing "
        "itil_admin; group look-ups read sys_user_group)",
    ),
    404: StatusRule(Kind.SKIPPABLE, TABLE_API_DOC, "record not found (API v1 also answers 404 for an empty list)"),
    429: StatusRule(Kind.RETRYABLE, RATE_LIMIT_DOC, "rate limited"),
    500: StatusRule(Kind.RETRYABLE, STATUS_CODES_DOC, "internal error"),
    502: StatusRule(Kind.RETRYABLE, STATUS_CODES_DOC, "bad gateway"),
    503: StatusRule(Kind.RETRYABLE, STATUS_CODES_DOC, "unavailable (instance hibernating or upgrading)"),
    504: StatusRule(Kind.RETRYABLE, STATUS_CODES_DOC, "gateway timeout"),
}

#: Webhook headers (our construction; ServiceNow has no standard signature, see deploy/servicenow/).
SIGNATURE_HEADER = "x-signature"  # base64(HMAC-SHA256(secret, raw body))
TIMESTAMP_HEADER = "x-timestamp"  # epoch seconds, equal to the signed body's "sent_at"
DELIVERY_HEADER = "x-ticketpager-delivery"

# An encoded-query part starts with a field name (lower-case, dot-walks allowed) before its operator.
_QUERY_FIELD = re.compile(r"^[a-z_][a-z0-9_.]*")
_QUERY_PREFIXES = ("EQ", "OR")


def query_field_names(query: str) -> list[str]:
    """Field names used by an encoded query (``active=true^priority<=2^ORurgency=1`` → active, priority, urgency).

    Rejects ``^NQ`` (a new OR-ed query would escape our watermark) and ``ORDERBY`` (it would break keyset
    order) with a :class:`ConfigError`.
    """
    names: list[str] = []
    for part in query.split("^"):
        if not part or part == "EQ":
            continue
        if part.startswith("NQ"):
            raise ConfigError("servicenow.query must not use ^NQ (it would escape the updated-since window)")
        if part.startswith(("ORDERBY", "GROUPBY")):
            raise ConfigError("servicenow.query must not sort or group; ticketpager orders by sys_updated_on")
        if part.startswith(_QUERY_PREFIXES) and not _QUERY_FIELD.match(part):
            part = part[2:]
        match = _QUERY_FIELD.match(part)
        if match and match.group(0) not in names:
            names.append(match.group(0))
    return names


@dataclass(frozen=True, slots=True)
class ServiceNowCursor:
    """Where polling resumes: the highest ``sys_updated_on`` stored, and the rows already stored within
    ``overlap_seconds`` of it as (sys_id, raw sys_updated_on) pairs, so the re-read overlap is deduped."""

    watermark: datetime
    seen: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"watermark": format_sn_datetime(self.watermark), "seen": [list(pair) for pair in self.seen]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceNowCursor:
        try:
            watermark = parse_sn_datetime(data["watermark"])
            seen = tuple((str(a), str(b)) for a, b in data.get("seen") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"stored servicenow cursor is unreadable: {type(exc).__name__}") from None
        if watermark is None:
            raise ConfigError("stored servicenow cursor has no watermark")
        return cls(watermark, seen)


@dataclass(frozen=True, slots=True)
class _Window:
    """One keyset page query: ``sys_updated_on >= / > bound``, or the rest of one second after ``after_id``."""

    bound: datetime
    strict: bool = False
    after_id: str | None = None

    def encoded(self, admin_query: str) -> tuple[str, str]:
        """(encoded query without the final ORDERBY, the final ORDERBY column) for pysnc."""
        stamp = format_sn_datetime(self.bound)
        if self.after_id is not None:
            head = f"sys_updated_on={stamp}^sys_id>{self.after_id}"
            return "^".join(filter(None, (head, admin_query))), "sys_id"
        op = ">" if self.strict else ">="
        head = f"sys_updated_on{op}{stamp}"
        return "^".join(filter(None, (head, admin_query, "ORDERBYsys_updated_on"))), "sys_id"

    def admits(self, updated: datetime) -> bool:
        if self.after_id is not None:
            return updated == self.bound
        return updated > self.bound if self.strict else updated >= self.bound


class _TableAPI(TableAPI):
    """pysnc's Table API on our session: a timeout, no retries, and statuses classified by STATUS_TABLE."""

    def __init__(self, client: ServiceNowClient, timeout: float, clock: Clock) -> None:
        super().__init__(client)
        self._timeout = timeout
        self._clock = clock

    def _send(self, req: requests.Request, stream: bool = False) -> requests.Response:
        session: requests.Session = self.session
        prepared = session.prepare_request(req)
        env = session.merge_environment_settings(prepared.url, {}, stream, None, None)
        try:
            response = session.send(prepared, timeout=self._timeout, **env)
        except requests.RequestException as exc:
            raise network_error(VENDOR, exc) from None
        self._validate_response(response)
        return response

    def _validate_response(self, response: requests.Response) -> None:
        error = classify_response(VENDOR, response, STATUS_TABLE, now=self._clock.now())
        if error is not None:
            raise error


class ServiceNowConnector(Connector[ServiceNowSettings]):
    """Incidents (or any task table) from ServiceNow; see the module docstring for the design."""

    name: ClassVar[str] = "servicenow"

    def _setup(self) -> None:
        settings = self.settings
        self.normalizer = Normalizer(
            instance_url=settings.instance_url,
            table=settings.table,
            state_map=settings.state_map,
            priority_labels=settings.priority_labels,
        )
        self._client: ServiceNowClient | None = None
        self._fields: list[str] | None = None  # validated sysparm_fields (after the start-up probe)
        self._updater = ServiceNowUpdater(
            self.settings,
            lambda: self.client().instance,
            lambda request: self.client().table_api._send(request),
            lambda fn: call(fn, self.retry, self.clock),
            self.clock,
        )

    @property
    def can_poll(self) -> bool:
        return bool(self.settings.instance_url and self.settings.username and self.settings.password.get_secret_value())

    # -- client -----------------------------------------------------------------------------------
    def client(self) -> ServiceNowClient:
        """The pysnc client, built on first use (webhook-only deployments have no API credentials)."""
        if self._client is None:
            if not self.can_poll:
                raise ConfigError(
                    "servicenow API credentials are not configured "
                    "(TICKETPAGER_SERVICENOW__INSTANCE_URL, __USERNAME, __PASSWORD)"
                )
            self.session.auth = requests.auth.HTTPBasicAuth(
                self.settings.username, self.settings.password.get_secret_value()
            )
            try:
                client = ServiceNowClient(self.settings.instance_url, self.session, auto_retry=False)
            except Exception as exc:  # noqa: BLE001 - pysnc raises plain exceptions for bad URLs
                raise ConfigError(f"servicenow.instance_url is not usable: {exc}") from None
            client.table_api = _TableAPI(client, self.settings.timeout_seconds, self.clock)
            self._client = client
        return self._client

    def _list(
        self, table: str, fields: list[str], query: str, order: str, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One Table API GET (retried by our policy): the result rows and X-Total-Count."""
        client = self.client()

        def fetch() -> tuple[list[dict[str, Any]], int | None]:
            gr = client.GlideRecord(table, batch_size=limit)
            gr.fields = list(fields)
            gr.display_value = False
            gr.add_encoded_query(query)
            gr.order_by(order)
            try:
                response = client.table_api.list(gr)
            except SkippableError as exc:
                if exc.status == 404:  # API v1: an empty result is a 404
                    return [], 0
                raise
            try:
                rows = response.json()["result"]
            except (ValueError, KeyError, TypeError):
                raise PermanentError(f"servicenow answered a non-Table-API body for {table}", vendor=VENDOR) from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise PermanentError(f"servicenow answered an unexpected result for {table}", vendor=VENDOR)
            total = response.headers.get("X-Total-Count")
            return rows, int(total) if total and total.isdigit() else None

        return call(fetch, self.retry, self.clock)

    # -- start-up validation ----------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Probe the table once (``sysparm_limit=1``) and return the fields to request.

        ServiceNow ignores unknown field names in ``sysparm_fields`` and ``sysparm_query`` instead of
        failing, so a misspelled filter would poll the whole table. A returned row lists every requested
        field that exists; one the admin's filter names but the row lacks is a :class:`ConfigError`.
        """
        if self._fields is not None:
            return self._fields
        table = self.settings.table
        admin_fields = query_field_names(self.settings.query)
        wanted = list(dict.fromkeys([*ALL_FIELDS, *admin_fields]))
        rows, _ = self._list(table, wanted, "", "sys_id", 1)
        if not rows:
            log.warning("servicenow table %s is empty: field names cannot be validated yet", table)
            return [f for f in ALL_FIELDS]  # not cached: validate again on the next poll
        present = set(rows[0])

        def exists(name: str) -> bool:
            return name in present or name.split(".", 1)[0] in present

        missing_admin = [f for f in admin_fields if not exists(f)]
        if missing_admin:
            raise ConfigError(
                f"servicenow.query names field(s) {', '.join(missing_admin)} that table {table!r} does not "
                "have; ServiceNow would ignore that part of the filter and return the whole table"
            )
        missing_required = [f for f in REQUIRED_FIELDS if f not in present]
        if missing_required:
            raise ConfigError(
                f"servicenow table {table!r} lacks {', '.join(missing_required)} (or the integration user "
                "cannot read them); ticketpager needs them to poll"
            )
        self._fields = [f for f in ALL_FIELDS if exists(f)]
        absent = sorted(set(ALL_FIELDS) - set(self._fields))
        if absent:
            log.info("servicenow table %s has no %s; those attributes stay empty", table, ", ".join(absent))
        return self._fields

    # -- polling ----------------------------------------------------------------------------------
    def start_cursor(self, since: datetime) -> Mapping[str, Any]:
        return ServiceNowCursor(since).to_json()

    def poll(self, cursor: Mapping[str, Any] | None) -> Iterator[PollPage]:
        if cursor is None:
            start = ServiceNowCursor(self.clock.now() - timedelta(seconds=self.settings.lookback_seconds))
        else:
            start = ServiceNowCursor.from_json(cursor)
        admin_query = self.settings.query.strip().strip("^")
        query_field_names(admin_query)  # rejects ^NQ / ORDERBY before any request
        fields = self.validate()
        overlap = timedelta(seconds=self.settings.overlap_seconds)
        limit = max(1, self.settings.page_size)
        watermark = start.watermark
        seen = dict.fromkeys(start.seen)
        window = _Window(watermark - overlap)
        while True:
            query, order = window.encoded(admin_query)
            rows, total = self._list(self.settings.table, fields, query, order, limit)
            updates = [self._row_updated(row) for row in rows]
            self._check_window(window, updates)
            changes: list[TicketChange] = []
            skipped = malformed = 0
            for row in rows:
                key = (str(row.get("sys_id")), str(row.get("sys_updated_on")))
                if key in seen:
                    skipped += 1
                    continue
                seen[key] = None
                change = self._poll_change(row)
                if change is None:
                    skipped += 1
                    malformed += 1
                    continue
                changes.append(change)
            if updates:
                watermark = max(watermark, updates[-1])
            floor = format_sn_datetime(watermark - overlap)
            seen = {k: None for k in seen if k[1] >= floor}
            yield PollPage(changes, ServiceNowCursor(watermark, tuple(seen)).to_json(), skipped, malformed)
            next_window = self._next_window(window, rows, updates, total, limit)
            if next_window is None:
                return
            window = next_window

    def _next_window(
        self,
        window: _Window,
        rows: list[dict[str, Any]],
        updates: list[datetime],
        total: int | None,
        limit: int,
    ) -> _Window | None:
        """The keyset query after a page, or ``None`` when the window is exhausted."""
        if window.after_id is not None:  # finishing one crowded second by sys_id
            if len(rows) >= limit:
                return _Window(window.bound, after_id=str(rows[-1]["sys_id"]))
            return _Window(window.bound, strict=True)
        if len(rows) < limit:
            if not rows and total:
                raise ConfigError(
                    f"servicenow reports {total} rows of {self.settings.table!r} in the window but returned "
                    "none: sysparm_limit applies before ACLs, so the integration user must be able to read "
                    "every row the filter matches"
                )
            return None
        last = updates[-1]
        if last > window.bound:
            return _Window(last)
        # a full page inside one second: finish that second in sys_id order, then move past it
        return _Window(last, after_id=str(rows[-1]["sys_id"]))

    def _row_updated(self, row: Mapping[str, Any]) -> datetime:
        try:
            updated = parse_sn_datetime(row.get("sys_updated_on"))
        except ValueError:
            updated = None
        if updated is None:
            raise ConfigError(
                f"servicenow row {row.get('sys_id')!r} has no raw sys_updated_on "
                "(is sysparm_display_value being forced by a proxy or scripted REST?)"
            )
        return updated

    def _check_window(self, window: _Window, updates: list[datetime]) -> None:
        """Rows outside the requested window or order mean ServiceNow ignored our query: stop, loudly."""
        for index, updated in enumerate(updates):
            if not window.admits(updated) or (window.after_id is None and index and updated < updates[index - 1]):
                raise ConfigError(
                    f"servicenow returned a row updated {format_sn_datetime(updated)} outside the requested "
                    f"window (from {format_sn_datetime(window.bound)}, ordered by sys_updated_on): the "
                    f"instance ignored part of the query; check servicenow.query ({self.settings.query!r}) "
                    f"and servicenow.table ({self.settings.table!r})"
                )

    def _poll_change(self, row: Mapping[str, Any]) -> TicketChange | None:
        try:
            ticket = self.normalizer.ticket(row)
        except ValueError as exc:
            log.warning("servicenow: skipping an unreadable row: %s", exc)
            return None
        return TicketChange(
            ticket=ticket,
            origin=Origin.POLL,
            delivery_id=f"poll:{ticket.id}:{ticket.updated.isoformat()}",
            received_at=self.clock.now(),
            actor=_str_or_none(row.get("sys_updated_by")),
            event_type="poll",
        )

    # -- webhooks ---------------------------------------------------------------------------------
    def verify_webhook(self, headers: Headers, body: bytes) -> None:
        secrets = [s for s in self.settings.webhook_secrets if s.get_secret_value()]
        tokens = [t.get_secret_value() for t in self.settings.bearer_tokens if t.get_secret_value()]
        if not secrets and not tokens:
            if self.insecure:
                return
            raise WebhookRejected(401, "webhook secret not configured")
        signature = headers.get(SIGNATURE_HEADER)
        if signature is not None and secrets:
            stamp = headers.get(TIMESTAMP_HEADER)
            check_timestamp(stamp, self.clock.now(), self.settings.signature_tolerance_seconds, "X-Timestamp")
            if not matches_any(signature.strip(), b64_signatures(secrets, body)):
                raise WebhookRejected(401, "invalid X-Signature")
            # the timestamp header is not signed; the signed body's sent_at must repeat it
            sent_at = webhook_json_object(body).get("sent_at")
            if str(sent_at) != str(stamp).strip():
                raise WebhookRejected(401, "X-Timestamp does not match the signed body's sent_at")
            return
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if tokens and scheme.lower() == "bearer" and token.strip():
            if matches_any(token.strip(), tokens):
                return
            raise WebhookRejected(401, "invalid bearer token")
        raise WebhookRejected(401, "missing X-Signature/X-Timestamp or Authorization: Bearer header")

    def parse_webhook(self, headers: Headers, body: bytes) -> WebhookResult:
        payload = webhook_json_object(body)
        record = payload.get("record")
        if not isinstance(record, dict):
            raise WebhookRejected(400, "body has no 'record' object")
        table = payload.get("table")
        if table is not None and table != self.settings.table:
            return WebhookResult(ignored_reason="other_table")
        author = _str_or_none(record.get("sys_updated_by"))
        if author and self.settings.username and author == self.settings.username:
            return WebhookResult(ignored_reason="own_write_back")
        try:
            ticket = self.normalizer.ticket(record)
        except ValueError as exc:
            raise WebhookRejected(400, f"invalid record: {exc}") from None
        event = payload.get("event")
        if event == "delete":
            ticket = replace(ticket, status_category=StatusCategory.DELETED)
        delivery = self._delivery(headers, body, payload)
        if not isinstance(delivery, str) or not delivery:
            delivery = f"{ticket.id}:{record.get('sys_mod_count', '')}:{record.get('sys_updated_on')}"
        change = TicketChange(
            ticket=ticket,
            origin=Origin.WEBHOOK,
            delivery_id=f"webhook:{delivery}",  # a long one is hashed when stored (kernel.model)
            received_at=self.clock.now(),
            actor=author,
            event_type=str(event) if isinstance(event, str) else None,
        )
        return WebhookResult(changes=[change])

    def _delivery(self, headers: Headers, body: bytes, payload: Mapping[str, Any]) -> object:
        """The delivery id: from what is signed when the body is HMAC-signed (the signed body's ``delivery_id``,
        else a digest of the body), never the unsigned ``X-Ticketpager-Delivery`` header, or a replay inside the
        window with a new header value would be a new delivery (and ``sys_updated_on`` has one-second
        resolution, so it could be processed again). A bearer request may name it in the header."""
        hmac_signed = any(s.get_secret_value() for s in self.settings.webhook_secrets)
        if hmac_signed and headers.get(SIGNATURE_HEADER) is not None:
            signed = payload.get("delivery_id")
            return signed if isinstance(signed, str) and signed else "sha256:" + hashlib.sha256(body).hexdigest()
        return headers.get(DELIVERY_HEADER) or payload.get("delivery_id")

    # -- write-back -------------------------------------------------------------------------------
    def note_text(self, note: WriteBack) -> str:
        """The work note: our prefix first (echo detection), the marker last (idempotency)."""
        text = note.text.strip()
        prefix = self.settings.work_note_prefix
        if prefix and not text.startswith(prefix):
            text = f"{prefix} {text}"
        if note.marker not in text:
            text = f"{text}\n{note.marker}"
        return text

    def write_back(self, note: WriteBack) -> None:
        if not self.settings.write_back:
            return
        client = self.client()
        table = self._table_from(note.ticket.url or "") or self.settings.table
        text = self.note_text(note)

        def once() -> None:
            # re-checked on every attempt: a PATCH whose answer was lost must not write a second note
            if self._has_note(note.ticket.id, note.marker):
                return
            gr = client.GlideRecord(table, batch_size=1)
            gr.fields = ["sys_id", "work_notes"]
            gr.display_value = False
            try:
                found = gr.get(note.ticket.id)
            except SkippableError as exc:
                raise SkippableError(
                    f"servicenow record {note.ticket.key} no longer exists", status=exc.status, vendor=VENDOR
                ) from None
            if not found:
                raise SkippableError(f"servicenow record {note.ticket.key} no longer exists", vendor=VENDOR)
            if gr.get_element("work_notes") is None:
                # pysnc only sends fields it marks changed, and a field the GET did not return is
                # created unchanged: create it empty first so the real value below counts as a change
                gr.set_value("work_notes", "")
            gr.set_value("work_notes", text)
            gr.update()

        call(once, self.retry, self.clock)

    def update_ticket(self, update: TicketUpdate) -> None:
        """A PagerDuty-side change written onto the record (work note or comment, state with its close code and
        notes, assignment group) in one PATCH, once: see :mod:`connectors.servicenow_update`."""
        table = self._table_from(update.ticket.url or "") or self.settings.table
        self.client()  # a clear ConfigError without credentials
        self._updater.apply(table, update.ticket.id, update.ticket.key, update)

    def _has_note(self, sys_id: str, marker: str) -> bool:
        """Whether a work note carrying ``marker`` already exists (journal entries live in sys_journal_field)."""
        escaped = marker.replace("^", "^^")
        query = f"element_id={sys_id}^element=work_notes^valueLIKE{escaped}"
        client = self.client()
        gr = client.GlideRecord("sys_journal_field", batch_size=1)
        gr.fields = ["sys_id"]
        gr.display_value = False
        gr.add_encoded_query(query)
        try:
            response = client.table_api.list(gr)
        except SkippableError as exc:
            if exc.status == 404:
                return False
            raise
        try:
            return bool(response.json()["result"])
        except (ValueError, KeyError, TypeError):
            raise PermanentError("servicenow answered a non-Table-API body for sys_journal_field") from None

    def _table_from(self, url: str) -> str | None:
        match = re.search(r"uri=([a-z0-9_]+)\.do", url)
        return match.group(1) if match else None

    # -- health -----------------------------------------------------------------------------------
    def check(self) -> None:
        try:
            query_field_names(self.settings.query)
            self._fields = None
            self.validate()
        except TicketpagerError:
            raise
        except Exception as exc:  # noqa: BLE001 - readiness must report, not crash
            raise PermanentError(f"servicenow check failed: {type(exc).__name__}") from None


def _str_or_none(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("value")
    if value is None or value == "":
        return None
    return str(value)
