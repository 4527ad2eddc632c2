"""The delivery worker routes the reverse direction's outbox rows by their destination (issue 16): a
``ticket_update`` row to the ticket's system (here Jira, the fake server), an ``incident_update`` row to
``pagerduty_rest`` (the PagerDuty REST fake, spec-checked); each sent once, and no write-back note follows
them (that is only for incident events)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from kernel.clock import FakeClock
from kernel.model import IncidentUpdate, TicketRef, TicketUpdate
from sync.schema import outbox
from tests.fakes.jira_server import FakeJira, make_issue
from tests.fakes.pagerduty_rest import BOT_EMAIL, TOKEN, FakePagerDutyRest
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service
from tests.test_pagerduty_rest import paged
from ticketpager.service import DESTINATIONS


def _row(clock: FakeClock, **values: Any) -> dict[str, Any]:
    row = {
        "source": "jira",
        "connection": "jira",
        "ticket_id": "10042",
        "ticket_key": "OPS-12",
        "rule": "ops-highest",
        "generation": 1,
        "dedup_key": "ticketpager/jira/10042/ops-highest/1",
        "routing_key": "",
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": clock.now(),
        "created_at": clock.now(),
    }
    return row | values


def test_ticket_and_incident_updates_go_to_their_destinations_once(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    assert "pagerduty_rest" in DESTINATIONS
    with MockPagerDuty() as events, FakePagerDutyRest() as pd, FakeJira(deployment="Cloud") as jira:
        jira.put(make_issue("10042", "OPS-12", updated=clock.now(), base_url=jira.url))
        incident_id = paged(pd, key="ticketpager/jira/10042/ops-highest/1")
        svc = make_service(
            db_url,
            rules_path,
            events.url,
            clock,
            pagerduty={"api_url": pd.url, "api_token": TOKEN, "from_email": BOT_EMAIL, "from_user_id": "PBOT001"},
            jira={"enabled": True, "url": jira.url, "email": "bot@example.com", "api_token": "t0ken",
                  "deployment": "cloud", "write_back": True},
        )  # fmt: skip
        destinations = svc.destinations()
        ticket = TicketUpdate(
            TicketRef("jira", "10042", "OPS-12"),
            marker="tp:Q1:PEV1:ops-highest",
            comment="Acknowledged in PagerDuty by Jane Doe",
            incident_url=f"https://acme.pagerduty.com/incidents/{incident_id}",
        )
        incident = IncidentUpdate(incident_id, "ticketpager/jira/10042/ops-highest/1", "tp:grp:1", "PEP0002")
        with svc.store.begin() as conn:
            conn.execute(
                insert(outbox),
                [
                    _row(clock, kind=TicketUpdate.KIND, destination="jira", action="acknowledged",
                         body=destinations["jira"].render(ticket).body),
                    _row(clock, kind=IncidentUpdate.KIND, destination="pagerduty_rest", action="reassign",
                         body=destinations["pagerduty_rest"].render(incident).body),
                ],
            )  # fmt: skip

        svc.process_all()
        svc.process_all()

        with svc.store.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.kind, outbox.c.status, outbox.c.last_error)).all()
        assert sorted(tuple(r) for r in rows) == [("incident_update", "sent", None), ("ticket_update", "sent", None)]
        notes = [c["body"] for cs in jira.comments.values() for c in cs]
        assert len(notes) == 1 and "tp:Q1:PEV1:ops-highest" in notes[0]
        assert pd.state.incidents[incident_id]["escalation_policy"]["id"] == "PEP0002"
        assert len(pd.state.notes[incident_id]) == 1
        assert events.events == []  # nothing went to the Events API
        assert pd.spec_errors == []
        svc.store.dispose()
