"""An in-memory ticketing system, injected as the ``jira`` connector, for the two-way tests that need the ticket
side to act like a real one without an HTTP server: it holds tickets, applies ticket updates (comment,
transition, group) and notes the way the connectors do (once per marker, and a write moves ``updated``, like
Jira), counts every write attempt by marker, and hands each change back as the ticket webhook the system would
send (:attr:`MemoryDesk.webhooks`), for the test to deliver when, and as often, as it likes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from connectors.base import Connector, Headers, PollPage, WebhookResult, WriteBack
from connectors.settings import JiraSettings
from kernel.clock import Clock
from kernel.model import Origin, StatusCategory, Ticket, TicketChange, TicketUpdate
from tests.fakes.timeline import Timeline

CATEGORY_STATUS = {
    StatusCategory.NEW: "To Do",
    StatusCategory.IN_PROGRESS: "In Progress",
    StatusCategory.DONE: "Done",
}


class MemoryDesk(Connector[JiraSettings]):
    name = "jira"

    def __init__(self, clock: Clock) -> None:
        super().__init__(JiraSettings(enabled=True, write_back=True), clock=clock)

    def _setup(self) -> None:
        self.tickets: dict[str, Ticket] = {}
        self.comments: dict[str, list[str]] = {}  # ticket id → comment texts (each ends with its marker)
        self.attempts: Counter[str] = Counter()  # every write asked for, by marker (a repeated row shows here)
        self.webhooks: list[TicketChange] = []  # every change, as the system's webhook would carry it
        self.timeline: Timeline | None = None  # shared with PagerDuty's fake: one wall clock for both
        self._deliveries = 0

    def _at(self, updated: datetime) -> datetime:
        return self.timeline.after(updated) if self.timeline is not None else updated

    # -- what people do in the ticketing system ----------------------------------------------------------------
    def put(self, ticket: Ticket) -> TicketChange:
        ticket = replace(ticket, updated=self._at(ticket.updated))
        self.tickets[ticket.id] = ticket
        return self._emit(ticket)

    def edit(self, ticket_id: str, **fields: Any) -> TicketChange:
        """A person's edit: the fields change and ``updated`` moves on a minute."""
        current = self.tickets[ticket_id]
        if "status_category" in fields and "status" not in fields:
            fields["status"] = CATEGORY_STATUS[fields["status_category"]]
        edited = replace(current, updated=self._at(current.updated + timedelta(minutes=1)), **fields)
        self.tickets[ticket_id] = edited
        return self._emit(edited)

    def _emit(self, ticket: Ticket) -> TicketChange:
        self._deliveries += 1
        change = TicketChange(
            ticket=ticket, origin=Origin.WEBHOOK, delivery_id=f"desk-{self._deliveries}", received_at=self.clock.now()
        )
        self.webhooks.append(change)
        return change

    def marked(self, ticket_id: str) -> Counter[str]:
        """How many comments of the ticket carry each marker (what the agent sees repeated)."""
        found: Counter[str] = Counter()
        for text in self.comments.get(ticket_id, []):
            found[text.rsplit("[", 1)[-1].rstrip("]")] += 1
        return found

    # -- what ticketpager writes (the connector's side) -----------------------------------------------------
    def _write(self, ticket_id: str, marker: str, comment: str | None, **fields: Any) -> None:
        self.attempts[marker] += 1
        ticket = self.tickets[ticket_id]
        texts = self.comments.setdefault(ticket_id, [])
        if any(text.endswith(f"[{marker}]") for text in texts):
            return  # the connectors' marker check: written once
        texts.append(f"{comment or ''} [{marker}]")
        # a comment moves `updated` by a second (like Jira); a field change is a new version of the ticket
        self.tickets[ticket_id] = replace(ticket, updated=self._at(ticket.updated + timedelta(seconds=1)), **fields)
        self._emit(self.tickets[ticket_id])

    def update_ticket(self, update: TicketUpdate) -> None:
        fields: dict[str, Any] = {}
        if update.transition is not None:
            move = update.transition
            category = move.category or next(
                (c for c, s in CATEGORY_STATUS.items() if move.status and s.casefold() == move.status.casefold()),
                StatusCategory.IN_PROGRESS,
            )
            fields.update(status=move.status or CATEGORY_STATUS[category], status_category=category)
        if update.group:
            fields["assignment_group"] = update.group
        self._write(update.ticket.id, update.marker, update.comment, **fields)

    def write_back(self, note: WriteBack) -> None:
        self._write(note.ticket.id, note.marker, note.text)

    # -- unused here: webhooks are handed over as TicketChange, nothing is polled -------------------------------
    def verify_webhook(self, headers: Headers, body: bytes) -> None:
        raise NotImplementedError

    def parse_webhook(self, headers: Headers, body: bytes) -> WebhookResult:
        raise NotImplementedError

    def start_cursor(self, since: datetime) -> Mapping[str, Any]:
        return {}

    def poll(self, cursor: Mapping[str, Any] | None) -> Iterator[PollPage]:
        return iter(())

    def check(self) -> None:
        pass

    @property
    def can_poll(self) -> bool:
        return True  # so the service counts it among the sources that get write-back notes
