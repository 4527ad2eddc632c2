"""The Jira connector (Cloud and Data Center): signed admin webhooks, reconciling JQL polls, comments.

* Webhooks: ``X-Hub-Signature: sha256=<hex HMAC of the raw body>`` checked in constant time against
  every configured secret; deduped on ``X-Atlassian-Webhook-Identifier``; ``jira:issue_created`` /
  ``_updated`` / ``_deleted`` become changes, every other event is ignored with a bounded reason.
* Polling: ``(<admin JQL>) AND updated >= "<watermark − overlap, in the API user's zone>" ORDER BY
  updated ASC, key ASC``. Cloud pages through ``/search/jql`` (``enhanced_search_issues``,
  ``nextPageToken``, explicit ``fields``) and never touches the removed ``/search``; Data Center pages
  through ``/rest/api/2/search`` by keyset (re-querying from the last page's minute) so an issue updated
  mid-scan cannot shift another one out of the result. Re-reads of the overlap are deduped on
  ``(issue id, updated)`` through :class:`JiraCursor`.
* Write-back: one comment per ``WriteBack.marker``; our own comments are recognised and never page.
  Ticket updates from PagerDuty's side (comment, transition, group, remote link): :mod:`connectors.jira_update`.

The ``jira`` client is built lazily (webhook-only deployments have no API credentials), with its own
retries off (``max_retries=0``); every call runs under :func:`kernel.retry.call` and every HTTP error is
classified through :data:`STATUS_TABLE`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import requests
from jira import JIRA, JIRAError

from connectors.base import Connector, Headers, PollPage, WebhookResult, WriteBack, webhook_json_object
from connectors.jira_normalize import (
    WIDEST_OFFSET,
    adf_text,
    changelog_changes,
    display_name_fields,
    issue_to_ticket,
    jql_literal,
    parse_jira_time,
    user_zone,
)
from connectors.jira_update import JiraUpdater
from connectors.settings import JiraSettings
from connectors.signing import hex_signatures, matches_any
from kernel.errors import (
    ConfigError,
    Kind,
    PermanentError,
    StatusRule,
    StatusTable,
    TicketpagerError,
    WebhookRejected,
    classify_response,
    network_error,
)
from kernel.model import Origin, Ticket, TicketChange, TicketUpdate
from kernel.redact import redact
from kernel.retry import RetryPolicy, call

log = logging.getLogger(__name__)
T = TypeVar("T")

VENDOR = "jira"

_REST = "https://developer.atlassian.com/cloud/jira/platform/rest/v2/intro/#status-codes"
_RATE = "https://developer.atlassian.com/cloud/jira/platform/rate-limiting/"
STATUS_TABLE: StatusTable = {
    400: StatusRule(
        Kind.PERMANENT,
        "https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issue-search/",
        "Jira rejected the request: check TICKETPAGER_JIRA__JQL (polls), or a ticket update's transition "
        "fields / TICKETPAGER_JIRA__GROUP_FIELD value (a field not on the screen, an unknown option)",
    ),
    401: StatusRule(
        Kind.PERMANENT,
        "https://developer.atlassian.com/cloud/jira/platform/basic-auth-for-rest-apis/",
        "authentication failed: check TICKETPAGER_JIRA__EMAIL and TICKETPAGER_JIRA__API_TOKEN",
    ),
    403: StatusRule(
        Kind.PERMANENT,
        _REST,
        "the API user lacks a permission (Browse projects, Add comments; ticket updates: Transition issues, "
        "Edit issues, Link issues) or CAPTCHA blocks it",
    ),
    404: StatusRule(Kind.SKIPPABLE, _REST, "issue not found or not visible to the API user"),
    # CHANGE-2046: Cloud removed /rest/api/{2,3}/search; it answers 410 Gone.
    410: StatusRule(
        Kind.PERMANENT,
        "https://developer.atlassian.com/changelog/#CHANGE-2046",
        "endpoint removed by Atlassian; set TICKETPAGER_JIRA__DEPLOYMENT=cloud",
    ),
    429: StatusRule(Kind.RETRYABLE, _RATE, "rate limited; Retry-After honoured"),
    500: StatusRule(Kind.RETRYABLE, _REST),
    502: StatusRule(Kind.RETRYABLE, _REST),
    503: StatusRule(Kind.RETRYABLE, _RATE, "unavailable; Retry-After honoured"),
    504: StatusRule(Kind.RETRYABLE, _REST),
}

# Webhook events we turn into changes; the rest are answered 202 and counted as ignored.
# https://developer.atlassian.com/cloud/jira/platform/webhooks/#issue-related-events
EVENT_CREATED = "jira:issue_created"
EVENT_UPDATED = "jira:issue_updated"
EVENT_DELETED = "jira:issue_deleted"
HANDLED_EVENTS = frozenset({EVENT_CREATED, EVENT_UPDATED, EVENT_DELETED})

# https://developer.atlassian.com/cloud/jira/platform/webhooks/#secure-admin-webhooks
SIGNATURE_HEADER = "x-hub-signature"
SIGNATURE_METHOD = "sha256"
# Unique per delivery and unchanged across Jira's retries, but outside the signature: whoever holds one signed body
# could replay it under fresh identifiers, each stored and processed again. The dedupe key is therefore a digest of
# the signed body (a retry sends the same bytes), as for Zendesk; the header is only logged.
DELIVERY_HEADER = "x-atlassian-webhook-identifier"

# Fields every poll asks for (Cloud /search/jql returns only ids unless ``fields`` is explicit).
# https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issue-search/#api-rest-api-2-search-jql-get
NEEDED_FIELDS = (
    "summary",
    "status",
    "priority",
    "updated",
    "created",
    "labels",
    "components",
    "assignee",
    "reporter",
    "project",
    "issuetype",
    "resolution",
    "description",
)

MARKER_LABEL = "ticketpager-marker"
COMMENT_SCAN = 100  # newest comments searched for a marker (a retried write-back is recent)
LOOKUP_TTL_SECONDS = 3600.0  # /myself and /field are re-read at most hourly (profile zone, new fields)
NAMES_RETRY_SECONDS = 60.0  # after a failed field-list fetch, Jira is not asked again for this long
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class JiraCursor:
    """Where polling resumes: the newest ``updated`` stored, plus what was seen inside the overlap.

    ``seen`` (issue id → ``updated`` ISO, UTC) is pruned to the window the next query can re-read, so
    it stays small; it is what makes the overlap re-read free of duplicates.
    """

    watermark: datetime
    seen: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "watermark": self.watermark.astimezone(UTC).isoformat(), "seen": dict(self.seen)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JiraCursor:
        try:
            watermark = datetime.fromisoformat(str(data["watermark"]))
            seen = data.get("seen") or {}
            if not isinstance(seen, Mapping):
                raise TypeError("seen")
            if watermark.tzinfo is None:
                watermark = watermark.replace(tzinfo=UTC)
            return cls(watermark.astimezone(UTC), {str(k): str(v) for k, v in seen.items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"stored Jira poll cursor is unreadable ({exc!r})", vendor=VENDOR) from None


@dataclass(slots=True)
class _Lookups:
    """Per-client facts read once and cached (``/serverInfo``, ``/myself``, ``/field``)."""

    cloud: bool
    zone: ZoneInfo | None = None
    account_id: str | None = None
    myself_at: float | None = None
    field_names: dict[str, str] = field(default_factory=dict)
    fields_at: float | None = None


class JiraConnector(Connector[JiraSettings]):
    """Jira Cloud / Data Center ↔ ticketpager (see the module docstring for the strategy)."""

    name = "jira"

    def _setup(self) -> None:
        self._lock = threading.RLock()
        self._client: JIRA | None = None
        self._lookups: _Lookups | None = None
        self._names_failed_at: float | None = None
        self._names_outage = False  # the last failure was retryable (Jira down), not a refusal

    # -- capabilities ------------------------------------------------------------------------------
    @property
    def can_poll(self) -> bool:
        return bool(self.settings.url and self.settings.api_token.get_secret_value())

    @property
    def parse_may_block(self) -> bool:
        """Whether ``parse_webhook`` may call Jira (only until the custom-field names are cached): the app then
        runs it off the event loop."""
        loaded = self._lookups is not None and self._lookups.fields_at is not None
        return self.can_poll and not loaded

    # -- webhooks ------------------------------------------------------------------------------------
    def verify_webhook(self, headers: Headers, body: bytes) -> None:
        if not self.settings.webhook_configured:
            if self.insecure:
                return
            raise WebhookRejected(401, "webhook secret not configured")
        header = _header(headers, SIGNATURE_HEADER)
        if not header:
            raise WebhookRejected(401, "missing X-Hub-Signature header")
        method, sep, signature = header.strip().partition("=")
        if not sep or method.strip().lower() != SIGNATURE_METHOD or not signature.strip():
            raise WebhookRejected(401, "X-Hub-Signature must be sha256=<hex HMAC of the body>")
        expected = hex_signatures(self.settings.webhook_secrets, body)
        if not matches_any(signature.strip().lower(), expected):
            raise WebhookRejected(401, "invalid X-Hub-Signature")

    def parse_webhook(self, headers: Headers, body: bytes) -> WebhookResult:
        payload = webhook_json_object(body)
        event = payload.get("webhookEvent")
        if not isinstance(event, str) or not event:
            raise WebhookRejected(400, "missing webhookEvent")
        if event not in HANDLED_EVENTS:
            return WebhookResult(ignored_reason="unhandled_event")
        if self._is_own_comment(payload):
            return WebhookResult(ignored_reason="own_comment")
        names = self._webhook_field_names()
        if names is None and event == EVENT_DELETED:  # a deletion resolves whatever the fields say
            names = {}
        if names is None:  # the API is configured, but Jira did not tell us the custom field names
            by_name = display_name_fields(self.rule_custom_fields())
            if by_name:  # evaluated without them, those rules would silently not match (or resolve)
                raise WebhookRejected(
                    503,
                    f"Jira custom field names unavailable and rules read custom.{by_name[0]}: retry later "
                    "(Jira retries 5xx; the poller reconciles)",
                )
            names = {}
        try:
            ticket = issue_to_ticket(
                payload.get("issue"),  # type: ignore[arg-type]  # validated inside
                base_url=self.settings.url,
                field_names=names,
                deleted=event == EVENT_DELETED,
            )
        except ValueError as exc:
            raise WebhookRejected(400, f"invalid issue: {exc}") from None
        if event == EVENT_DELETED:
            # ``issue`` is the state before deletion: date the deletion itself so it is not "older".
            stamp = payload.get("timestamp")
            if isinstance(stamp, int | float) and not isinstance(stamp, bool):
                try:
                    deleted_at = datetime.fromtimestamp(stamp / 1000, UTC)
                except (OverflowError, OSError, ValueError):
                    raise WebhookRejected(400, "invalid timestamp") from None
                ticket = replace(ticket, updated=max(ticket.updated, deleted_at))
        changes = changelog_changes(payload.get("changelog"), names) if event == EVENT_UPDATED else ()
        delivery = "sha256:" + hashlib.sha256(body).hexdigest()  # the signed bytes, not the unsigned identifier
        change = TicketChange(
            ticket=ticket,
            origin=Origin.WEBHOOK,
            delivery_id=f"jira:{delivery}",
            received_at=self.clock.now(),
            changes=changes or None,
            actor=_actor(payload.get("user")),
            event_type=event,
        )
        return WebhookResult(changes=[change])

    def _is_own_comment(self, payload: Mapping[str, Any]) -> bool:
        """An update that only adds ticketpager's own comment (our write-back echoing back)."""
        if payload.get("webhookEvent") != EVENT_UPDATED:
            return False
        changelog = payload.get("changelog")
        if isinstance(changelog, Mapping) and changelog.get("items"):
            return False
        comment = payload.get("comment")
        if not isinstance(comment, Mapping):
            return False
        text = adf_text(comment.get("body"))
        prefix = self.settings.comment_prefix
        if MARKER_LABEL in text or (prefix and text.lstrip().startswith(prefix)):
            return True
        own = self._lookups.account_id if self._lookups else None
        return own is not None and _actor(comment.get("author")) == own

    def _webhook_field_names(self) -> dict[str, str] | None:
        """Custom field display names if we can get them cheaply (cached; one try, never blocks long):
        ``{}`` without API credentials (webhook-only: names are never known), ``None`` when Jira failed."""
        if self._lookups is not None and self._lookups.fields_at is not None:
            return self._lookups.field_names
        if not self.can_poll:
            return {}
        # Only an outage is waited out (None: 503 until Jira answers). A refused token would refuse every
        # webhook for good, so then webhooks go through without names (the poll errors and /readyz say why).
        now = self.clock.monotonic()
        if self._names_failed_at is not None and now - self._names_failed_at < NAMES_RETRY_SECONDS:
            return None if self._names_outage else {}  # asked a moment ago: do not slow every webhook down
        try:
            client, lookups = self._ready(retry=False)
            self._load_fields(client, lookups, retry=False)
            return lookups.field_names
        except TicketpagerError as exc:
            self._names_failed_at, self._names_outage = now, exc.kind is Kind.RETRYABLE
            log.warning("jira: custom field names unavailable for a webhook: %s", exc)
            return None if self._names_outage else {}

    # -- polling -------------------------------------------------------------------------------------
    def start_cursor(self, since: datetime) -> Mapping[str, Any]:
        return JiraCursor(since.astimezone(UTC)).to_json()

    def poll(self, cursor: Mapping[str, Any] | None) -> Iterator[PollPage]:
        state = (
            JiraCursor.from_json(cursor)
            if cursor
            else JiraCursor(self.clock.now() - timedelta(seconds=self.settings.lookback_seconds))
        )
        client, lookups = self._ready()
        self._load_myself(client, lookups)
        self._load_fields(client, lookups)
        fields = self._poll_fields()
        since = state.watermark - timedelta(seconds=self.settings.overlap_seconds)
        yield from self._paginate(client, lookups, state, since, fields, CLOUD if lookups.cloud else DATA_CENTER)

    def _paginate(
        self,
        client: JIRA,
        lookups: _Lookups,
        state: JiraCursor,
        since: datetime,
        fields: list[str],
        api: _SearchApi,
    ) -> Iterator[PollPage]:
        """The one search loop of both flavours: query, normalize the page, yield it (with the cursor after
        it), and ask ``api`` for the next request (``None``: done). Only the call and the paging differ."""
        request: _SearchRequest | None = _SearchRequest(since)
        while request is not None:
            jql = self._jql(jql_literal(request.lower, lookups.zone))
            result = self._call(partial(api.search, client, jql, request, self.settings.page_size, list(fields)))
            if not isinstance(result, Mapping):
                raise PermanentError(f"jira client returned no {api.name} search result", vendor=VENDOR)
            issues = result.get("issues") or []
            page, state, newest = self._page(issues, state, lookups)
            yield page
            request = api.next(request, result, issues, newest, lookups.zone)

    def _page(self, issues: Any, state: JiraCursor, lookups: _Lookups) -> tuple[PollPage, JiraCursor, datetime | None]:
        """Normalize one result page, drop overlap re-reads, and compute the cursor after it."""
        now = self.clock.now()
        seen = dict(state.seen)
        watermark = state.watermark
        newest: datetime | None = None
        changes: list[TicketChange] = []
        skipped = malformed = 0
        for raw in issues if isinstance(issues, list) else []:
            try:
                ticket = issue_to_ticket(raw, base_url=self.settings.url, field_names=lookups.field_names)
            except ValueError as exc:
                skipped += 1
                malformed += 1
                log.warning("jira: skipping a malformed issue in search results: %s", exc)
                continue
            newest = ticket.updated if newest is None else max(newest, ticket.updated)
            previous = parse_jira_time(seen.get(ticket.id))
            if previous is not None and previous >= ticket.updated:
                skipped += 1
                continue
            seen[ticket.id] = ticket.updated.astimezone(UTC).isoformat()
            watermark = max(watermark, ticket.updated.astimezone(UTC))
            changes.append(_poll_change(ticket, now))
        horizon = watermark - timedelta(seconds=self.settings.overlap_seconds) - _MINUTE
        if lookups.zone is None:
            horizon -= WIDEST_OFFSET
        kept = {k: v for k, v in seen.items() if (parse_jira_time(v) or horizon) >= horizon}
        cursor = JiraCursor(watermark, kept)
        page = PollPage(changes=changes, cursor=cursor.to_json(), skipped=skipped, malformed=malformed)
        return page, cursor, newest

    def _jql(self, literal: str) -> str:
        base = self.settings.jql.strip()
        if " order by " in f" {base.lower()} ":
            raise ConfigError("TICKETPAGER_JIRA__JQL must not contain ORDER BY (ticketpager orders by updated)")
        window = f"updated >= {literal}"
        return (
            f"({base}) AND {window} ORDER BY updated ASC, key ASC"
            if base
            else (f"{window} ORDER BY updated ASC, key ASC")
        )

    def _poll_fields(self) -> list[str]:
        extra = [f for f in self.settings.extra_fields if f and f not in NEEDED_FIELDS]
        return [*NEEDED_FIELDS, *extra]

    # -- write-back ----------------------------------------------------------------------------------
    def write_back(self, note: WriteBack) -> None:
        if not self.settings.write_back:
            return
        if not self.can_poll:
            log.info("jira: write-back skipped for %s: no API credentials configured", note.ticket.key)
            return
        client, _ = self._ready()
        body = self.comment_body(note)
        issue = note.ticket.id or note.ticket.key

        def once() -> None:
            # Check then write inside one attempt: a retried attempt re-checks, so a POST that
            # succeeded but timed out is never written twice.
            existing = client.comments(issue, order_by="-created", max_results=COMMENT_SCAN)
            if any(note.marker in adf_text(getattr(c, "body", "")) for c in existing):
                return
            client.add_comment(issue, body)

        self._call(once)

    def update_ticket(self, update: TicketUpdate) -> None:
        """A PagerDuty-side change written onto the issue (comment, transition, group, remote link), once:
        see :mod:`connectors.jira_update`."""
        if not self.can_poll:
            raise PermanentError(
                f"jira: cannot update {update.ticket.key}: TICKETPAGER_JIRA__URL and __API_TOKEN are not set",
                vendor=VENDOR,
            )
        client, _ = self._ready()
        JiraUpdater(self.settings, self._call).apply(client, update)

    def comment_body(self, note: WriteBack) -> str:
        """The comment text: prefix, what happened, the dedup key, and the idempotency marker."""
        head = f"{self.settings.comment_prefix} PagerDuty {note.action.value} (rule {note.rule})".strip()
        lines = [head]
        if note.text:
            lines.append(note.text)
        lines.append(f"Dedup key: {note.dedup_key}")
        lines.append(f"{MARKER_LABEL}: {note.marker}")
        return "\n".join(lines)

    # -- health --------------------------------------------------------------------------------------
    def check(self) -> None:
        if not self.can_poll:
            if self.settings.webhook_configured or self.insecure:
                return  # webhook-only deployment
            raise ConfigError(
                "jira: set TICKETPAGER_JIRA__URL and TICKETPAGER_JIRA__API_TOKEN (polling) "
                "or TICKETPAGER_JIRA__WEBHOOK_SECRETS (webhooks)"
            )
        self._jql('"2000/01/01 00:00"')  # validates the configured filter
        client, lookups = self._ready()
        self._load_myself(client, lookups, force=True)

    # -- the client and its cached lookups -----------------------------------------------------------
    def _ready(self, *, retry: bool = True) -> tuple[JIRA, _Lookups]:
        """The client, built on first use, and whether it talks to Cloud (``/serverInfo`` unless configured)."""
        with self._lock:
            if self._client is not None and self._lookups is not None:
                return self._client, self._lookups
            if not self.can_poll:
                raise ConfigError("jira: TICKETPAGER_JIRA__URL and TICKETPAGER_JIRA__API_TOKEN are not set")
            client = self._client or self._build_client()
            self._client = client
            if self.settings.deployment == "auto":
                info = self._call(client.server_info, retry=retry)
                cloud = isinstance(info, Mapping) and info.get("deploymentType") == "Cloud"
            else:
                cloud = self.settings.deployment == "cloud"
            # The client picks /search/jql only when it believes it is on Cloud; tell it what we found.
            client.deploymentType = "Cloud" if cloud else "Server"
            self._lookups = _Lookups(cloud=cloud)
            log.info("jira: talking to %s at %s", "Cloud" if cloud else "Data Center", self.settings.url)
            return client, self._lookups

    def _build_client(self) -> JIRA:
        token = self.settings.api_token.get_secret_value()
        auth: dict[str, Any] = (
            {"basic_auth": (self.settings.email, token)} if self.settings.email else {"token_auth": token}
        )
        client = JIRA(
            server=self.settings.url,
            options={"check_update": False, "rest_api_version": "2"},
            get_server_info=False,  # we call /serverInfo ourselves, under our retry policy
            max_retries=0,  # our retry policy is the only one: retries never stack
            timeout=self.settings.timeout_seconds,
            logging=False,
            **auth,
        )
        # Send through our HTTP stack (adapters, proxies, TLS settings) while keeping the client's
        # error handling and timeout.
        for prefix, adapter in self.session.adapters.items():
            client._session.mount(prefix, adapter)
        client._session.verify = self.session.verify
        client._session.proxies.update(self.session.proxies)
        client._session.trust_env = self.session.trust_env
        return client

    def _load_myself(self, client: JIRA, lookups: _Lookups, *, force: bool = False) -> None:
        """``/myself``: the profile time zone JQL dates are read in, and our account (echo detection)."""
        now = self.clock.monotonic()
        if not force and lookups.myself_at is not None and now - lookups.myself_at < LOOKUP_TTL_SECONDS:
            return
        me = self._call(client.myself)
        me = me if isinstance(me, Mapping) else {}
        lookups.zone = user_zone(me.get("timeZone"))
        if lookups.zone is None:
            log.warning(
                "jira: /myself has no usable timeZone (%r); widening the JQL window by %s",
                me.get("timeZone"),
                WIDEST_OFFSET,
            )
        lookups.account_id = _actor(me)
        lookups.myself_at = now

    def _load_fields(self, client: JIRA, lookups: _Lookups, *, retry: bool = True) -> None:
        """``/rest/api/2/field`` once: custom field display names, shared with the client's own cache."""
        now = self.clock.monotonic()
        if lookups.fields_at is not None and now - lookups.fields_at < LOOKUP_TTL_SECONDS:
            return
        listed = self._call(client.fields, retry=retry)
        names: dict[str, str] = {}
        clauses: dict[str, str] = {f: f for f in NEEDED_FIELDS}  # never empty: no refetch per search
        for item in listed if isinstance(listed, list) else []:
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
                continue
            if item.get("custom") and isinstance(item.get("name"), str):
                names[item["id"]] = item["name"]
            for clause in item.get("clauseNames") or []:
                clauses[str(clause)] = item["id"]
        # The client would otherwise GET /field again before its first search (same list, same purpose).
        client._fields_cache_value = clauses
        lookups.field_names = names
        lookups.fields_at = now

    def _call(self, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run one client call under our retry policy, translating its failures into our error kinds."""

        def attempt() -> T:
            try:
                return fn()
            except JIRAError as exc:
                # Never chain or print JIRAError: its str() includes the request headers (credentials).
                error = (
                    classify_response(VENDOR, exc.response, STATUS_TABLE, now=self.clock.now())
                    if exc.response is not None
                    else None
                )
                if error is None:
                    error = PermanentError(redact(f"jira client error: {exc.text or 'unknown'}"), vendor=VENDOR)
                raise error from None
            except requests.RequestException as exc:
                raise network_error(VENDOR, exc) from None

        policy = self.retry if retry else RetryPolicy(max_attempts=1)
        return call(attempt, policy, self.clock)


def _poll_change(ticket: Ticket, now: datetime) -> TicketChange:
    return TicketChange(
        ticket=ticket,
        origin=Origin.POLL,
        delivery_id=f"poll:{ticket.id}:{ticket.updated.astimezone(UTC).isoformat()}",
        received_at=now,
        changes=None,
    )


def _actor(user: Any) -> str | None:
    """A stable user id: Cloud ``accountId``, Data Center ``key`` / ``name``."""
    if isinstance(user, Mapping):
        for key in ("accountId", "key", "name"):
            if isinstance(user.get(key), str) and user[key]:
                return str(user[key])
    return None


def _header(headers: Headers, name: str) -> str | None:
    """A header by its lower-case name: the app hands them over lower-cased (the connector interface);
    other callers may not, so fall back to a case-insensitive look-up."""
    value = headers.get(name)
    if value is None:
        value = {str(k).lower(): v for k, v in headers.items()}.get(name)
    return value


__all__ = ["STATUS_TABLE", "JiraConnector", "JiraCursor"]


# -- search paging: one loop (JiraConnector._paginate), two flavours -------------------------------------
@dataclass(frozen=True, slots=True)
class _SearchRequest:
    """One search call: the JQL window's lower bound and the position inside its results."""

    lower: datetime
    token: str | None = None  # Cloud's opaque nextPageToken
    start_at: int = 0  # Data Center's offset (only inside one crowded minute)


@dataclass(frozen=True, slots=True)
class _SearchApi:
    """How one Jira flavour searches (``search``) and pages (``next``: the request after a page, or ``None``)."""

    name: str
    search: Callable[[JIRA, str, _SearchRequest, int, list[str]], Any]
    next: Callable[[_SearchRequest, Mapping[str, Any], Any, datetime | None, ZoneInfo | None], _SearchRequest | None]


def _cloud_search(client: JIRA, jql: str, request: _SearchRequest, size: int, fields: list[str]) -> Any:
    # https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issue-search/#api-rest-api-2-search-jql-get
    return client.enhanced_search_issues(
        jql, nextPageToken=request.token, maxResults=size, fields=fields, json_result=True
    )


def _cloud_next(
    request: _SearchRequest, result: Mapping[str, Any], issues: Any, newest: datetime | None, zone: ZoneInfo | None
) -> _SearchRequest | None:
    """``/search/jql`` pages via ``nextPageToken`` (Cloud has no ``startAt`` and no ``total``)."""
    token = result.get("nextPageToken") or None
    if not token or result.get("isLast") is True:
        return None
    return replace(request, token=str(token))


def _datacenter_search(client: JIRA, jql: str, request: _SearchRequest, size: int, fields: list[str]) -> Any:
    # https://docs.atlassian.com/software/jira/docs/api/REST/9.12.0/#api/2/search-searchUsingSearchRequest
    return client.search_issues(jql, startAt=request.start_at, maxResults=size, fields=fields, json_result=True)


def _datacenter_next(
    request: _SearchRequest, result: Mapping[str, Any], issues: Any, newest: datetime | None, zone: ZoneInfo | None
) -> _SearchRequest | None:
    """``/rest/api/2/search`` by keyset: each page re-queries from the minute of the newest issue seen.

    Offset paging over ``ORDER BY updated`` skips an issue whenever an earlier one is updated mid-scan
    (everything shifts left). Restarting from the last minute (re-reads are deduped) only falls back to
    ``startAt`` inside one minute holding a full page of issues.
    """
    total = result.get("total")
    if not issues or (isinstance(total, int) and request.start_at + len(issues) >= total):
        return None
    if newest is not None and jql_literal(newest, zone) != jql_literal(request.lower, zone):
        return _SearchRequest(newest)
    return replace(request, start_at=request.start_at + len(issues))


CLOUD = _SearchApi("Cloud", _cloud_search, _cloud_next)
DATA_CENTER = _SearchApi("Data Center", _datacenter_search, _datacenter_next)
