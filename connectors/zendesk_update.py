"""Zendesk: carry out a :class:`~kernel.model.TicketUpdate` — what PagerDuty's side did — on a ticket, once, with
one ticket PUT protected against concurrent edits.

Each attempt re-reads: the comments (a comment carrying ``update.marker`` means the update is done), then the
ticket (its ``updated_at``, status and group). Then one ``PUT /api/v2/tickets/{id}.json`` carries the comment
(public, or an internal note: ``public: false``), the new status and the group id, with ``safe_update: true``
and ``updated_stamp`` = the ``updated_at`` just read: if an agent changed the ticket in between, Zendesk
applies nothing and answers 409, which is retryable — the next attempt re-reads and decides again
(``shared/notes/pagerduty-two-way.md`` §4.2; without ``safe_update`` a stale write would win silently).

Group names are resolved to ids through ``GET /api/v2/groups`` (zenpy ``groups()``), cached for
:data:`GROUP_CACHE_SECONDS`; an unknown name is a :class:`~kernel.errors.PermanentError` listing the known ones.
``Transition.fields`` is not used here (Zendesk has no transition screens); a status is named
(``open``, ``pending``, ``hold``, ``solved``, ``closed``) or given by category.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kernel.clock import Clock
from kernel.errors import PermanentError
from kernel.model import StatusCategory, TicketUpdate, Transition

VENDOR = "zendesk"
MARKER_LABEL = "ticketpager-marker:"  # the same label as the notes (connectors.zendesk): echo detection knows it

# https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#json-format (status values)
STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
#: Our categories as a Zendesk status (a ticket cannot be put back to "new").
CATEGORY_STATUS = {StatusCategory.IN_PROGRESS: "open", StatusCategory.DONE: "solved"}
# https://developer.zendesk.com/api-reference/ticketing/groups/groups/
GROUP_CACHE_SECONDS = 600.0
GROUP_MISS_REFRESH_SECONDS = 60.0  # an unknown name re-reads the groups at most this often


def target_status(move: Transition) -> str:
    """The Zendesk status ``move`` asks for, or :class:`PermanentError` saying why there is none."""
    if move.status:
        status = move.status.strip().lower()
        if status not in STATUSES:
            raise PermanentError(f"zendesk has no status '{move.status}' (one of {', '.join(STATUSES)})", vendor=VENDOR)
        return status
    if move.category in CATEGORY_STATUS:
        return CATEGORY_STATUS[move.category]
    raise PermanentError(
        f"zendesk cannot move a ticket to category '{move.category}' (only in_progress → open, done → solved)",
        vendor=VENDOR,
    )


def comment_body(update: TicketUpdate, prefix: str) -> str:
    """Our prefix (echo detection), the text, the incident link, and the marker last."""
    text = f"{prefix} {update.comment or ''}".strip()
    if update.incident_url and update.incident_url not in text:
        number = f" #{update.incident_number}" if update.incident_number is not None else ""
        text += f"\n\nPagerDuty incident{number}: {update.incident_url}"
    return f"{text}\n\n{MARKER_LABEL} [{update.marker}]"  # bracketed: a copy into PagerDuty is never mirrored back


class ZendeskUpdater:
    """Ticket updates with the connector's zenpy client. ``call(fn)`` runs ``fn`` under the connector's retry
    policy (409 → retried attempt, which re-reads); ``get_json(endpoint)`` reads vendor JSON verbatim;
    ``remember(ticket_id, audit)`` marks the version our write created as an echo."""

    def __init__(
        self,
        client: Callable[[], Any],
        call: Callable[[Callable[[], Any]], Any],
        get_json: Callable[[Any], Any],
        remember: Callable[[int, Any], None],
        clock: Clock,
        note_prefix: str,
    ) -> None:
        self._client = client
        self._call = call
        self._get_json = get_json
        self._remember = remember
        self._clock = clock
        self._prefix = note_prefix
        self._groups: dict[str, int] = {}
        self._groups_at: float | None = None

    def apply(self, ticket_id: int, update: TicketUpdate) -> None:
        status = target_status(update.transition) if update.transition is not None else None
        self._call(lambda: self._once(ticket_id, update, status))

    def _once(self, ticket_id: int, update: TicketUpdate, status: str | None) -> None:
        from zenpy.lib.api_objects import Comment  # zenpy is imported on first use, as in connectors.zendesk
        from zenpy.lib.api_objects import Ticket as ZTicket

        client = self._client()
        for comment in client.tickets.comments(ticket=ticket_id):
            if update.marker in (getattr(comment, "body", None) or ""):
                return  # written by an earlier attempt (or another replica)
        data = self._get_json(client.tickets.endpoint(id=ticket_id))
        current = data.get("ticket") if isinstance(data, Mapping) else None
        if not isinstance(current, Mapping) or not isinstance(current.get("updated_at"), str):
            raise PermanentError(f"zendesk: unexpected answer reading ticket {ticket_id}", vendor=VENDOR)
        change = ZTicket(id=ticket_id)
        change.comment = Comment(body=comment_body(update, self._prefix), public=update.public)
        if status is not None and current.get("status") != status:
            change.status = status
        if update.group:
            group_id = self.group_id(update.group)
            if current.get("group_id") != group_id:
                change.group_id = group_id
        change.safe_update = True  # 409 instead of overwriting an agent's edit made since we read
        change.updated_stamp = current["updated_at"]
        audit = client.tickets.update(change)
        self._remember(ticket_id, audit)

    def group_id(self, name: str) -> int:
        """The id of the group called ``name`` (case-insensitive), from the cached list."""
        now = self._clock.monotonic()
        age = None if self._groups_at is None else now - self._groups_at
        key = name.strip().casefold()
        if age is None or age >= GROUP_CACHE_SECONDS or (key not in self._groups and age >= GROUP_MISS_REFRESH_SECONDS):
            groups = {}
            for group in self._client().groups():
                gid, gname = getattr(group, "id", None), getattr(group, "name", None)
                if isinstance(gid, int) and isinstance(gname, str):
                    groups[gname.strip().casefold()] = gid
            self._groups, self._groups_at = groups, now
        if key not in self._groups:
            known = ", ".join(sorted(self._groups)[:20]) or "none visible to the API user"
            raise PermanentError(f"zendesk has no group named '{name}' (known: {known})", vendor=VENDOR)
        return self._groups[key]
