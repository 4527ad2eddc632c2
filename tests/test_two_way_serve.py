"""End to end through a real ``ticketpager serve`` process, the reverse direction included (issue 16).

``tests/test_two_way_e2e.py`` runs the service in-process on an injected clock, so the threads ``serve``
starts (the ticket webhooks' writer, the engine, the delivery workers and the reverse worker draining the
PagerDuty inbox) never run there as they do in production. Here they do: ``serve`` is a child process on the
real clock, with a connection to a local fake of the ticketing system, the Events API pointed at the Events
API fake, the REST API (``TICKETPAGER_PAGERDUTY__API_URL``) at the PagerDuty REST fake, and a v3 webhook secret.

Per system (Jira here; Zendesk and ServiceNow below, with their statuses): signed ticket webhook → one
trigger at the Events API fake (which the test hands to the REST fake, as PagerDuty opens an incident from it;
its ``incident.triggered`` echo is delivered, signed) → a person acknowledges in PagerDuty → the signed
``incident.acknowledged`` webhook is POSTed to the serve port → the reverse worker learns the incident's dedup
key over REST and the ticket gets the note and the ``In Progress`` transition → a person resolves in PagerDuty
→ the ticket gets the note and the ``Done`` transition with its resolution → the ticket webhooks of our own
writes come back; nothing more is sent to the Events API (PagerDuty already knows). Every wait is bounded and
fails naming what it waited for, with serve's log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests import test_two_way_e2e as e2e
from tests.fakes.jira_server import FakeJira, make_issue
from tests.fakes.pagerduty_rest import BOT_EMAIL, TOKEN, FakePagerDutyRest
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.fakes.servicenow_server import FakeInstance, FakeServiceNowServer, make_record
from tests.fakes.zendesk_server import API_USER_ID, FakeZendesk
from tests.fakes.zendesk_server import sign as zendesk_sign
from tests.serve_proc import Serve, cli_env

pytestmark = pytest.mark.slow

PD_SECRET = "pd-webhook-secret-serve-0001"
JIRA_SECRET = "jira-webhook-secret-serve"
ROUTING_KEY = "R0TWOWAYSERVE0000000000000000000"
WAIT_SECONDS = 15.0  # per step; a healthy run takes well under a second per step
JIRA_RULES = e2e.JIRA_RULES.replace("PD_E2E_KEY", "PD_SERVE_KEY")  # the same rule, this file's key

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], serve: Serve, timeout: float = WAIT_SECONDS) -> T:
    """Poll ``probe`` every 50 ms until it returns something truthy; fail naming ``what`` (with the
    process's log) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if serve.proc is not None and serve.proc.poll() is not None:
            pytest.fail(f"serve exited while waiting for {what}:\n{serve.output()}")
        if time.monotonic() > deadline:
            serve.stop()
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; serve's log:\n{serve.output()}")
        time.sleep(0.05)


def inbox(serve: Serve) -> dict[str, Any]:
    """``/admin/status``'s PagerDuty inbox: webhooks stored and not yet handled by the reverse worker."""
    with urllib.request.urlopen(f"{serve.url}/admin/status", timeout=5) as resp:  # noqa: S310 - loopback
        return dict(json.loads(resp.read())["pagerduty_inbox"])


def quiet(serve: Serve) -> dict[str, Any] | None:
    """``/admin/status`` once every stored ticket change is handled by the engine and every outbox row is
    sent (a row stays pending until its send has returned), else None."""
    with urllib.request.urlopen(f"{serve.url}/admin/status", timeout=5) as resp:  # noqa: S310 - loopback
        report = dict(json.loads(resp.read()))
    return report if report["changes_pending"] == 0 and report["outbox_pending"] == 0 else None


def post_jira(serve: Serve, issue: dict[str, Any], event: str, delivery: str, **extra: Any) -> None:
    payload = {"timestamp": int(time.time() * 1000), "webhookEvent": event, "issue": issue, **extra}
    body = json.dumps(payload).encode()
    headers = {
        "X-Hub-Signature": "sha256=" + hmac.new(JIRA_SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "X-Atlassian-Webhook-Identifier": delivery,
    }
    code, answer = serve.post("/webhooks/jira", body, headers)
    assert code == 202, (code, answer)


def deliver(pd: FakePagerDutyRest, expected: list[str]) -> None:
    """POST the REST fake's queued v3 webhooks (signed with the subscription's secret) to serve; each is
    stored before the answer (202)."""
    assert [e["event_type"] for e in pd.events()] == expected
    assert pd.deliver() == [202] * len(expected)


@contextmanager
def running(
    db_url: str, tmp_path: Path, rules_text: str, **system: str
) -> Iterator[tuple[Serve, MockPagerDuty, FakePagerDutyRest]]:
    """``serve`` with the rules, the ticketing system's settings ``system``, the Events API fake, and the REST
    fake (subscribed to serve's ``/webhooks/pagerduty`` with :data:`PD_SECRET`)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "two-way.yaml").write_text(rules_text)
    with MockPagerDuty() as events, FakePagerDutyRest() as pd:
        env = cli_env(
            tmp_path,
            rules=rules,
            pagerduty_url=events.url,
            TICKETPAGER_DATABASE_URL=db_url,
            PD_SERVE_KEY=ROUTING_KEY,
            TICKETPAGER_PAGERDUTY__API_URL=pd.url,
            TICKETPAGER_PAGERDUTY__API_TOKEN=TOKEN,
            TICKETPAGER_PAGERDUTY__FROM_EMAIL=BOT_EMAIL,
            TICKETPAGER_PAGERDUTY__FROM_USER_ID="PBOT001",
            TICKETPAGER_PAGERDUTY__WEBHOOK_SECRETS=PD_SECRET,
            TICKETPAGER_ENGINE__IDLE_SECONDS="0.2",
            **system,
        )
        serve = Serve(env)
        pd.subscribe(f"{serve.url}/webhooks/pagerduty", PD_SECRET)  # the port is chosen before the start
        serve.start()
        try:
            yield serve, events, pd
        finally:
            serve.stop()


def page_and_echo(serve: Serve, events: MockPagerDuty, pd: FakePagerDutyRest, summary: str) -> str:
    """The one trigger at the Events API; PagerDuty opens the incident from it (its alert carries the dedup
    key) and the ``incident.triggered`` echo (agent: the Events API integration) is delivered and handled.
    Returns the incident id."""
    [trigger] = wait_for("the trigger at the Events API", lambda: events.events[:1], serve)
    assert trigger["event_action"] == "trigger" and trigger["routing_key"] == ROUTING_KEY
    assert trigger["payload"]["summary"] == summary
    incident = pd.apply_event(trigger)
    deliver(pd, ["incident.triggered"])
    wait_for("the triggered echo handled", lambda: inbox(serve)["pending"] == 0, serve)
    return incident


def person_acts(serve: Serve, pd: FakePagerDutyRest, incident: str, action: str) -> None:
    """Jane Doe acknowledges or resolves the incident in PagerDuty; its signed v3 webhook goes to serve."""
    getattr(pd, action)(incident, by="PUSER01")
    deliver(pd, [f"incident.{'acknowledged' if action == 'acknowledge' else 'resolved'}"])


def finish(serve: Serve, events: MockPagerDuty, pd: FakePagerDutyRest) -> None:
    """Once quiet: PagerDuty acted, so nothing went back to it (the one trigger is all the Events API got),
    every request to the REST fake met its spec, and nothing failed."""
    report = wait_for("the echoes handled", lambda: quiet(serve), serve)
    assert (report["changes_failed"], report["dead_letters"]) == (0, 0), report
    assert [e["event_action"] for e in events.events] == ["trigger"]
    assert pd.spec_errors == []
    assert inbox(serve)["failed"] == 0


JIRA = {
    "TICKETPAGER_JIRA__ENABLED": "true",
    "TICKETPAGER_JIRA__DEPLOYMENT": "cloud",
    "TICKETPAGER_JIRA__EMAIL": "ticketpager-bot@acme.example",
    "TICKETPAGER_JIRA__API_TOKEN": "serve-jira-token",
    "TICKETPAGER_JIRA__WEBHOOK_SECRETS": JIRA_SECRET,
    "TICKETPAGER_JIRA__POLL_INTERVAL_SECONDS": "3600",  # one poll at start; the rest comes by webhook
}


def jira_issue_pages(
    serve: Serve, jira: FakeJira, events: MockPagerDuty, pd: FakePagerDutyRest, issue_id: str, key: str, summary: str
) -> str:
    """A Highest issue is created after serve's start-up poll (so it arrives by its signed webhook only) and pages
    once; PagerDuty's ``incident.triggered`` echo is handled. Returns the incident id."""
    wait_for("serve's first Jira poll", lambda: any(p == "/rest/api/2/search/jql" for p in jira.paths()), serve)
    issue = make_issue(issue_id, key, updated=datetime.now(UTC), summary=summary, priority="Highest",
                       priority_id="1", base_url=jira.url)  # fmt: skip
    jira.put(issue)
    post_jira(serve, issue, "jira:issue_created", f"serve-jira-{key}")
    return page_and_echo(serve, events, pd, f"[{key}] {summary}")


def test_serve_jira_ticket_pages_and_a_persons_ack_and_resolve_reach_the_issue(db_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with (
        FakeJira(deployment="Cloud") as jira,
        running(db_url, tmp_path, JIRA_RULES, TICKETPAGER_JIRA__URL=jira.url, **JIRA) as (serve, events, pd),
    ):
        # 1. a signed Jira webhook → one trigger at the Events API
        incident = jira_issue_pages(serve, jira, events, pd, "10042", "OPS-12", "Checkout is down")
        # our own page's incident.triggered brings the first write-back: the incident's number and link
        paged = wait_for("the incident's link on the issue",
                         lambda: [c["body"] for c in jira.comments.get("10042", [])
                                  if "Paged in PagerDuty" in c["body"] and f"/incidents/{incident}" in c["body"]],
                         serve)  # fmt: skip
        assert len(paged) == 1, paged

        # 2. a person acknowledges in PagerDuty → comment naming them with the link, and the transition
        person_acts(serve, pd, incident, "acknowledge")
        wait_for("the acknowledgement on the issue",
                 lambda: jira.issues["10042"]["fields"]["status"]["name"] == "In Progress", serve)  # fmt: skip
        acked = wait_for("the acknowledgement's comment",
                         lambda: [c["body"] for c in jira.comments.get("10042", []) if "acknowledged" in c["body"]],
                         serve)  # fmt: skip
        assert len(acked) == 1, acked
        assert "Jane Doe" in acked[0] and f"/incidents/{incident}" in acked[0], acked[0]
        assert jira.transitioned == [("10042", "In Progress")]
        # the reverse worker learnt which incident is ours over REST (the webhook carries no dedup key)
        assert any(r.path == f"/incidents/{incident}/alerts" for r in pd.requests), [r.path for r in pd.requests]

        # 3. a person resolves in PagerDuty → comment, and the Done transition with its resolution
        person_acts(serve, pd, incident, "resolve")
        wait_for("the resolution on the issue",
                 lambda: jira.issues["10042"]["fields"]["status"]["name"] == "Done", serve)  # fmt: skip
        resolved = wait_for("the resolve's comment",
                            lambda: [c["body"] for c in jira.comments.get("10042", []) if "resolved" in c["body"]],
                            serve)  # fmt: skip
        assert len(resolved) == 1 and "Jane Doe" in resolved[0], resolved
        assert jira.issues["10042"]["fields"]["resolution"]["name"] == "Done"
        assert jira.transitioned == [("10042", "In Progress"), ("10042", "Done")]

        # 4. our own transition and comments come back as Jira webhooks: the issue is Done, its incident is
        # already resolved, so nothing is sent (and no new page)
        # the one-way trigger note, the incident's number and link, the ack, the resolve (each its own write)
        wait_for("the four comments", lambda: len(jira.comments["10042"]) >= 4, serve)
        written = len(jira.comments["10042"])
        assert written == 4, jira.comments["10042"]
        done = jira.issues["10042"]
        post_jira(serve, done, "jira:issue_updated", "serve-jira-2")
        for n, comment in enumerate(jira.comments["10042"]):
            post_jira(serve, done, "comment_created", f"serve-jira-c{n}", comment=comment)
        finish(serve, events, pd)
        assert len(jira.comments["10042"]) == written
    assert time.monotonic() - started < 30


def test_serve_a_person_acknowledging_and_resolving_at_once_leaves_the_issue_done_its_comments_in_order(
    db_url: str, tmp_path: Path
) -> None:
    """Jane acknowledges and resolves within a moment, and PagerDuty delivers both webhooks together: the issue's
    two transitions and comments are written one at a time, in that order (two ticket workers are free, but the
    resolve's waits for the acknowledgement's), so the issue ends Done, not In Progress under a resolved incident."""
    with (
        FakeJira(deployment="Cloud") as jira,
        running(db_url, tmp_path, JIRA_RULES, TICKETPAGER_JIRA__URL=jira.url, **JIRA) as (serve, events, pd),
    ):
        incident = jira_issue_pages(serve, jira, events, pd, "10043", "OPS-13", "Payments are down")

        pd.acknowledge(incident, by="PUSER01")
        pd.resolve(incident, by="PUSER01")
        deliver(pd, ["incident.acknowledged", "incident.resolved"])
        wait_for("both transitions", lambda: len(jira.transitioned) == 2, serve)
        assert jira.transitioned == [("10043", "In Progress"), ("10043", "Done")]
        assert jira.issues["10043"]["fields"]["status"]["name"] == "Done"
        wait_for("the four comments", lambda: len(jira.comments.get("10043", [])) >= 4, serve)
        bodies = [str(c["body"]) for c in jira.comments["10043"]]
        said = [next(i for i, b in enumerate(bodies) if word in b) for word in ("acknowledged by", "resolved by")]
        assert said == [2, 3], bodies  # after the two notes that it paged, the acknowledgement, then the resolve
        finish(serve, events, pd)


# -- Zendesk ------------------------------------------------------------------------------------------------------
ZENDESK_RULES = e2e.ZENDESK_RULES.replace("PD_E2E_KEY", "PD_SERVE_KEY")
ZENDESK_SECRET = "zendesk-webhook-secret-serve"


def post_zendesk(serve: Serve, zd: FakeZendesk, ticket_id: int, kind: str, delivery: str, **event: Any) -> None:
    """A signed event-subscription webhook (``zen:event-type:ticket.*``) with the ticket as Zendesk has it now."""
    ticket = zd.tickets[ticket_id]
    fields = ("subject", "description", "tags", "group_id", "organization_id", "requester_id", "assignee_id",
              "created_at", "updated_at")  # fmt: skip
    detail = {k: ticket[k] for k in fields} | {
        "id": str(ticket_id),
        "priority": str(ticket["priority"]).upper(),
        "status": str(ticket["status"]).upper(),
    }
    body = json.dumps(
        {"id": delivery, "type": f"zen:event-type:ticket.{kind}", "subject": f"zen:ticket:{ticket_id}",
         "time": ticket["updated_at"], "detail": detail, "event": event, "zendesk_event_version": "2022-11-06"}
    ).encode()  # fmt: skip
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "X-Zendesk-Webhook-Signature": zendesk_sign(ZENDESK_SECRET, stamp, body),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        "X-Zendesk-Webhook-Id": delivery,
    }
    code, answer = serve.post("/webhooks/zendesk", body, headers)
    assert code == 202, (code, answer)


def test_serve_zendesk_ticket_pages_and_a_persons_ack_and_resolve_reach_the_ticket(db_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with FakeZendesk() as zd:
        system = {
            "TICKETPAGER_ZENDESK__ENABLED": "true",
            "TICKETPAGER_ZENDESK__URL": zd.url,
            "TICKETPAGER_ZENDESK__EMAIL": zd.email,
            "TICKETPAGER_ZENDESK__API_TOKEN": zd.token,
            "TICKETPAGER_ZENDESK__WEBHOOK_SECRETS": ZENDESK_SECRET,
            "TICKETPAGER_ZENDESK__POLL_INTERVAL_SECONDS": "3600",
        }
        with running(db_url, tmp_path, ZENDESK_RULES, **system) as (serve, events, pd):
            wait_for("serve's first Zendesk poll", lambda: any("incremental" in p for _, p in zd.requests), serve)
            zd.add_ticket(35436, subject="Checkout is down", priority="urgent", status="new", age_seconds=0)

            post_zendesk(serve, zd, 35436, "created", "zd-serve-1")
            incident = page_and_echo(serve, events, pd, "[Zendesk #35436] Checkout is down")

            person_acts(serve, pd, incident, "acknowledge")
            wait_for("the acknowledgement on the ticket", lambda: zd.tickets[35436]["status"] == "open", serve)
            acked = [str(c["body"]) for c in zd.comments[35436] if "acknowledged" in str(c["body"])]
            assert len(acked) == 1 and "acknowledged by Jane Doe" in acked[0], acked
            assert f"/incidents/{incident}" in acked[0], acked[0]

            person_acts(serve, pd, incident, "resolve")
            wait_for("the resolution on the ticket", lambda: zd.tickets[35436]["status"] == "solved", serve)
            resolved = [str(c["body"]) for c in zd.comments[35436] if "resolved" in str(c["body"])]
            assert len(resolved) == 1 and "Jane Doe" in resolved[0], resolved
            # the one-way trigger note, the incident's number and link, the ack, the resolve (each its own write)
            wait_for("the four notes", lambda: len(zd.comments[35436]) >= 4, serve)
            written = len(zd.comments[35436])
            assert written == 4, zd.comments[35436]
            assert all(c["public"] is False for c in zd.comments[35436])  # internal notes

            # our own status change and notes come back as Zendesk webhooks: nothing is sent
            post_zendesk(serve, zd, 35436, "status_changed", "zd-serve-2", previous="OPEN", current="SOLVED")
            for n, comment in enumerate(zd.comments[35436]):
                post_zendesk(serve, zd, 35436, "comment_added", f"zd-serve-c{n}",
                             comment={"id": str(comment["id"]), "body": comment["body"], "is_public": False,
                                      "author": {"id": str(API_USER_ID), "is_staff": True}})  # fmt: skip
            finish(serve, events, pd)
            assert len(zd.comments[35436]) == written
    assert time.monotonic() - started < 30


# -- ServiceNow ---------------------------------------------------------------------------------------------------
SERVICENOW_RULES = e2e.SERVICENOW_RULES.replace("PD_E2E_KEY", "PD_SERVE_KEY")
SERVICENOW_SECRET = "servicenow-webhook-secret-serve"
SYS_ID = "sn-serve-000000000000000000000001"


def post_servicenow(serve: Serve, fake: FakeInstance, delivery: str) -> None:
    """The business rule's outbound message: the record as the instance has it now, HMAC-signed."""
    sent_at = int(time.time())
    body = json.dumps(
        {"event": "update", "table": "incident", "delivery_id": delivery, "sent_at": sent_at,
         "instance": "https://acme.service-now.com", "record": dict(fake.records[SYS_ID]), "last_work_note": ""}
    ).encode()  # fmt: skip
    signature = base64.b64encode(hmac.new(SERVICENOW_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    code, answer = serve.post("/webhooks/servicenow", body, {"X-Signature": signature, "X-Timestamp": str(sent_at)})
    assert code == 202, (code, answer)


def test_serve_servicenow_record_pages_and_a_persons_ack_and_resolve_reach_the_record(
    db_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    fake = FakeInstance()
    with FakeServiceNowServer(fake, str(tmp_path)) as sn:
        system = {
            "REQUESTS_CA_BUNDLE": sn.ca_pem,  # the fake instance's throwaway CA (TLS, as pysnc needs)
            "TICKETPAGER_SERVICENOW__ENABLED": "true",
            "TICKETPAGER_SERVICENOW__INSTANCE_URL": sn.url,
            "TICKETPAGER_SERVICENOW__USERNAME": fake.username,
            "TICKETPAGER_SERVICENOW__PASSWORD": fake.password,
            "TICKETPAGER_SERVICENOW__WEBHOOK_SECRETS": SERVICENOW_SECRET,
            "TICKETPAGER_SERVICENOW__POLL_INTERVAL_SECONDS": "3600",
        }
        with running(db_url, tmp_path, SERVICENOW_RULES, **system) as (serve, events, pd):
            wait_for("serve's first ServiceNow poll", fake.lists, serve)
            fake.put(make_record(SYS_ID, "INC0010042", datetime.now(UTC), short_description="Core router down",
                                 priority="1", impact="1", urgency="1", state="1"))  # fmt: skip

            def notes() -> list[str]:
                return [j["value"] for j in fake.journal if j["element_id"] == SYS_ID]

            post_servicenow(serve, fake, f"{SYS_ID}:1")
            incident = page_and_echo(serve, events, pd, "[INC0010042] Core router down")

            person_acts(serve, pd, incident, "acknowledge")
            wait_for("the acknowledgement on the record", lambda: fake.records[SYS_ID]["state"] == "2", serve)
            acked = [n for n in notes() if "acknowledged" in n]
            assert len(acked) == 1 and "acknowledged by Jane Doe" in acked[0], notes()
            assert f"/incidents/{incident}" in acked[0], acked[0]

            person_acts(serve, pd, incident, "resolve")
            wait_for("the resolution on the record", lambda: fake.records[SYS_ID]["state"] == "6", serve)
            resolved = [n for n in notes() if "resolved" in n]
            assert len(resolved) == 1 and "Jane Doe" in resolved[0], notes()
            record = fake.records[SYS_ID]
            assert (record["close_code"], record["close_notes"]) == ("Solved (Permanently)", "Jane Doe")
            # the one-way trigger note, the incident's number and link, the ack, the resolve (each its own write)
            wait_for("the four work notes", lambda: len(fake.journal) >= 4, serve)
            written = len(fake.journal)
            assert written == 4, fake.journal
            assert {j["element"] for j in fake.journal} == {"work_notes"}  # internal: work notes only

            # our own PATCH comes back as the business rule's message (updated by us): nothing is sent
            post_servicenow(serve, fake, f"{SYS_ID}:2")
            finish(serve, events, pd)
            assert len(fake.journal) == written
    assert time.monotonic() - started < 30
