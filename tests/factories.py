"""Builders for normalized tickets and changes used across the core tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kernel.model import FieldChange, Origin, StatusCategory, Ticket, TicketChange

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def ticket(
    id: str = "10001",
    *,
    source: str = "jira",
    key: str | None = None,
    priority: str | None = "Highest",
    status: str = "To Do",
    category: StatusCategory = StatusCategory.NEW,
    minutes: float = 0,
    title: str = "Checkout is down",
    **extra: Any,
) -> Ticket:
    attributes = extra.pop("attributes", {"project": "OPS"})
    return Ticket(
        source=source,
        id=id,
        key=key or f"OPS-{id}",
        title=title,
        status=status,
        status_category=category,
        updated=T0 + timedelta(minutes=minutes),
        created=T0,
        url=f"https://example.atlassian.net/browse/{key or 'OPS-' + id}",
        priority=priority,
        attributes=attributes,
        **extra,
    )


def change(
    t: Ticket,
    delivery_id: str | None = None,
    *,
    origin: Origin = Origin.WEBHOOK,
    changes: tuple[FieldChange, ...] | None = None,
) -> TicketChange:
    return TicketChange(
        ticket=t,
        origin=origin,
        delivery_id=delivery_id or f"wh-{t.id}-{t.updated.isoformat()}-{t.status}",
        received_at=t.updated,
        changes=changes,
    )


RULES = """
version: 1
rules:
  - name: ops-highest
    description: Highest-priority OPS issues page the platform on-call.
    source: jira
    when:
      project: OPS
      priority: [Highest, P1]
    trigger:
      routing_key: ${PD_PLATFORM_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
    acknowledge_when: {status_category: in_progress}
    resolve_when: {status_category: done}
"""

ROUTING_KEY = "R0UT1NGKEY00000000000000000platform"
