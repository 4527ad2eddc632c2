"""The Zendesk connector: signed webhooks (event subscriptions and trigger-connected), cursor-based
incremental export through ``zenpy``, and idempotent internal notes.

Retries: ``zenpy`` would sleep on a 429 for as long as ``Retry-After`` says, in a loop, with real
``time.sleep``. We build it with ``ratelimit_budget=0`` (it never sleeps) and, before ``zenpy`` even sees a
429 from our Zendesk, a response hook turns it into :class:`~kernel.errors.RetryableError` carrying
``Retry-After``; :func:`kernel.retry.call` (with the injected clock) owns every retry.
Normalization lives in :mod:`connectors.zendesk_normalize`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from connectors.base import Connector, Headers, PollPage, WebhookResult, WriteBack, webhook_json
from connectors.settings import ZendeskSettings
from connectors.signing import b64_signatures, check_timestamp, hmac_sha256, matches_any, signed_instant
from connectors.zendesk_normalize import (
    BadTicket,
    Lookups,
    Normalizer,
    Organization,
    apply_organization,
    as_id,
    organization_from_json,
)
from connectors.zendesk_update import ZendeskUpdater
from kernel.errors import (
    ConfigError,
    Kind,
    PermanentError,
    RetryableError,
    SkippableError,
    StatusRule,
    StatusTable,
    TicketpagerError,
    WebhookRejected,
    classify_response,
    network_error,
)
from kernel.model import Origin, StatusCategory, Ticket, TicketChange, TicketUpdate
from kernel.retry import call

log = logging.getLogger(__name__)
T = TypeVar("T")
VENDOR = "zendesk"

# -- vendor facts -----------------------------------------------------------------------------------
# https://developer.zendesk.com/documentation/webhooks/verifying/
SIGNATURE_HEADER = "x-zendesk-webhook-signature"
TIMESTAMP_HEADER = "x-zendesk-webhook-signature-timestamp"
# Per-invocation id: NOT signed, so never trusted for dedupe (a replay may carry any value); a trigger
# delivery is identified by a digest of what is signed instead (timestamp + body).
INVOCATION_HEADER = "x-zendesk-webhook-invocation-id"
# A trigger body must carry the ticket's version (the template in README.md, Zendesk section) unless the
# ticket can be read from the API: https://support.zendesk.com/hc/en-us/articles/4408886858138
NO_VERSION = "the trigger body has no updated_at"
NO_VERSION_FIX = (
    'add "updated_at": "{{ticket.updated_at_with_timestamp}}" to the trigger\'s JSON body (README, Zendesk), '
    "or configure an API token so ticketpager reads the ticket itself"
)
# Static secret Zendesk signs *test* sends of not-yet-saved webhooks with. It is public, so a request
# signed with it proves nothing: accepted only when ``accept_test_secret`` is on, and then never stored.
# https://developer.zendesk.com/documentation/webhooks/verifying/#signing-secrets-on-new-webhooks
TEST_SIGNING_SECRET = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="  # noqa: S105 - documented public value
# https://developer.zendesk.com/api-reference/webhooks/event-types/ticket-events/
EVENT_TYPE_PREFIX = "zen:event-type:"
TICKET_EVENT_PREFIX = "zen:event-type:ticket."
DELETING_EVENTS = frozenset({"ticket.soft_deleted", "ticket.permanently_deleted", "ticket.marked_as_spam"})
# https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
# start_time must be at least a minute in the past; the export omits the newest minute anyway.
EXPORT_MIN_AGE = timedelta(minutes=1)
MAX_PER_PAGE = 1000
# https://developer.zendesk.com/documentation/ticketing/using-the-zendesk-api/side_loading/
SIDELOADS = ["users", "groups", "organizations"]
# Every note we write carries this label followed by WriteBack.marker (idempotency + echo detection).
MARKER_LABEL = "ticketpager-marker:"

_REQUESTS_DOC = "https://developer.zendesk.com/api-reference/introduction/requests/"
_RATE_DOC = "https://developer.zendesk.com/api-reference/introduction/rate-limits/"
_AUTH_DOC = "https://developer.zendesk.com/api-reference/introduction/security-and-auth/"
_TICKETS_DOC = "https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/"
_COMMENTS_DOC = "https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_comments/"

STATUS_TABLE: StatusTable = {
    400: StatusRule(Kind.PERMANENT, _REQUESTS_DOC, "bad request"),
    401: StatusRule(Kind.PERMANENT, _AUTH_DOC, "check the API user's e-mail and API token"),
    403: StatusRule(Kind.PERMANENT, _AUTH_DOC, "the API user lacks permission (agent or admin needed)"),
    404: StatusRule(Kind.SKIPPABLE, _REQUESTS_DOC, "ticket or record not found (deleted?)"),
    # 409: a safe_update whose updated_stamp is stale (an agent edited the ticket since we read it), or a
    # transient DatabaseConflict: nothing was applied; the retried attempt re-reads the ticket first
    409: StatusRule(Kind.RETRYABLE, _TICKETS_DOC + "#protecting-against-ticket-update-collisions", "update conflict"),
    422: StatusRule(Kind.SKIPPABLE, _COMMENTS_DOC, "unprocessable: closed ticket or 5000-comment limit"),
    429: StatusRule(Kind.RETRYABLE, _RATE_DOC, "rate limited; honour Retry-After"),
    500: StatusRule(Kind.RETRYABLE, _REQUESTS_DOC),
    502: StatusRule(Kind.RETRYABLE, _REQUESTS_DOC),
    503: StatusRule(Kind.RETRYABLE, _RATE_DOC, "unavailable or rate limited; honour Retry-After"),
    504: StatusRule(Kind.RETRYABLE, _REQUESTS_DOC),
}


@dataclass(frozen=True, slots=True)
class ZendeskCursor:
    """Where the incremental export resumes: Zendesk's opaque ``after_cursor``, or a first ``start_time``."""

    after_cursor: str | None = None
    start_time: int | None = None  # epoch seconds; only until the first page gave us an after_cursor

    def to_json(self) -> dict[str, Any]:
        return {"after_cursor": self.after_cursor, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ZendeskCursor:
        after, start = data.get("after_cursor"), data.get("start_time")
        if isinstance(after, str) and after:
            return cls(after_cursor=after)
        if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
            return cls(start_time=start)
        raise PermanentError("stored zendesk cursor is invalid (needs after_cursor or start_time)", vendor=VENDOR)


class ZendeskConnector(Connector[ZendeskSettings]):
    """Zendesk Support ↔ ticketpager. See the Zendesk section of README.md for setup."""

    name = "zendesk"

    @property
    def parse_may_block(self) -> bool:
        """Trigger-connected webhooks fetch the canonical ticket when credentials exist."""
        return self.can_poll and self.settings.fetch_canonical

    def _setup(self) -> None:
        self._client: Any = None  # zenpy.Zenpy, built on first use
        self._lock = threading.RLock()
        self._last_export_request: float | None = None
        self._orgs: dict[int, tuple[float, Organization]] = {}
        self._own_versions: OrderedDict[tuple[str, str], None] = OrderedDict()  # (id, updated) of our notes
        self._api_user_id: int | None = None
        self._normalizer = Normalizer(self.base_url, dict(self.settings.custom_field_names))
        self._updater = ZendeskUpdater(
            self._zenpy, self._call, self._get_json, self._remember_own_write, self.clock, self.settings.note_prefix
        )

    # -- configuration -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self.settings.url:
            return self.settings.url.rstrip("/")
        return f"https://{self.settings.subdomain}.zendesk.com" if self.settings.subdomain else ""

    @property
    def can_poll(self) -> bool:
        return bool(self.base_url and self.settings.email and self.settings.api_token.get_secret_value())

    def _zenpy(self) -> Any:
        """The zenpy client on our session, built once, lazily (webhook-only setups have no credentials)."""
        if self._client is not None:
            return self._client
        if not self.can_poll:
            raise ConfigError("zendesk API credentials are not configured (subdomain or url, email, api_token)")
        parts = urlsplit(self.base_url)
        subdomain, dot, domain = parts.netloc.partition(".")
        if parts.scheme not in ("http", "https") or not dot or not subdomain:
            raise ConfigError("zendesk url must look like https://acme.zendesk.com")
        from zenpy import Zenpy
        from zenpy.lib.api import BaseApi

        self.session.hooks["response"].append(self._refuse_rate_limit)
        client = Zenpy(
            subdomain=subdomain,
            domain=domain,
            email=self.settings.email,
            token=self.settings.api_token.get_secret_value(),
            session=self.session,
            timeout=self.settings.timeout_seconds,
            ratelimit_budget=0,  # zenpy must never sleep on a 429 itself (our hook raises first anyway)
            proactive_ratelimit=None,  # its throttle sleeps with time.sleep; we pace with our clock
            disable_cache=True,  # canonical fetches must not be answered from a stale cache
        )
        prefix = parts.path.strip("/")
        for api in vars(client).values():  # zenpy hard-codes https://{subdomain}.{domain}/api/v2
            if isinstance(api, BaseApi):
                api.protocol = parts.scheme
                if prefix:
                    api.api_prefix = f"{prefix}/api/v2"
        self._client = client
        return client

    def _refuse_rate_limit(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        """requests hook: a 429 from our Zendesk becomes RetryableError before zenpy can loop on it."""
        if response.status_code == 429 and str(response.url).startswith(self.base_url):
            raise self._classify(response)
        return response

    def _classify(self, response: requests.Response | None) -> TicketpagerError:
        if response is None:
            return PermanentError("zendesk request failed without a response", vendor=VENDOR)
        error = classify_response(VENDOR, response, STATUS_TABLE, now=self.clock.now())
        return error or PermanentError(f"zendesk answered HTTP {response.status_code} unexpectedly", vendor=VENDOR)

    def _call(self, fn: Callable[[], T], *, attempts: int | None = None) -> T:
        """Run one zenpy operation under our retry policy; vendor failures become kernel.errors kinds."""
        from zenpy.lib.exception import APIException, RatelimitBudgetExceeded, ZenpyException

        def attempt() -> T:
            try:
                with self._lock:
                    return fn()
            except TicketpagerError:
                raise
            except APIException as exc:
                raise self._classify(exc.response) from None
            except RatelimitBudgetExceeded:
                raise RetryableError("zendesk rate limit reached", status=429, vendor=VENDOR) from None
            except requests.HTTPError as exc:
                raise self._classify(exc.response) from None
            except requests.RequestException as exc:
                raise network_error(VENDOR, exc) from None
            except ZenpyException as exc:
                raise PermanentError(f"zendesk client error: {type(exc).__name__}", vendor=VENDOR) from None
            except ValueError:  # a non-JSON body on a 2xx (proxy error page, truncated response)
                raise RetryableError("zendesk answered with a body that is not JSON", vendor=VENDOR) from None

        policy = replace(
            self.retry,
            max_retry_after_seconds=min(self.retry.max_retry_after_seconds, self.settings.ratelimit_budget_seconds),
        )
        if attempts is not None:
            policy = replace(policy, max_attempts=attempts)
        return call(attempt, policy, self.clock)

    def _get_json(self, endpoint: Any) -> Any:
        """GET through zenpy's request path (URL, auth, error checks) but keep the vendor JSON verbatim."""
        api = self._zenpy().tickets
        return api._get(api._build_url(endpoint), raw_response=True).json()

    # -- webhooks ----------------------------------------------------------------------------------
    def verify_webhook(self, headers: Headers, body: bytes) -> None:
        secrets = [s for s in self.settings.webhook_secrets if s.get_secret_value()]
        if not secrets and not self.settings.accept_test_secret:
            if self.insecure:
                return
            raise WebhookRejected(401, "webhook secret not configured")
        signature = (headers.get(SIGNATURE_HEADER) or "").strip()
        if not signature:
            raise WebhookRejected(401, "missing X-Zendesk-Webhook-Signature header")
        stamp = headers.get(TIMESTAMP_HEADER)
        check_timestamp(
            stamp, self.clock.now(), self.settings.signature_tolerance_seconds, "X-Zendesk-Webhook-Signature-Timestamp"
        )
        message = (stamp or "").encode() + body
        expected = b64_signatures(secrets, message)
        if self.settings.accept_test_secret:
            expected.append(_b64_hmac(TEST_SIGNING_SECRET, message))
        if not matches_any(signature, expected):
            raise WebhookRejected(401, "signature mismatch")

    def _signed_with_test_secret(self, headers: Headers, body: bytes) -> bool:
        if not self.settings.accept_test_secret:
            return False
        message = (headers.get(TIMESTAMP_HEADER) or "").encode() + body
        return matches_any((headers.get(SIGNATURE_HEADER) or "").strip(), [_b64_hmac(TEST_SIGNING_SECRET, message)])

    def parse_webhook(self, headers: Headers, body: bytes) -> WebhookResult:
        try:
            return self._parse_webhook(headers, body)
        except WebhookRejected:
            raise
        except BadTicket as exc:
            raise WebhookRejected(400, f"malformed ticket: {exc}") from None
        except (TypeError, KeyError, AttributeError, ValueError):
            log.warning("zendesk webhook: malformed payload", exc_info=True)
            raise WebhookRejected(400, "malformed payload") from None

    def _parse_webhook(self, headers: Headers, body: bytes) -> WebhookResult:
        if not body.strip():
            raise WebhookRejected(400, "empty body")
        if self._signed_with_test_secret(headers, body):
            return WebhookResult(ignored_reason="test_secret")  # anyone can forge these: never stored
        data = webhook_json(body)
        if not isinstance(data, dict):
            raise WebhookRejected(400, "body must be a JSON object")
        kind = data.get("type")
        if isinstance(kind, str) and kind.startswith(EVENT_TYPE_PREFIX):
            return self._parse_event(data, kind)
        if "ticket_id" in data:
            return self._parse_trigger(headers, body, data)
        raise WebhookRejected(
            400, "unrecognised body: expected a zen:event-type:ticket.* event or the trigger template (ticket_id)"
        )

    def _parse_event(self, data: Mapping[str, Any], kind: str) -> WebhookResult:
        """Event subscription envelope: ``id``, ``type``, ``time``, ``detail`` snapshot, ``event``."""
        if not kind.startswith(TICKET_EVENT_PREFIX):
            return WebhookResult(ignored_reason="not_a_ticket_event")
        event_id = data.get("id")
        if not isinstance(event_id, str | int) or isinstance(event_id, bool) or not str(event_id):
            raise WebhookRejected(400, "event id is missing")
        detail = data.get("detail")
        if not isinstance(detail, Mapping):
            raise WebhookRejected(400, "detail (the ticket snapshot) is missing")
        event = data.get("event") if isinstance(data.get("event"), Mapping) else {}
        short = kind.removeprefix(EVENT_TYPE_PREFIX)
        comment = event.get("comment") if isinstance(event, Mapping) else None
        if short == "ticket.comment_added" and self._is_own_note(comment):
            return WebhookResult(ignored_reason="own_note")
        shaped = dict(detail)
        shaped.setdefault("updated_at", data.get("time"))
        ticket = self._normalizer.from_event_detail(shaped, Lookups())
        ticket = replace(ticket, raw=dict(detail))
        if short in DELETING_EVENTS:
            ticket = replace(ticket, status="deleted", status_category=StatusCategory.DELETED)
        ticket = self._with_organization(ticket)
        if not self._wanted(ticket):
            return WebhookResult(ignored_reason="filtered")
        author = comment.get("author") if isinstance(comment, Mapping) else None
        actor = as_id(author.get("id")) if isinstance(author, Mapping) else None
        change = TicketChange(
            ticket=ticket,
            origin=Origin.WEBHOOK,
            delivery_id=f"zendesk:event:{event_id}",
            received_at=self.clock.now(),
            actor=None if actor is None else str(actor),
            event_type=short,
        )
        return WebhookResult(changes=[change])

    def _parse_trigger(self, headers: Headers, body: bytes, data: Mapping[str, Any]) -> WebhookResult:
        """Trigger-connected webhook with our template.

        The ticket's version must come from something signed or from Zendesk itself, never from the receive
        time (a replayed body would then be the newest version and page again): the canonical ticket when
        it can be fetched, else the body's ``updated_at``. A body without ``updated_at`` is reconciled
        against the API (fetched even with ``fetch_canonical`` off) or refused. The delivery id is a digest
        of what is signed (timestamp + body), not the unsigned invocation-id header.
        """
        tid = as_id(data.get("ticket_id"))
        if tid is None:
            raise WebhookRejected(400, "ticket_id is missing or not a number")
        by = data.get("current_user_email")
        if isinstance(by, str) and self.settings.email and by.strip().lower() == self.settings.email.lower():
            return WebhookResult(ignored_reason="own_note")  # the API user only ever writes our notes
        received = self.clock.now()
        versioned = isinstance(data.get("updated_at"), str) and bool(data["updated_at"].strip())
        ticket: Ticket | None = None
        if self.can_poll and (self.settings.fetch_canonical or not versioned):
            try:
                ticket = self._fetch_ticket(tid, attempts=1)  # Zendesk waits ~10 s for our answer
            except SkippableError as exc:
                if not versioned:
                    log.info("zendesk: trigger for ticket %s ignored: %s", tid, exc)
                    return WebhookResult(ignored_reason="not_found")
                log.warning("zendesk: canonical fetch of ticket %s failed (%s); using the webhook body", tid, exc)
            except TicketpagerError as exc:
                if not versioned:
                    raise WebhookRejected(503, f"{NO_VERSION}, and Zendesk could not be asked: retry later") from None
                log.warning("zendesk: canonical fetch of ticket %s failed (%s); using the webhook body", tid, exc)
        sent_at: datetime | None = None
        if ticket is None:
            if not versioned:
                raise WebhookRejected(400, f"{NO_VERSION}: {NO_VERSION_FIX}")
            try:
                ticket = self._with_organization(self._normalizer.from_template(data))
            except BadTicket as exc:
                raise WebhookRejected(400, f"malformed trigger body: {exc}") from None
            # the body's version has minute resolution: the signed send time orders two of the same minute
            sent_at = signed_instant(headers.get(TIMESTAMP_HEADER)) or received
        if not self._wanted(ticket):
            return WebhookResult(ignored_reason="filtered")
        signed = (headers.get(TIMESTAMP_HEADER) or "").encode() + body
        delivery = f"zendesk:trigger:{tid}:{hashlib.sha256(signed).hexdigest()[:40]}"
        change = TicketChange(ticket, Origin.WEBHOOK, delivery, received, event_type="trigger", sent_at=sent_at)
        return WebhookResult(changes=[change])

    def _is_own_note(self, comment: Any) -> bool:
        if not isinstance(comment, Mapping):
            return False
        body = comment.get("body")
        if isinstance(body, str) and (
            MARKER_LABEL in body or (self.settings.note_prefix and body.lstrip().startswith(self.settings.note_prefix))
        ):
            return True
        author = comment.get("author")
        author_id = as_id(author.get("id")) if isinstance(author, Mapping) else None
        return author_id is not None and author_id == self._api_user_id

    def _fetch_ticket(self, ticket_id: int, *, attempts: int | None = None) -> Ticket:
        def fetch() -> Any:
            return self._get_json(self._zenpy().tickets.endpoint(id=ticket_id, include=SIDELOADS))

        data = self._call(fetch, attempts=attempts)
        if not isinstance(data, Mapping) or not isinstance(data.get("ticket"), Mapping):
            raise PermanentError(f"zendesk: unexpected response for ticket {ticket_id}", vendor=VENDOR)
        lookups = self._lookups(data)
        return self._with_organization(self._normalizer.from_api(data["ticket"], lookups))

    # -- organizations (VIP rules) -----------------------------------------------------------------
    def _lookups(self, page: Mapping[str, Any]) -> Lookups:
        lookups = Lookups.from_sideloads(page)
        now = self.clock.monotonic()
        for org in lookups.organizations.values():
            self._orgs[org.id] = (now, org)
        return lookups

    def _organization(self, org_id: int) -> Organization | None:
        cached = self._orgs.get(org_id)
        if cached and self.clock.monotonic() - cached[0] < self.settings.organization_cache_seconds:
            return cached[1]
        if not self.can_poll:
            return cached[1] if cached else None
        try:
            data = self._call(lambda: self._zenpy().organizations(id=org_id).to_dict(), attempts=1)
        except TicketpagerError as exc:
            log.warning("zendesk: organization %s lookup failed (%s)", org_id, exc)
            return cached[1] if cached else None
        org = organization_from_json(data) if isinstance(data, Mapping) else None
        if org is not None:
            self._orgs[org_id] = (self.clock.monotonic(), org)
        return org

    def _with_organization(self, ticket: Ticket) -> Ticket:
        org_id = ticket.attributes.get("organization_id")
        if not isinstance(org_id, int) or ticket.attributes.get("organization_tags") is not None:
            return ticket
        return apply_organization(ticket, self._organization(org_id))

    def _wanted(self, ticket: Ticket) -> bool:
        """The optional group/brand filter; deleted tickets always pass so their incidents resolve."""
        if ticket.status_category is StatusCategory.DELETED:
            return True
        groups, brands = self.settings.group_ids, self.settings.brand_ids
        if groups and ticket.attributes.get("group_id") not in groups:
            return False
        return not (brands and ticket.attributes.get("brand_id") not in brands)

    # -- polling -----------------------------------------------------------------------------------
    def start_cursor(self, since: datetime) -> Mapping[str, Any]:
        latest = self.clock.now() - EXPORT_MIN_AGE
        return ZendeskCursor(start_time=int(min(since, latest).timestamp())).to_json()

    def poll(self, cursor: Mapping[str, Any] | None) -> Iterator[PollPage]:
        if cursor:
            current = ZendeskCursor.from_json(cursor)
        else:
            since = self.clock.now() - timedelta(seconds=self.settings.lookback_seconds)
            current = ZendeskCursor.from_json(self.start_cursor(since))
        while True:
            page = self._call(partial(self._export_page, current))
            after = page.get("after_cursor")
            following = ZendeskCursor(after_cursor=after) if isinstance(after, str) and after else current
            changes, skipped, malformed = self._page_changes(page)
            yield PollPage(changes=changes, cursor=following.to_json(), skipped=skipped, malformed=malformed)
            if page.get("end_of_stream") is True or following == current:
                return
            current = following

    def _export_page(self, cursor: ZendeskCursor) -> Mapping[str, Any]:
        """One request to ``incremental/tickets/cursor.json``, paced to Zendesk's 10 requests/minute."""
        gap = self.settings.min_request_interval_seconds
        if self._last_export_request is not None:
            wait = self._last_export_request + gap - self.clock.monotonic()
            if wait > 0:
                self.clock.sleep(wait)
        self._last_export_request = self.clock.monotonic()
        tickets = self._zenpy().tickets
        # zenpy sends per_page only with start_time; cursor pages get Zendesk's default (1000)
        options = {"include": SIDELOADS, "per_page": max(1, min(self.settings.page_size, MAX_PER_PAGE))}
        if cursor.after_cursor:
            generator = tickets.incremental(cursor=cursor.after_cursor, **options)
        else:
            generator = tickets.incremental(start_time=cursor.start_time, **options)
        page = generator._response_json  # the vendor JSON of exactly this page (zenpy keeps it verbatim)
        if not isinstance(page, Mapping) or not isinstance(page.get("tickets"), list):
            raise RetryableError("zendesk incremental export answered without a tickets list", vendor=VENDOR)
        return page

    def _page_changes(self, page: Mapping[str, Any]) -> tuple[list[TicketChange], int, int]:
        """The page's changes, how many tickets were skipped, and how many of those were malformed."""
        lookups = self._lookups(page)
        now = self.clock.now()
        changes: list[TicketChange] = []
        seen: set[str] = set()
        skipped = malformed = 0
        for raw in page["tickets"]:
            try:
                ticket = self._normalizer.from_api(raw, lookups)
            except BadTicket as exc:
                log.warning("zendesk poll: skipped a ticket: %s", exc)
                skipped += 1
                malformed += 1
                continue
            ticket = self._with_organization(ticket)
            delivery = f"poll:{ticket.id}:{ticket.updated.isoformat()}"
            own = (ticket.id, ticket.updated.isoformat()) in self._own_versions
            if own or delivery in seen or not self._wanted(ticket):
                skipped += 1
                continue
            seen.add(delivery)
            changes.append(TicketChange(ticket, Origin.POLL, delivery, now))
        return changes, skipped, malformed

    # -- write-back --------------------------------------------------------------------------------
    def write_back(self, note: WriteBack) -> None:
        """An internal note (``public: false``), written once per ``note.marker``."""
        if not self.settings.write_back:
            return
        ticket_id = as_id(note.ticket.id)
        if ticket_id is None:
            raise PermanentError(f"zendesk ticket id {note.ticket.id!r} is not a number", vendor=VENDOR)
        body = f"{self.settings.note_prefix} {note.text}".strip() + f"\n\n{MARKER_LABEL} {note.marker}"

        def attempt() -> None:
            from zenpy.lib.api_objects import Comment
            from zenpy.lib.api_objects import Ticket as ZTicket

            client = self._zenpy()
            for comment in client.tickets.comments(ticket=ticket_id):
                if note.marker in (getattr(comment, "body", None) or ""):
                    return  # written by an earlier attempt (or another replica)
            update = ZTicket(id=ticket_id)
            update.comment = Comment(body=body, public=False)
            audit = client.tickets.update(update)
            self._remember_own_write(ticket_id, audit)

        self._call(attempt)

    def update_ticket(self, update: TicketUpdate) -> None:
        """A PagerDuty-side change written onto the ticket (comment, status, group) in one ``safe_update`` PUT,
        once: see :mod:`connectors.zendesk_update`."""
        ticket_id = as_id(update.ticket.id)
        if ticket_id is None:
            raise PermanentError(f"zendesk ticket id {update.ticket.id!r} is not a number", vendor=VENDOR)
        self._updater.apply(ticket_id, update)

    def _remember_own_write(self, ticket_id: int, audit: Any) -> None:
        """The ticket version our note created is an echo: a poll that sees exactly it skips it."""
        author = getattr(getattr(audit, "audit", None), "author_id", None)
        if isinstance(author, int):
            self._api_user_id = author
        updated = getattr(getattr(audit, "ticket", None), "updated_at", None)
        if isinstance(updated, str):
            try:
                stamp = datetime.fromisoformat(updated.replace("Z", "+00:00"))
            except ValueError:
                return
            self._own_versions[(str(ticket_id), stamp.isoformat())] = None
            while len(self._own_versions) > 10_000:
                self._own_versions.popitem(last=False)

    # -- health ------------------------------------------------------------------------------------
    def check(self) -> None:
        def me() -> Any:
            return self._zenpy().users.me()

        try:
            user = self._call(me, attempts=1)
        except RetryableError as exc:
            raise PermanentError(f"zendesk check failed: {exc}", vendor=VENDOR) from None
        user_id = getattr(user, "id", None)
        if not isinstance(user_id, int):
            raise PermanentError("zendesk check failed: the API token did not authenticate a user", vendor=VENDOR)
        self._api_user_id = user_id


def _b64_hmac(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac_sha256(secret, message)).decode()
