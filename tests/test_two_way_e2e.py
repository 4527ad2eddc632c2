"""End to end, both ways, per ticketing system (issue 16): the real service in-process (HTTP app, engine, reverse
worker, delivery) on an injected clock, against local fakes of the ticketing system, PagerDuty's Events API and
PagerDuty's REST API (which sends the signed v3 webhooks).

ticket webhook → page (the Events API fake gets the trigger; the REST fake opens the incident from it) → the
webhook of our own trigger writes the incident's number and link onto the ticket once (Jira: and a remote link)
→ a person acknowledges in PagerDuty → the ticket gets a note and the configured transition → a person adds a
PagerDuty note → it is mirrored once (a redelivery with the same ``X-Webhook-Id``, and one with a new id, still
once) → the ticket is done → the resolve goes to the Events API → the echo of our own resolve writes nothing.
Our own comment and transition coming back as ticket webhooks page, acknowledge and resolve nothing. Every
write is counted at the vendor fake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.schema import pagerduty_inbox
from tests.fakes.jira_server import FakeJira, make_issue
from tests.fakes.pagerduty_rest import BOT_EMAIL, TOKEN, Delivery, FakePagerDutyRest
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.fakes.servicenow_server import FakeInstance, FakeServiceNowServer, make_record
from tests.fakes.zendesk_server import API_USER_ID, FakeZendesk
from tests.fakes.zendesk_server import sign as zendesk_sign
from tests.harness import make_service
from ticketpager.app import build_app
from ticketpager.service import Service

PD_SECRET = "pd-webhook-secret-e2e-0001"
ROUTING_KEY = "R0TWOWAYE2E00000000000000000000A"


@dataclass
class Rig:
    """The service with its HTTP app, the two PagerDuty fakes, and the bridge between them: what the Events
    API fake accepts is applied to the REST fake's incidents (as PagerDuty does), whose webhooks come back."""

    svc: Service
    client: TestClient
    events: MockPagerDuty
    pd: FakePagerDutyRest
    clock: FakeClock
    applied: int = 0
    webhooks: int = 0
    sent: list[Delivery] = field(default_factory=list)

    def settle(self) -> None:
        """Run the service until nothing is due and every PagerDuty consequence has come back."""
        for _ in range(20):
            self.svc.process_all()
            new = self.events.events[self.applied :]
            self.applied = len(self.events.events)
            for event in new:
                self.pd.apply_event(event)
            if not new and not self.pd.outbox:
                return
            self.deliver()
        raise AssertionError("the two streams did not settle")

    def deliver(self) -> list[int]:
        """POST the REST fake's queued webhooks to the app, signed, in order."""
        queue, self.pd.outbox = self.pd.outbox, []
        statuses = []
        for d in queue:
            statuses.append(self.client.post("/webhooks/pagerduty", content=d.body, headers=d.headers).status_code)
            self.sent.append(d)
        return statuses

    def post_again(self, delivery: Delivery, webhook_id: str | None = None) -> Any:
        headers = dict(delivery.headers)
        if webhook_id is not None:
            headers["X-Webhook-Id"] = webhook_id
        return self.client.post("/webhooks/pagerduty", content=delivery.body, headers=headers).json()

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [e for e in self.events.events if e["event_action"] == action]

    def incident(self) -> str:
        [incident_id] = self.pd.state.incidents
        return incident_id

    def inbox_outcomes(self) -> list[tuple[str, str]]:
        with self.svc.store.engine.connect() as conn:
            rows = conn.execute(
                select(pagerduty_inbox.c.event_type, pagerduty_inbox.c.outcome).order_by(pagerduty_inbox.c.id)
            ).all()
        return [(str(r[0]), str(r[1])) for r in rows]

    def last_sent(self, event_type: str) -> Delivery:
        return [d for d in self.sent if json.loads(d.body)["event"]["event_type"] == event_type][-1]


@contextmanager
def rig(db_url: str, rules: Path, clock: FakeClock, **system: Any) -> Iterator[Rig]:
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        pd.subscribe("http://testserver/webhooks/pagerduty", PD_SECRET)
        pagerduty = {
            "webhook_secrets": [PD_SECRET],
            "api_url": pd.url,
            "api_token": TOKEN,
            "from_email": BOT_EMAIL,
            "from_user_id": "PBOT001",
        }
        svc = make_service(db_url, rules, events.url, clock, pagerduty=pagerduty, **system)
        svc.writer.start()  # the ticket webhooks' writer thread, as `serve` runs it (the workers run in settle)
        try:
            with TestClient(build_app(svc)) as client:
                yield Rig(svc, client, events, pd, clock)
        finally:
            svc.writer.stop()
            svc.store.dispose()


def rules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    monkeypatch.setenv("PD_E2E_KEY", ROUTING_KEY)
    path = tmp_path / "rules-e2e"
    path.mkdir()
    (path / "two-way.yaml").write_text(text)
    return path


def run_scenario(
    r: Rig,
    *,
    open_ticket: Callable[[], None],
    writes: Callable[[], int],
    notes: Callable[[], list[str]],
    acknowledged_on_ticket: Callable[[], bool],
    ack_writes: int,
    echo_ticket_webhooks: Callable[[], None],
    close_ticket: Callable[[], None],
    remote_links: Callable[[], list[tuple[str, str]]] | None = None,
) -> None:
    """The common story; each system's test supplies how its ticket is opened, read and closed."""
    # ticket webhook → one page; PagerDuty's webhook of our own trigger brings the first write-back: the
    # incident's number and link (and, for Jira, a remote link to the incident), once
    open_ticket()
    r.settle()
    [trigger] = r.actions("trigger")
    assert trigger["routing_key"] == ROUTING_KEY
    incident = r.incident()
    number = r.pd.state.incidents[incident]["incident_number"]
    html_url = r.pd.state.incidents[incident]["html_url"]
    assert r.inbox_outcomes() == [("incident.triggered", "applied")]
    paged = [n for n in notes() if html_url in n]
    assert len(paged) == 1, notes()
    assert f"#{number}" in paged[0] and "Paged in PagerDuty" in paged[0] and "[tp:" in paged[0]
    if remote_links is not None:
        assert remote_links() == [(f"pagerduty:incident:{incident}", html_url)]
    base_writes, base_notes = writes(), len(notes())
    triggered = r.last_sent("incident.triggered")  # redelivered under a new X-Webhook-Id (not signed): the same
    assert r.post_again(triggered, webhook_id="wh-triggered-again")["status"] == "duplicate"  # event: no new write
    r.settle()
    assert writes() == base_writes and len(notes()) == base_notes

    r.clock.advance(30)
    # a person acknowledges in PagerDuty → one note naming them, with the incident's link, and the transition
    r.pd.acknowledge(incident, by="PUSER01")
    r.settle()
    ack_notes = notes()[base_notes:]
    assert len(ack_notes) == 1, ack_notes
    assert "acknowledged by Jane Doe" in ack_notes[0]
    assert f"/incidents/{incident}" in ack_notes[0]
    assert acknowledged_on_ticket()
    assert r.actions("acknowledge") == []  # PagerDuty already knows: nothing is sent back to it
    after_ack = writes()
    assert after_ack == base_writes + ack_writes

    r.clock.advance(30)
    # our own comment and transition come back as ticket webhooks: no page, no acknowledge, no resolve
    echo_ticket_webhooks()
    r.settle()
    assert [e["event_action"] for e in r.events.events] == ["trigger"]
    assert writes() == after_ack

    r.clock.advance(30)
    # a person adds a note in PagerDuty → mirrored once, with its text
    r.pd.add_note(incident, "Rolled back release 2026.12.1; error rate falling", by="PUSER01")
    r.settle()
    mirrored = notes()[base_notes + 1 :]
    assert len(mirrored) == 1 and "Rolled back release 2026.12.1" in mirrored[0], mirrored
    assert "Jane Doe" in mirrored[0]
    assert f"/incidents/{incident}" in mirrored[0]  # a note's webhook carries no link: the stored incident's
    assert all("[tp:" in n for n in notes()[base_notes:]), "each carries its bracketed marker"
    after_note = writes()
    assert after_note == after_ack + 1  # one write for one note
    annotated = r.last_sent("incident.annotated")
    assert r.post_again(annotated) == {"status": "duplicate"}  # PagerDuty's retry: same X-Webhook-Id
    assert r.post_again(annotated, webhook_id="wh-redelivered-elsewhere")["status"] == "duplicate"  # same event
    r.settle()
    assert writes() == after_note and len(notes()) == base_notes + 2  # the marker on the ticket: still once

    # a note that carries one of our markers is ours (e.g. a group-change note): never mirrored back
    r.pd.add_note(incident, "OPS moved to group 'Network' [tp:grp-0123456789abcdef:rule]", by="PUSER01")
    r.settle()
    assert writes() == after_note

    r.clock.advance(30)
    # the ticket is done → one resolve to the Events API (and the one-way write-back note of the resolve);
    # the echo of that resolve writes nothing, though the rule writes back a person's resolve
    close_ticket()
    r.settle()
    [resolve] = r.actions("resolve")
    assert resolve["dedup_key"] == trigger["dedup_key"]
    assert r.pd.state.incidents[incident]["status"] == "resolved"
    after_resolve = writes()
    assert after_resolve == after_note + 1, "only the resolve's own write-back note"
    assert r.inbox_outcomes()[-1] == ("incident.resolved", "echo")
    resolved = r.last_sent("incident.resolved")
    assert r.post_again(resolved, webhook_id="wh-resolved-again")["status"] == "duplicate"
    r.settle()
    assert writes() == after_resolve
    assert [e["event_action"] for e in r.events.events] == ["trigger", "resolve"]
    assert r.pd.spec_errors == []


# -- Jira ---------------------------------------------------------------------------------------------------------
JIRA_RULES = """
version: 1
rules:
  - name: jira-ops-p1
    source: jira
    when: {project: OPS, priority: Highest}
    trigger:
      routing_key: ${PD_E2E_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
    acknowledge_when: {status_category: in_progress}
    resolve_when: {status_category: done}
    sync_back:
      acknowledged: {comment: true, transition: {category: in_progress}}
      annotated: true
      resolved: {comment: true, transition: {category: done, fields: {resolution: Done}}}
"""
JIRA_SECRET = "jira-webhook-secret-e2e"


def jira_webhook(r: Rig, issue: dict[str, Any], event: str = "jira:issue_updated", **extra: Any) -> None:
    body = json.dumps(
        {"timestamp": int(r.clock.now().timestamp() * 1000), "webhookEvent": event, "issue": issue, **extra}
    ).encode()
    r.webhooks += 1
    headers = {
        "x-hub-signature": "sha256=" + hmac.new(JIRA_SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "x-atlassian-webhook-identifier": f"jira-delivery-{r.webhooks}",
        "content-type": "application/json",
    }
    response = r.client.post("/webhooks/jira", content=body, headers=headers)
    assert response.status_code in (200, 202), response.text


@pytest.mark.slow
def test_jira_both_ways(db_url: str, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = rules_dir(tmp_path, monkeypatch, JIRA_RULES)
    with FakeJira(deployment="Cloud") as jira:
        jira.put(make_issue("10042", "OPS-12", updated=clock.now(), summary="Checkout is down", priority="Highest",
                            priority_id="1", base_url=jira.url))  # fmt: skip
        settings = {"enabled": True, "url": jira.url, "email": "bot@acme.example", "api_token": "jira-token",
                    "deployment": "cloud", "webhook_secrets": [JIRA_SECRET]}  # fmt: skip
        with rig(db_url, rules, clock, jira=settings) as r:

            def issue() -> dict[str, Any]:
                return jira.issues["10042"]

            def writes() -> int:
                return sum(1 for m, _, _ in jira.requests if m in ("POST", "PUT"))

            def notes() -> list[str]:
                return [str(c["body"]) for c in jira.comments.get("10042", [])]

            def echoes() -> None:
                for comment in jira.comments["10042"]:
                    jira_webhook(r, issue(), "comment_created", comment=comment)
                jira_webhook(r, issue())  # the transition we made

            def close() -> None:
                clock.advance(60)
                done = make_issue("10042", "OPS-12", updated=clock.now(), summary="Checkout is down",
                                  priority="Highest", priority_id="1", status="Done", category="done",
                                  base_url=jira.url)  # fmt: skip
                jira.put(done)
                jira_webhook(r, done)

            run_scenario(
                r,
                open_ticket=lambda: jira_webhook(r, issue(), "jira:issue_created"),
                writes=writes,
                notes=notes,
                acknowledged_on_ticket=lambda: issue()["fields"]["status"]["name"] == "In Progress",
                ack_writes=3,  # the transition, the incident's remote link, the comment
                echo_ticket_webhooks=echoes,
                close_ticket=close,
                remote_links=lambda: [
                    (g, str(link["object"]["url"])) for g, link in jira.remote_links.get("10042", {}).items()
                ],
            )
            assert jira.transitioned == [("10042", "In Progress")]  # done by the person, not by us
            assert list(jira.remote_links["10042"]) == [f"pagerduty:incident:{r.incident()}"]


# -- Zendesk ------------------------------------------------------------------------------------------------------
ZENDESK_RULES = """
version: 1
rules:
  - name: zendesk-urgent
    source: zendesk
    when: {priority: urgent}
    trigger:
      routing_key: ${PD_E2E_KEY}
      severity: critical
      summary: "[Zendesk {{ ticket.key }}] {{ ticket.title }}"
    acknowledge_when: {status_category: in_progress}
    resolve_when: {status_category: done}
    sync_back:
      acknowledged: {comment: true, transition: {status: open}}
      annotated: true
      resolved: {comment: true, transition: {status: solved}}
"""
ZENDESK_SECRET = "zendesk-webhook-secret-e2e"


def zendesk_event(r: Rig, zd: FakeZendesk, ticket_id: int, kind: str, **event: Any) -> None:
    """An event-subscription webhook (``zen:event-type:ticket.*``) with the ticket as Zendesk has it now."""
    ticket = zd.tickets[ticket_id]
    detail = {
        k: ticket[k]
        for k in (
            "id",
            "subject",
            "description",
            "priority",
            "status",
            "tags",
            "group_id",
            "organization_id",
            "requester_id",
            "assignee_id",
            "created_at",
            "updated_at",
        )
    }
    detail |= {"id": str(ticket_id), "priority": str(ticket["priority"]).upper(), "status": ticket["status"].upper()}
    r.webhooks += 1
    body = json.dumps(
        {"id": f"zd-event-{r.webhooks}", "type": f"zen:event-type:ticket.{kind}", "subject": f"zen:ticket:{ticket_id}",
         "time": ticket["updated_at"], "detail": detail, "event": event, "zendesk_event_version": "2022-11-06"}
    ).encode()  # fmt: skip
    stamp = r.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "x-zendesk-webhook-signature": zendesk_sign(ZENDESK_SECRET, stamp, body),
        "x-zendesk-webhook-signature-timestamp": stamp,
        "x-zendesk-webhook-id": f"01ZDHOOK{r.webhooks:04d}",
        "content-type": "application/json",
    }
    response = r.client.post("/webhooks/zendesk", content=body, headers=headers)
    assert response.status_code in (200, 202), response.text


@pytest.mark.slow
def test_zendesk_both_ways(db_url: str, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = rules_dir(tmp_path, monkeypatch, ZENDESK_RULES)
    with FakeZendesk(now=lambda: clock.now().timestamp()) as zd:
        zd.add_ticket(35436, subject="Checkout is down", priority="urgent", status="new", age_seconds=0)
        settings = {"enabled": True, "url": zd.url, "email": zd.email, "api_token": zd.token,
                    "webhook_secrets": [ZENDESK_SECRET]}  # fmt: skip
        with rig(db_url, rules, clock, zendesk=settings) as r:

            def writes() -> int:
                return sum(1 for m, _ in zd.requests if m in ("POST", "PUT"))

            def notes() -> list[str]:
                return [str(c["body"]) for c in zd.comments[35436]]

            def echoes() -> None:
                for comment in zd.comments[35436]:
                    zendesk_event(r, zd, 35436, "comment_added",
                                  comment={"id": str(comment["id"]), "body": comment["body"], "is_public": False,
                                           "author": {"id": str(API_USER_ID), "is_staff": True}})  # fmt: skip
                zendesk_event(r, zd, 35436, "status_changed", previous="NEW", current="OPEN")  # our status change

            def close() -> None:
                zd.update_ticket(35436, status="solved")
                zendesk_event(r, zd, 35436, "status_changed", previous="OPEN", current="SOLVED")

            run_scenario(
                r,
                open_ticket=lambda: zendesk_event(r, zd, 35436, "created"),
                writes=writes,
                notes=notes,
                acknowledged_on_ticket=lambda: zd.tickets[35436]["status"] == "open",
                ack_writes=1,  # one safe_update PUT: the internal note and the status together
                echo_ticket_webhooks=echoes,
                close_ticket=close,
            )
            assert all(c["public"] is False for c in zd.comments[35436])  # internal notes


# -- ServiceNow ---------------------------------------------------------------------------------------------------
SERVICENOW_RULES = """
version: 1
rules:
  - name: sn-p1
    source: servicenow
    when: {priority_number: 1}
    trigger:
      routing_key: ${PD_E2E_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
    acknowledge_when: {status_category: in_progress}
    resolve_when: {status_category: done}
    sync_back:
      acknowledged: {comment: true, transition: {category: in_progress}}
      annotated: true
      resolved:
        comment: true
        transition: {status: Resolved, fields: {close_code: Solved (Permanently), close_notes: "{{ agent.name }}"}}
"""
SERVICENOW_SECRET = "servicenow-webhook-secret-e2e"
SYS_ID = "sn-e2e-0000000000000000000000001"


def servicenow_webhook(r: Rig, fake: FakeInstance) -> None:
    """The business rule's outbound message: the record as the instance has it now, HMAC-signed."""
    r.webhooks += 1
    sent_at = int(r.clock.now().timestamp())
    body = json.dumps(
        {"event": "update", "table": "incident", "delivery_id": f"{SYS_ID}:{r.webhooks}", "sent_at": sent_at,
         "instance": "https://acme.service-now.com", "record": dict(fake.records[SYS_ID]), "last_work_note": ""}
    ).encode()  # fmt: skip
    signature = base64.b64encode(hmac.new(SERVICENOW_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    headers = {"x-signature": signature, "x-timestamp": str(sent_at), "content-type": "application/json"}
    response = r.client.post("/webhooks/servicenow", content=body, headers=headers)
    assert response.status_code in (200, 202), response.text


@pytest.mark.slow
def test_servicenow_both_ways(db_url: str, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = rules_dir(tmp_path, monkeypatch, SERVICENOW_RULES)
    record = make_record(SYS_ID, "INC0010042", clock.now(), short_description="Core router down", priority="1",
                         impact="1", urgency="1", state="1")  # fmt: skip
    fake = FakeInstance([record])
    with FakeServiceNowServer(fake, str(tmp_path)) as sn:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", sn.ca_pem)  # the fake instance's throwaway CA (TLS, as pysnc needs)
        settings = {"enabled": True, "instance_url": sn.url, "username": fake.username, "password": fake.password,
                    "webhook_secrets": [SERVICENOW_SECRET]}  # fmt: skip
        with rig(db_url, rules, clock, servicenow=settings) as r:

            def writes() -> int:
                return sum(1 for m, _, _ in fake.requests if m in ("PATCH", "PUT", "POST"))

            def notes() -> list[str]:
                return [j["value"] for j in fake.journal if j["element_id"] == SYS_ID]

            def close() -> None:
                clock.advance(60)
                fake.update(SYS_ID, clock.now(), state="6", active="false", sys_updated_by="alice.admin",
                            close_code="Solved (Permanently)", close_notes="Router replaced")  # fmt: skip
                servicenow_webhook(r, fake)

            run_scenario(
                r,
                open_ticket=lambda: servicenow_webhook(r, fake),
                writes=writes,
                notes=notes,
                acknowledged_on_ticket=lambda: fake.records[SYS_ID]["state"] == "2",
                ack_writes=1,  # one PATCH: the work note and the state together
                echo_ticket_webhooks=lambda: servicenow_webhook(r, fake),  # updated by us: the state we set
                close_ticket=close,
            )
            assert {j["element"] for j in fake.journal} == {"work_notes"}  # internal: work notes only
