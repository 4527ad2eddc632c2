"""The way back from PagerDuty, inbound: ``POST /webhooks/pagerduty`` stores a verified v3 webhook before its 202
(deduped on ``X-Webhook-Id``), and the reverse worker correlates it to the link we paged (through REST with a
token, from the webhook's title without), follows a person's acknowledge / resolve on the link, suppresses the
echoes of our own actions, and queues what the two-way rules decide. PagerDuty is the local REST fake, which
also builds and signs the v3 webhooks; the rules' reverse half is a small fake at its Protocol."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from connectors.pagerduty_rest import PagerDutyRestClient
from connectors.pagerduty_webhooks import parse_event
from kernel.clock import FakeClock
from kernel.incidents import EventType
from kernel.lifecycle import content_digest
from kernel.model import (
    Action,
    Destination,
    IncidentState,
    IncidentUpdate,
    Outbound,
    Outcome,
    Rendered,
    StatusCategory,
    TicketUpdate,
    Transition,
)
from kernel.ports import IncidentContext, SyncPlan
from sync import db
from sync.metrics import METRICS
from sync.repos import incidents as repo
from sync.reverse import ReverseWorker
from sync.schema import incidents, links, outbox, pagerduty_inbox
from sync.store import Store
from tests.factories import ROUTING_KEY, change, ticket
from tests.fakes.pagerduty_rest import BOT_EMAIL, TOKEN, FakePagerDutyRest, sign
from tests.harness import make_service, receive
from ticketpager.app import REJECTED_LOG_EVERY_SECONDS, build_app
from ticketpager.service import Service

SECRET, OLD_SECRET = "pd-webhook-secret-new-0001", "pd-webhook-secret-old-0002"
FIXTURES = Path(__file__).parent / "fixtures" / "pagerduty" / "webhooks"
URL = "http://testserver/webhooks/pagerduty"
KEY = "ticketpager/jira/10001/ops-highest/1"  # what the engine pages ticket OPS-10001 under
TOKEN_SECRET = SecretStr(TOKEN)


# -- a tiny two-way rule set and destinations (fakes at the boundary of the reverse worker) -------------------
@dataclass(frozen=True)
class Plan:
    rule: str
    actions: tuple[TicketUpdate | IncidentUpdate, ...]
    explanation: tuple[str, ...]


@dataclass
class NoteEveryEvent:
    """Writes one internal comment on the ticket for every event a person causes."""

    seen: list[IncidentContext] = field(default_factory=list)

    def on_incident(self, ctx: IncidentContext) -> SyncPlan:
        if ctx.event.event_type is EventType.TRIGGERED:  # our own page (it reaches the rules): nothing here
            return Plan(ctx.link.rule, (), ("our own page: no comment",))
        self.seen.append(ctx)
        who = ctx.event.agent.summary if ctx.event.agent else "PagerDuty"
        update = TicketUpdate(
            ticket=ctx.ticket.ref,
            marker=f"tp:{ctx.event.incident_id}:{ctx.event.event_id}",
            comment=f"{who}: {ctx.event.event_type.value}",
            incident_id=ctx.event.incident_id,
        )
        return Plan(ctx.link.rule, (update,), (f"{ctx.event.event_type.value} → comment",))

    def on_ticket_change(self, ctx: Any, link: Any, incident_id: str) -> SyncPlan:
        return Plan(link.rule, (), ())


class JsonDestination:
    """Renders an action as JSON (what the writers' destinations will send); never sends."""

    timeout = None
    limiter = None

    def __init__(self, name: str) -> None:
        self.name = self.label = name

    def render(self, action: Action) -> Rendered:
        assert isinstance(action, TicketUpdate | IncidentUpdate)
        return Rendered(json.dumps({"kind": action.KIND, "marker": action.marker}))

    def send(self, item: Outbound, *, timeout: float | None) -> Outcome:
        raise AssertionError("the reverse worker only queues")

    def preview(self, item: Outbound) -> str:
        return item.body


def destinations() -> dict[str, Destination]:
    return {"jira": JsonDestination("jira"), "pagerduty_rest": JsonDestination("pagerduty_rest")}


# -- set-up ----------------------------------------------------------------------------------------------------
def build(db_url: str, rules_path: Path, clock: FakeClock, **pagerduty: Any) -> Service:
    settings: dict[str, Any] = {"webhook_secrets": [SECRET]} | pagerduty
    return make_service(db_url, rules_path, "http://127.0.0.1:9/v2/enqueue", clock, pagerduty=settings)


@pytest.fixture
def service(db_url: str, rules_path: Path, clock: FakeClock) -> Iterator[Service]:
    svc = build(db_url, rules_path, clock)
    yield svc
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(build_app(service)) as c:
        yield c


def worker(svc: Service, rules: NoteEveryEvent, **kwargs: Any) -> ReverseWorker:
    kwargs.setdefault("own_user_ids", ["PBOT001"])
    return ReverseWorker(svc.store, lambda: rules, svc.clock, parse=parse_event, destinations=destinations, **kwargs)


def page(svc: Service, **t: Any) -> None:
    """Ticket OPS-10001 matches the rule: the engine queues its trigger under :data:`KEY`."""
    receive(svc, [change(ticket("10001", **t))])
    svc.engine.drain()


def post(client: TestClient, body: bytes, *, webhook_id: str = "wh-1", secrets: tuple[str, ...] = (SECRET,)) -> Any:
    headers = {"Content-Type": "application/json", "X-Webhook-Id": webhook_id}
    if secrets:
        headers["X-PagerDuty-Signature"] = ",".join(sign(s, body) for s in secrets)
    return client.post("/webhooks/pagerduty", content=body, headers=headers)


def deliver(pd: FakePagerDutyRest, client: TestClient) -> list[int]:
    """POST the fake's queued webhooks, signed and in order, to the app."""
    queue, pd.outbox = pd.outbox, []
    return [client.post("/webhooks/pagerduty", content=d.body, headers=d.headers).status_code for d in queue]


def inbox(svc: Service) -> list[dict[str, Any]]:
    with svc.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(pagerduty_inbox).order_by(pagerduty_inbox.c.id)).mappings()]


def link_row(svc: Service) -> dict[str, Any]:
    with svc.store.engine.connect() as conn:
        return dict(conn.execute(select(links).where(links.c.dedup_key == KEY)).mappings().one())


def queued(svc: Service, kind: str) -> list[dict[str, Any]]:
    with svc.store.engine.connect() as conn:
        rows = conn.execute(select(outbox).where(outbox.c.kind == kind).order_by(outbox.c.id)).mappings()
        return [dict(r) for r in rows]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def trigger_at_pagerduty(pd: FakePagerDutyRest, summary: str = "[OPS-10001] Checkout is down") -> str:
    """What delivery's trigger does at PagerDuty: an incident with one alert whose alert_key is our dedup key."""
    return pd.apply_event({"dedup_key": KEY, "event_action": "trigger", "payload": {"summary": summary}})


def paged(
    pd: FakePagerDutyRest,
    db_url: str,
    rules_path: Path,
    clock: FakeClock,
    summary: str = "[OPS-10001] Checkout is down",
    **pagerduty: Any,
) -> tuple[Service, str]:
    """A service (``pagerduty`` settings) whose webhooks ``pd`` sends, ticket OPS-10001 paged and its incident
    open at PagerDuty: the service and the incident's id."""
    svc = build(db_url, rules_path, clock, **pagerduty)
    pd.subscribe(URL, SECRET)
    page(svc)
    return svc, trigger_at_pagerduty(pd, summary)


# -- the endpoint ----------------------------------------------------------------------------------------------
def test_a_signed_webhook_is_stored_before_the_202_and_a_redelivery_is_stored_once(
    client: TestClient, service: Service
) -> None:
    body = fixture("acknowledged_by_user.json")
    first = post(client, body, webhook_id="wh-same")
    assert (first.status_code, first.json()) == (202, {"status": "accepted"})
    [row] = inbox(service)  # durable when the 202 is sent: no worker has run
    event_id = json.loads(body)["event"]["id"]
    assert (row["webhook_id"], row["event_type"], row["incident_id"], row["status"]) == (
        f"event:{event_id}",  # the signed event id is the dedupe key
        "incident.acknowledged",
        "Q1ABCDEF",
        "pending",
    )
    assert row["body"].encode() == body
    again = post(client, body, webhook_id="wh-same")  # PagerDuty retries with the same X-Webhook-Id
    assert (again.status_code, again.json()) == (202, {"status": "duplicate"})
    replayed = post(client, body, webhook_id="wh-forged-1")  # X-Webhook-Id is not signed: a replay may change it
    assert (replayed.status_code, replayed.json()) == (202, {"status": "duplicate"})
    assert len(inbox(service)) == 1
    assert service.status_report()["pagerduty_inbox"]["pending"] == 1
    assert service.status_report()["pagerduty_inbox"]["last_event_type"] == "incident.acknowledged"


def test_during_a_secret_rotation_either_secret_is_accepted(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    svc = build(db_url, rules_path, clock, webhook_secrets=[OLD_SECRET, SECRET])
    body = fixture("resolved_by_user.json")
    with TestClient(build_app(svc)) as c:
        assert post(c, body, webhook_id="a", secrets=(OLD_SECRET,)).status_code == 202  # not yet rotated
        assert post(c, body, webhook_id="b", secrets=(OLD_SECRET, SECRET)).status_code == 202  # both signatures
        assert post(c, body, webhook_id="c", secrets=(SECRET,)).status_code == 202  # rotated
        refused = post(c, body, webhook_id="d", secrets=("someone-elses-secret-000",))
        assert (refused.status_code, refused.json()) == (401, {"error": "invalid X-PagerDuty-Signature"})
    assert [r["webhook_id"] for r in inbox(svc)] == ["event:" + json.loads(body)["event"]["id"]]  # one event
    svc.store.dispose()


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({"X-Webhook-Id": "w"}, None, 401, "missing X-PagerDuty-Signature header"),
        ({"X-PagerDuty-Signature": "sha256=abc", "X-Webhook-Id": "w"}, None, 401, "X-PagerDuty-Signature must be"),
        ({"X-Webhook-Id": "w", "sign": True}, b"{not json", 400, ""),
        ({"sign": True}, None, 400, "missing X-Webhook-Id header"),
        ({"X-Webhook-Id": "w", "sign": True}, b'{"event": {"id": "E1"}}', 400, "event.event_type"),
    ],
    ids=["unsigned", "other-scheme", "malformed-json", "no-webhook-id", "not-an-event"],
)
def test_refusals_store_nothing_and_say_why(
    client: TestClient, service: Service, headers: dict[str, Any], body: bytes | None, status: int, reason: str
) -> None:
    raw = body if body is not None else fixture("acknowledged_by_user.json")
    sent = {k: v for k, v in headers.items() if k != "sign"}
    if headers.get("sign"):
        sent["X-PagerDuty-Signature"] = sign(SECRET, raw)
    response = client.post("/webhooks/pagerduty", content=raw, headers=sent)
    assert response.status_code == status
    assert reason in response.json()["error"]
    assert inbox(service) == []


def test_without_a_configured_secret_every_webhook_is_refused_naming_the_setting(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    svc = build(db_url, rules_path, clock, webhook_secrets=[])
    with TestClient(build_app(svc)) as c:
        response = post(c, fixture("acknowledged_by_user.json"))
    assert response.status_code == 401
    assert "TICKETPAGER_PAGERDUTY__WEBHOOK_SECRETS" in response.json()["error"]
    assert inbox(svc) == []
    svc.store.dispose()


#: forged webhooks in a flood
FORGED = 50


def test_a_flood_of_unauthenticated_webhooks_logs_a_line_a_minute_and_counts_every_one(
    client: TestClient, service: Service, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can post to /webhooks/pagerduty: each forged post is a 401 and counted, but the log says so once per
    reason per minute (the service's clock), then how many the next line stands for."""
    rejected = METRICS.pagerduty_webhooks.labels("unknown", "rejected_401")
    before = rejected._value.get()
    body = fixture("acknowledged_by_user.json")

    def warnings() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        return [line for line in lines if line.startswith("webhook pagerduty")]

    with caplog.at_level(logging.INFO, "ticketpager"):
        for n in range(FORGED):
            assert post(client, body, webhook_id=f"forged-{n}", secrets=("not-the-secret",)).status_code == 401
        assert post(client, body, webhook_id="unsigned", secrets=()).status_code == 401
        assert warnings() == [
            "webhook pagerduty rejected (401): invalid X-PagerDuty-Signature",
            "webhook pagerduty rejected (401): missing X-PagerDuty-Signature header",
        ], "one line per reason"
        clock.advance(REJECTED_LOG_EVERY_SECONDS - 1)
        assert post(client, body, webhook_id="forged-late", secrets=("not-the-secret",)).status_code == 401
        assert len(warnings()) == 2
        clock.advance(1)
        assert post(client, body, webhook_id="forged-next", secrets=("not-the-secret",)).status_code == 401
    assert warnings()[-1] == (
        f"webhook pagerduty rejected (401): invalid X-PagerDuty-Signature (and {FORGED} more since the last line)"
    )
    assert rejected._value.get() - before == FORGED + 3, "every refusal is counted"
    assert inbox(service) == []


def test_an_event_type_the_sync_does_not_act_on_is_accepted_counted_and_not_stored(
    client: TestClient, service: Service
) -> None:
    counter = METRICS.pagerduty_webhooks.labels("other", "ignored")
    before = counter._value.get()
    response = post(client, fixture("ping.json"))
    assert response.status_code == 202 and response.json()["status"] == "ignored"
    assert counter._value.get() == before + 1
    assert inbox(service) == []


def test_a_body_over_pagerdutys_256_kb_gets_413(client: TestClient, service: Service) -> None:
    response = post(client, b"{" + b" " * (256 * 1024) + b"}")
    assert response.status_code == 413
    assert inbox(service) == []


# -- correlation, echoes, link state -----------------------------------------------------------------------------
def test_with_a_token_the_incident_is_learned_from_its_alerts_and_our_own_trigger_is_no_echo_to_suppress(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    with FakePagerDutyRest() as pd:
        rest = {"api_token": TOKEN, "api_url": pd.url, "from_email": BOT_EMAIL}
        svc, incident = paged(pd, db_url, rules_path, clock, summary="Checkout is down", **rest)  # names no ticket
        rules = NoteEveryEvent()
        reverse = worker(svc, rules, lookup=svc.rest)  # the service's own REST client (a token is set)
        echoes = METRICS.echoes_suppressed.labels("incident.triggered")
        before = echoes._value.get()
        with TestClient(build_app(svc)) as c:
            assert deliver(pd, c) == [202]
            assert reverse.drain() == 1
            with svc.store.engine.connect() as conn:
                row = conn.execute(select(incidents)).mappings().one()
            assert (row["incident_id"], row["dedup_key"], row["learned_by"], row["status"]) == (
                incident,
                KEY,
                "rest",
                "triggered",
            )
            assert row["number"] == 800 and row["html_url"].endswith(f"/incidents/{incident}")
            # our own trigger is the page's first news (its number and link): the rules decide, it is not suppressed
            assert echoes._value.get() == before
            assert rules.seen == [] and queued(svc, "ticket_update") == []

            pd.acknowledge(incident, by="PUSER01")  # Jane acknowledges in PagerDuty
            assert deliver(pd, c) == [202]
            assert reverse.drain() == 1
        assert link_row(svc)["state"] == "acknowledged"
        [ctx] = rules.seen
        assert (ctx.event.event_type, ctx.link.state, ctx.ticket.key) == (
            EventType.ACKNOWLEDGED,
            IncidentState.ACKNOWLEDGED,
            "OPS-10001",
        )
        [update] = queued(svc, "ticket_update")
        assert (update["destination"], update["ticket_key"], update["dedup_key"], update["action"]) == (
            "jira",
            "OPS-10001",
            KEY,
            "acknowledged",
        )
        assert [i["outcome"] for i in inbox(svc)] == ["no_action", "applied"]
        alert_reads = [r for r in pd.requests if r.path.endswith("/alerts")]
        assert len(alert_reads) == 1, "learned once, then known"
        decisions = svc.store.decisions_for("jira", "10001")
        assert decisions[0]["outcome"] == "pagerduty_applied"
        assert "acknowledged → comment" in decisions[0]["detail"]
        svc.store.dispose()


def test_without_a_token_the_incident_is_matched_by_the_ticket_key_in_its_title_and_others_are_ignored(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    with FakePagerDutyRest() as pd:
        svc, ours = paged(pd, db_url, rules_path, clock)  # "[OPS-10001] Checkout is down"
        manual = pd.apply_event(
            {"dedup_key": "someone-else", "event_action": "trigger", "payload": {"summary": "OPS-999 disk full"}}
        )
        rules = NoteEveryEvent()
        reverse = worker(svc, rules)
        with TestClient(build_app(svc)) as c:
            pd.acknowledge(manual)
            pd.resolve(ours)  # a person resolves ours while the ticket is still open
            assert deliver(pd, c) == [202, 202, 202, 202]
        assert reverse.drain() == 4
        assert [(i["incident_id"], i["outcome"]) for i in inbox(svc)] == [
            (ours, "no_action"),  # our own page: the rules write nothing for it here
            (manual, "not_ours"),
            (manual, "not_ours"),
            (ours, "applied"),
        ]
        with svc.store.engine.connect() as conn:
            learned = conn.execute(select(incidents.c.incident_id, incidents.c.learned_by)).all()
        assert [tuple(r) for r in learned] == [(ours, "title")]
        assert [c.event.event_type for c in rules.seen] == [EventType.RESOLVED]
        assert link_row(svc)["state"] == "resolved"
        svc.store.dispose()


def test_our_own_rest_write_and_events_api_resolve_come_back_as_echoes_that_write_nothing(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.acknowledge(incident, by="PBOT001")  # our REST write (the From user) …
        pd.apply_event({"dedup_key": KEY, "event_action": "resolve"})  # … and our Events API resolve
        rules = NoteEveryEvent()
        with TestClient(build_app(svc)) as c:
            assert deliver(pd, c) == [202, 202, 202]
        assert worker(svc, rules).drain() == 3
        assert [i["outcome"] for i in inbox(svc)] == ["no_action", "echo", "echo"]  # the page, then two echoes
        assert rules.seen == [] and queued(svc, "ticket_update") == []
        row = link_row(svc)
        assert (row["state"], row["hold_version"]) == ("resolved", None)  # our resolve: no hold
        svc.store.dispose()


def test_after_a_person_resolves_in_pagerduty_no_new_page_until_the_ticket_changes_again(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.resolve(incident, by="PUSER01")
        rules = NoteEveryEvent()
        with TestClient(build_app(svc)) as c:
            deliver(pd, c)
        worker(svc, rules).drain()
        row = link_row(svc)
        assert row["state"] == "resolved"
        assert row["hold_version"] == content_digest(ticket("10001"))

        # the ticket webhook of our own comment (only `updated` moved): the ticket still matches, no new page
        receive(svc, [change(ticket("10001", minutes=1), "wh-our-comment")])
        svc.engine.drain()
        triggers = [r for r in queued(svc, "event") if r["action"] == "trigger"]
        assert len(triggers) == 1

        # a person changes the ticket (its title): it still matches, so it pages again, as a new incident
        receive(svc, [change(ticket("10001", minutes=2, title="Checkout is down again"), "wh-edit")])
        svc.engine.drain()
        triggers = [r for r in queued(svc, "event") if r["action"] == "trigger"]
        assert [t["generation"] for t in triggers] == [1, 2]
        assert link_row_generation(svc) == (2, None)
        svc.store.dispose()


def link_row_generation(svc: Service) -> tuple[int, str | None]:
    with svc.store.engine.connect() as conn:
        row = conn.execute(select(links.c.generation, links.c.hold_version)).one()
    return int(row[0]), row[1]


def test_a_ticket_done_when_the_person_resolves_is_not_held(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        receive(svc, [change(ticket("10001", minutes=1, status="Done", category=StatusCategory.DONE), "wh-done")])
        svc.engine.drain()  # the engine resolves: our resolve is queued, the link is resolved
        pd.resolve(incident, by="PUSER01")  # and someone resolves it in PagerDuty too, before ours arrives
        with TestClient(build_app(svc)) as c:
            deliver(pd, c)
        worker(svc, NoteEveryEvent()).drain()
        assert (link_row(svc)["state"], link_row(svc)["hold_version"]) == ("resolved", None)
        svc.store.dispose()


def test_when_pagerdutys_rest_api_is_down_the_webhook_waits_and_is_handled_later(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock, summary="Checkout is down")
        pd.acknowledge(incident)
        with TestClient(build_app(svc)) as c:
            deliver(pd, c)
        rules = NoteEveryEvent()
        reverse = worker(svc, rules, lookup=PagerDutyRestClient(TOKEN_SECRET, api_url=pd.url, clock=clock))
        pd.fail_next(1, 503)
        assert reverse.run_once() == 0 and reverse.blocked
        assert [i["status"] for i in inbox(svc)] == ["pending", "pending"]  # kept, in order
        assert reverse.drain() == 2
        assert [i["outcome"] for i in inbox(svc)] == ["no_action", "applied"]
        assert len(rules.seen) == 1
        svc.store.dispose()


def test_a_privilege_the_database_refuses_keeps_the_webhook_pending_not_failed(
    postgres_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """PostgreSQL refuses the write with 42501 (insufficient_privilege: a grant revoked, say): the database's fault,
    not the webhook's. The row stays pending, and is handled once the write is allowed again."""
    with FakePagerDutyRest() as pd:
        svc, ours = paged(pd, postgres_url, rules_path, clock)
        try:
            _refused_then_handled(svc, pd, ours)
        finally:
            svc.store.dispose()


def _refused_then_handled(svc: Service, pd: FakePagerDutyRest, ours: str) -> None:
    reverse = worker(svc, NoteEveryEvent())
    with TestClient(build_app(svc)) as c:
        pd.resolve(ours)
        assert deliver(pd, c) == [202, 202]
    with svc.store.begin() as conn:  # what a revoked grant on the incidents table answers
        conn.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " RAISE EXCEPTION 'permission denied for table incidents' USING ERRCODE = '42501'; END $$"
            )
        )
        conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON incidents EXECUTE FUNCTION refuse()"))
    with pytest.raises(DBAPIError) as raised:
        reverse.drain()
    assert "permission denied" in str(raised.value)
    assert [i["status"] for i in inbox(svc)] == ["pending", "pending"]
    with svc.store.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse ON incidents"))
    assert reverse.drain() == 2
    assert [i["outcome"] for i in inbox(svc)] == ["no_action", "applied"]
    assert link_row(svc)["state"] == "resolved"


def test_the_service_runs_the_reverse_worker_with_the_rules_it_has(service: Service, client: TestClient) -> None:
    """Without a two-way section in the rules, a person's acknowledge still moves the link; nothing is queued."""
    with FakePagerDutyRest() as pd:
        pd.subscribe(URL, SECRET)
        page(service)
        incident = trigger_at_pagerduty(pd)
        pd.acknowledge(incident)
        deliver(pd, client)
        service.process_all()
    assert link_row(service)["state"] == "acknowledged"
    assert [i["outcome"] for i in inbox(service)] == ["no_action", "no_action"]
    assert queued(service, "ticket_update") == []


# -- the migration -----------------------------------------------------------------------------------------------
def test_migration_0008_adds_the_inbox_and_incidents_and_keeps_existing_links(db_url: str, clock: FakeClock) -> None:
    store = Store(db_url)
    db.upgrade(store.engine, "0007")
    now = clock.now()
    with store.engine.begin() as conn:  # a link the 0007 engine left
        conn.execute(
            insert(links).values(
                source="jira", ticket_id="10001", rule="ops-highest", generation=1, dedup_key=KEY,
                routing_key=ROUTING_KEY, state="triggered", created_at=now, updated_at=now,
            )
        )  # fmt: skip
    store.upgrade()
    names = set(inspect(store.engine).get_table_names())
    assert {"pagerduty_inbox", "incidents"} <= names
    with store.engine.connect() as conn:
        assert conn.execute(select(links.c.dedup_key, links.c.hold_version)).one() == (KEY, None)
    assert repo.store_event(
        store, webhook_id="w1", event_id="e1", event_type="incident.acknowledged", incident_id="Q1",
        occurred_at=now, received_at=now, body=b"{}",
    )  # fmt: skip
    assert not repo.store_event(
        store, webhook_id="w1", event_id="e1", event_type="incident.acknowledged", incident_id="Q1",
        occurred_at=now, received_at=now, body=b"{}",
    )  # fmt: skip
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pagerduty_inbox)).scalar_one() == 1
    store.dispose()


def test_migration_0012_starts_the_links_state_mark_from_the_incidents_last_event(
    db_url: str, clock: FakeClock
) -> None:
    """Incidents known before 0012 keep being judged as they were: their link's state mark starts at last_event_at
    (a late older state event stays stale after the upgrade)."""
    store = Store(db_url)
    db.upgrade(store.engine, "0011")
    now = clock.now()
    with store.engine.begin() as conn:
        rows = [("Q1", now), ("Q2", None)]  # the columns 0011 has (state_event_at is not there yet)
        for incident_id, at in rows:
            values = {"incident_id": incident_id, "dedup_key": KEY, "learned_by": "rest", "updated_at": now}
            conn.execute(insert(incidents).values(**values, last_event_at=at))
    store.upgrade()
    with store.engine.connect() as conn:
        assert repo.event_marks(conn, "Q1")[:2] == (now, now)
        assert repo.event_marks(conn, "Q2")[:2] == (None, None)
        assert repo.event_marks(conn, "Q3")[:2] == (None, None)
    store.dispose()


def test_the_new_secrets_never_show_in_the_settings_or_the_rest_clients_repr(
    db_url: str, rules_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    svc = build(db_url, rules_path, clock, api_token=TOKEN, api_url="http://127.0.0.1:9")
    shown = f"{svc.settings!r} {svc.settings.pagerduty!r} {svc.rest!r} {svc.reverse!r}"
    assert SECRET not in shown and TOKEN not in shown
    with TestClient(build_app(svc)) as c:  # a refused webhook's log line does not quote the configured secret
        assert post(c, fixture("resolved_by_user.json"), secrets=("wrong-secret-0000000",)).status_code == 401
    assert caplog.records and SECRET not in caplog.text
    svc.store.dispose()


def test_a_webhook_another_replica_handled_meanwhile_is_not_applied_twice(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """Two replicas' workers read the same pending webhook (the first one's lease ran out mid-batch): the one
    that comes second writes nothing, so the ticket gets one update."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.acknowledge(incident)
        with TestClient(build_app(svc)) as c:
            deliver(pd, c)
        with svc.store.engine.connect() as conn:
            read_by_first = repo.pending_events(conn, 10)
        second, first = NoteEveryEvent(), NoteEveryEvent()
        assert worker(svc, second).drain() == 2
        late = worker(svc, first)
        assert [late._process(row) for row in read_by_first] == [0, 0]
        assert len(queued(svc, "ticket_update")) == 1
        assert [i["outcome"] for i in inbox(svc)] == ["no_action", "applied"]
        svc.store.dispose()


@dataclass
class MoveOnOurPage(NoteEveryEvent):
    """A rule whose ``sync_back: triggered:`` also moves the ticket (to In Progress) when the page comes back."""

    def on_incident(self, ctx: IncidentContext) -> SyncPlan:
        if ctx.event.event_type is not EventType.TRIGGERED:
            return super().on_incident(ctx)
        update = TicketUpdate(
            ticket=ctx.ticket.ref, marker=f"tp:{ctx.event.event_id}:ops-highest", comment="Paged in PagerDuty",
            transition=Transition(category=StatusCategory.IN_PROGRESS), incident_id=ctx.event.incident_id,
        )  # fmt: skip
        return Plan(ctx.link.rule, (update,), ("triggered → comment, transition",))


class ShowsTransition(JsonDestination):
    def render(self, action: Action) -> Rendered:
        assert isinstance(action, TicketUpdate | IncidentUpdate)
        moved = action.transition is not None if isinstance(action, TicketUpdate) else False
        return Rendered(json.dumps({"kind": action.KIND, "marker": action.marker, "transition": moved}))


def test_our_own_page_arriving_after_the_resolve_writes_its_note_but_never_moves_the_ticket_back(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """PagerDuty delivers our page's ``incident.triggered`` late, after a person acknowledged and resolved: its
    note (the incident's number and link) is still written, its transition is not: the ticket stays done."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock, api_token=TOKEN, api_url=pd.url, from_email=BOT_EMAIL)
        pd.acknowledge(incident, by="PUSER01")
        pd.resolve(incident, by="PUSER01")
        triggered, *later = pd.outbox
        pd.outbox = [*later, triggered]  # the page's own news arrives last
        reverse = ReverseWorker(
            svc.store, MoveOnOurPage, svc.clock, parse=parse_event, lookup=svc.rest, own_user_ids=["PBOT001"],
            destinations=lambda: {"jira": ShowsTransition("jira"), "pagerduty_rest": JsonDestination("pagerduty_rest")},
        )  # fmt: skip
        with TestClient(build_app(svc)) as c:
            assert deliver(pd, c) == [202, 202, 202]
            assert reverse.drain() == 3
        bodies = [json.loads(u["body"]) for u in queued(svc, "ticket_update")]
        own = [b for b in bodies if b["marker"].endswith(":ops-highest")]
        assert len(own) == 1, bodies
        assert own[0]["transition"] is False, "a late page never moves a resolved ticket back"
        svc.store.dispose()


def lose(pd: FakePagerDutyRest, event_type: str) -> None:
    """The fake's queued webhooks of ``event_type`` never arrive (webhooks get lost)."""
    pd.outbox = [d for d in pd.outbox if json.loads(d.body)["event"]["event_type"] != event_type]


def delivered_in(pd: FakePagerDutyRest, svc: Service, order: list[str]) -> None:
    """Deliver the fake's queued webhooks in ``order`` (event types, each taken once, in that order) and run the
    reverse worker."""
    queue = list(pd.outbox)
    pd.outbox = []
    for event_type in order:
        match = next(d for d in queue if json.loads(d.body)["event"]["event_type"] == event_type)
        queue.remove(match)
        pd.outbox.append(match)
    assert not queue, [json.loads(d.body)["event"]["event_type"] for d in queue]
    with TestClient(build_app(svc)) as c:
        assert set(deliver(pd, c)) == {202}
    worker(svc, NoteEveryEvent()).drain()


def test_a_note_delivered_before_the_resolve_does_not_make_the_resolve_look_stale(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """A person acknowledges, resolves, then adds a note; PagerDuty delivers the note before the resolve (it keeps
    no order across event types). The note carries no incident state: the resolve still resolves the link (found
    by the two-way loop test: the link stayed acknowledged on a resolved incident)."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.acknowledge(incident, by="PUSER01")
        pd.resolve(incident, by="PUSER01")
        pd.add_note(incident, "root cause: a full disk", by="PUSER02")
        order = ["incident.triggered", "incident.acknowledged", "incident.annotated", "incident.resolved"]
        delivered_in(pd, svc, order)
        row = link_row(svc)
        assert (row["state"], row["hold_version"]) == ("resolved", content_digest(ticket("10001")))
        svc.store.dispose()


def test_a_reassignment_delivered_before_an_earlier_acknowledge_does_not_make_it_stale(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """The reassignment carries the incident (its status: acknowledged) but moves no link: the acknowledge that
    happened before it, delivered after it, still acknowledges the link (review finding)."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.acknowledge(incident, by="PUSER01")
        pd.reassign(incident, ["PUSER02"], by="PUSER01")
        delivered_in(pd, svc, ["incident.triggered", "incident.reassigned", "incident.acknowledged"])
        assert link_row(svc)["state"] == "acknowledged"
        with svc.store.engine.connect() as conn:  # the snapshot stays the newest event's
            assert conn.execute(select(incidents.c.status)).scalar_one() == "acknowledged"
        svc.store.dispose()


def test_a_reopen_delivered_late_reopens_the_link_only_when_no_later_state_event_was_applied(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """Resolved, reopened, reassigned: the reassignment delivered before the reopen does not make the reopen stale
    (the link is open again). Resolved, reopened, resolved again: the reopen delivered last is older than the
    resolve applied, and the link stays resolved."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.resolve(incident, by="PUSER01")
        pd.unacknowledge(incident)  # back to triggered: PagerDuty sends incident.reopened
        pd.reassign(incident, ["PUSER02"], by="PUSER01")
        order = ["incident.triggered", "incident.resolved", "incident.reassigned", "incident.reopened"]
        delivered_in(pd, svc, order)
        assert link_row(svc)["state"] == "triggered"

        pd.resolve(incident, by="PUSER01")
        pd.unacknowledge(incident)
        pd.resolve(incident, by="PUSER01")
        delivered_in(pd, svc, ["incident.resolved", "incident.resolved", "incident.reopened"])
        assert link_row(svc)["state"] == "resolved"
        svc.store.dispose()


def test_an_acknowledge_after_a_reopen_delivered_before_it_reopens_the_link(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """Resolved, reopened, acknowledged in PagerDuty; the acknowledge is delivered before the reopen. PagerDuty
    acknowledges only an open incident, so an acknowledge newer than the resolve that closed the link means it
    was reopened: the link is acknowledged, and the reopen delivered after it is older news that moves nothing."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.resolve(incident, by="PUSER01")
        delivered_in(pd, svc, ["incident.triggered", "incident.resolved"])
        assert (link_row(svc)["state"], link_row(svc)["hold_version"]) == ("resolved", content_digest(ticket("10001")))
        pd.unacknowledge(incident)  # back to triggered: PagerDuty sends incident.reopened
        pd.acknowledge(incident, by="PUSER02")
        delivered_in(pd, svc, ["incident.acknowledged", "incident.reopened"])
        row = link_row(svc)
        assert (row["state"], row["hold_version"]) == ("acknowledged", None), "open again, no longer held"
        svc.store.dispose()


def test_an_acknowledge_after_a_lost_reopen_reopens_the_link(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    """The reopen's webhook never arrives (webhooks get lost): the acknowledge after it still reopens the link."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.resolve(incident, by="PUSER01")
        pd.unacknowledge(incident)
        pd.acknowledge(incident, by="PUSER02")
        lose(pd, "incident.reopened")
        delivered_in(pd, svc, ["incident.triggered", "incident.resolved", "incident.acknowledged"])
        assert link_row(svc)["state"] == "acknowledged"
        svc.store.dispose()


def test_a_persons_acknowledge_delivered_after_the_ticket_was_done_does_not_reopen_the_link(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """A person acknowledges; before the webhook arrives the ticket is done, and the engine resolves the link and
    queues the resolve. The acknowledge is newer than every event applied so far, but PagerDuty's last news of
    the incident is that it is open: the link was closed by us, not reopened by them, and stays resolved."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        delivered_in(pd, svc, ["incident.triggered"])  # the incident is known: later news is correlated by its id
        pd.acknowledge(incident, by="PUSER01")
        receive(svc, [change(ticket("10001", minutes=1, status="Done", category=StatusCategory.DONE), "wh-done")])
        svc.engine.drain()
        assert link_row(svc)["state"] == "resolved"
        delivered_in(pd, svc, ["incident.acknowledged"])
        assert inbox(svc)[-1]["outcome"] == "applied"  # correlated with the link (its note queued), not ignored
        assert link_row(svc)["state"] == "resolved"
        svc.store.dispose()


@pytest.mark.parametrize(
    ("between", "order", "state"),
    [
        pytest.param(  # the reopen lost: the reassignment carries the open incident (review finding)
            "reassign", ["incident.triggered", "incident.resolved", "incident.reassigned", "incident.acknowledged"],
            "acknowledged", id="lost-reopen-then-reassignment",
        ),
        pytest.param(  # a priority change applied after the resolve replaces the recorded "resolved" (review finding)
            "priority", ["incident.triggered", "incident.resolved", "incident.priority_updated",
                         "incident.acknowledged", "incident.reopened"],
            "acknowledged", id="priority-change-between",
        ),
        pytest.param(  # the acknowledgement timed out; its unacknowledge is delivered right after the resolve
            "timeout", ["incident.triggered", "incident.resolved", "incident.unacknowledged",
                        "incident.acknowledged", "incident.reopened"],
            "triggered", id="ack-timeout-delivered-first",
        ),
    ],
)  # fmt: skip
def test_any_news_of_the_reopened_incident_reopens_the_link_whatever_came_between(
    db_url: str, rules_path: Path, clock: FakeClock, between: str, order: list[str], state: str
) -> None:
    """Resolved, then reopened, and more news of the open incident: whichever of it arrives first after the
    resolve (a reassignment, a priority change, an acknowledge, the acknowledgement's timeout) carries the open
    incident and opens the link as PagerDuty has it; older news delivered after it moves nothing."""
    with FakePagerDutyRest() as pd:
        svc, incident = paged(pd, db_url, rules_path, clock)
        pd.resolve(incident, by="PUSER01")
        pd.unacknowledge(incident)  # back to triggered: PagerDuty sends incident.reopened
        if between == "reassign":
            pd.reassign(incident, ["PUSER02"], by="PUSER01")
        if between == "priority":
            pd.emit(incident, "incident.priority_updated")
        pd.acknowledge(incident, by="PUSER02")
        if between == "timeout":
            pd.unacknowledge(incident)  # incident.unacknowledged: back to triggered
        if "incident.reopened" not in order:
            lose(pd, "incident.reopened")
        delivered_in(pd, svc, order)
        assert pd.state.incidents[incident]["status"] == state
        assert (link_row(svc)["state"], link_row(svc)["hold_version"]) == (state, None)
        svc.store.dispose()
