"""The two-way world the reassignment and loop tests run in: the real service (engine, reverse worker, delivery)
on a fake clock, the Events API mock, the PagerDuty REST fake (which also builds the v3 webhooks) and an
in-memory ticketing system (:class:`tests.fakes.memory_desk.MemoryDesk`) injected as Jira.

Nothing is delivered by itself: the test decides when (and how often, in which order) each ticket webhook and
each PagerDuty webhook reaches the service, and :meth:`World.forward_pages` plays what PagerDuty does with the
Events API events the service sent."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from connectors.pagerduty_webhooks import parse_event
from kernel.clock import FakeClock
from kernel.model import TicketChange
from sync.schema import decisions, links, outbox
from sync.store import Store
from tests.fakes.memory_desk import MemoryDesk
from tests.fakes.pagerduty_rest import BOT_EMAIL, TOKEN, Delivery, FakePagerDutyRest
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.fakes.timeline import Timeline
from tests.harness import receive
from ticketpager.service import Service
from ticketpager.settings import Settings

MARKER_LABEL = "ticketpager-marker:"

RULES = """
version: 1
groups: [Service Desk, Network, Network Ops]
rules:
  - name: ops-highest
    description: Highest-priority OPS issues page; PagerDuty and the issue stay in step.
    source: jira
    when: {project: OPS, priority: Highest}
    trigger:
      routing_key: ${PD_PLATFORM_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
    acknowledge_when: {status_category: in_progress}
    resolve_when: {status_category: done}
    escalation_policies:
      groups: {Service Desk: PEP0001, Network: PEP0002, Network Ops: PEP0002}
      reverse: {PEP0001: Service Desk, PEP0002: Network}
      on_group_change: %(on_group_change)s
    sync_back:
      acknowledged: true
      annotated: true
      delegated: {set_group: true}
      resolved:
        comment: "Resolved in PagerDuty by {{ agent.name }}"
%(transition)s"""


@dataclass
class World:
    svc: Service
    desk: MemoryDesk
    pd: FakePagerDutyRest
    events: MockPagerDuty
    forwarded: int = 0
    triggers: Counter[str] = field(default_factory=Counter)
    agents: dict[str, str] = field(default_factory=dict)  # PagerDuty event id → who acted (user or integration id)
    kinds: dict[str, str] = field(default_factory=dict)  # PagerDuty event id → its event type

    # -- the two streams ----------------------------------------------------------------------------------------
    def ticket_webhook(self, change: TicketChange) -> None:
        receive(self.svc, [change])

    def pagerduty_webhook(self, delivery: Delivery) -> None:
        """Store one v3 webhook as ``POST /webhooks/pagerduty`` does (deduplicated by ``X-Webhook-Id``)."""
        event = parse_event(delivery.body)
        self.agents[event.event_id] = event.agent.id if event.agent else ""
        self.kinds[event.event_id] = event.event_type.value
        self.svc.store_pagerduty_webhook(delivery.headers["X-Webhook-Id"], event, delivery.body)

    def forward_pages(self) -> int:
        """What PagerDuty does with the Events API events the service sent since the last call."""
        new = self.events.events[self.forwarded :]
        self.forwarded += len(new)
        for event in new:
            if event["event_action"] == "trigger":
                self.triggers[event["dedup_key"]] += 1
            self.pd.apply_event(event)
        return len(new)

    def run(self) -> tuple[int, int]:
        """The service's workers until nothing is due (engine, reverse worker, delivery)."""
        processed, delivered = self.svc.process_all()
        return processed, delivered + self.forward_pages()

    def settle(self, rounds: int = 30) -> int:
        """Deliver every queued webhook in order and run, until quiet; returns the rounds it took (the test
        asserts it stays bounded: no ping-pong between the two systems)."""
        for done in range(1, rounds + 1):
            tickets, self.desk.webhooks = self.desk.webhooks, []
            hooks, self.pd.outbox = self.pd.outbox, []
            for change in tickets:
                self.ticket_webhook(change)
            for hook in hooks:
                self.pagerduty_webhook(hook)
            processed, delivered = self.run()
            if not (tickets or hooks or processed or delivered):
                return done
        raise AssertionError(f"still busy after {rounds} rounds: the two systems keep answering each other")

    # -- what the test looks at ---------------------------------------------------------------------------------
    def incident_of(self, dedup_key: str) -> dict[str, Any] | None:
        for incident_id, alerts in self.pd.state.alerts.items():
            if any(a["alert_key"] == dedup_key for a in alerts):
                return self.pd.state.incidents[incident_id]
        return None

    def pd_markers(self) -> Counter[str]:
        """Our notes on PagerDuty's incidents, by marker."""
        found: Counter[str] = Counter()
        for notes in self.pd.state.notes.values():
            for note in notes:
                if MARKER_LABEL in note["content"]:
                    found[note["content"].rsplit(MARKER_LABEL, 1)[1].strip()] += 1
        return found

    def rest_calls(self, method: str, suffix: str = "") -> list[Any]:
        return [r for r in self.pd.requests if r.method == method and r.path.endswith(suffix)]

    def link_rows(self) -> list[dict[str, Any]]:
        with self.svc.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(links)).mappings()]

    def outbox_counts(self) -> dict[str, int]:
        with self.svc.store.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all()
        return {str(s): int(n) for s, n in rows}

    def decisions(self) -> list[dict[str, Any]]:
        with self.svc.store.engine.connect() as conn:
            rows = conn.execute(select(decisions).order_by(decisions.c.id)).mappings()
            return [dict(r) | {"detail": json.loads(r["detail"] or "{}")} for r in rows]


def rules_dir(tmp: Path, on_group_change: str = "reassign", *, resolved_transition: bool = True) -> Path:
    """The rule file; ``resolved_transition``: a resolve in PagerDuty also moves the ticket to done."""
    path = tmp / "rules"
    path.mkdir(exist_ok=True)
    transition = "        transition: {category: done}\n" if resolved_transition else ""
    (path / "ops.yaml").write_text(RULES % {"on_group_change": on_group_change, "transition": transition})
    return path


def build(
    db_url: str,
    rules: Path,
    clock: FakeClock,
    pd: FakePagerDutyRest,
    events: MockPagerDuty,
    *,
    from_user_id: str = "PBOT001",
) -> World:
    """``from_user_id=""``: only FROM_EMAIL is configured; the service resolves the id itself."""
    desk = MemoryDesk(clock)
    desk.timeline = pd.timeline = Timeline()  # a move in PagerDuty after a ticket edit is stamped after it
    pd.subscribe("http://testserver/webhooks/pagerduty", "pd-webhook-secret-loop")
    config = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=db_url,
        rules_path=rules,
        pagerduty={
            "events_url": events.url,
            "api_url": pd.url,
            "api_token": TOKEN,
            "from_email": BOT_EMAIL,
            "from_user_id": from_user_id,
            "webhook_secrets": ["pd-webhook-secret-loop"],
        },
        jira={"enabled": True, "write_back": True},
    )
    store = Store(db_url)
    store.upgrade()
    return World(Service(config, clock=clock, store=store, connectors={"jira": desk}), desk, pd, events)
