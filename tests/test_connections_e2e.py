"""End to end, two connections of each system (issue 17): a default and a named connection of Jira, Zendesk
and ServiceNow, each against its own local fake, through the service (polls, engine, delivery, the HTTP app).

The same ticket id exists on both instances of every system: it is two tickets, each pages the routing key
of its own connection's rule under its own dedup key, each note lands on the instance the ticket came from,
and a webhook signed with the other connection's secret is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from kernel.fields import declare_connections
from tests.fakes.jira_server import FakeJira, make_issue
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.fakes.servicenow_server import FakeInstance, FakeServiceNowServer, make_record
from tests.fakes.zendesk_server import FakeZendesk, sign
from tests.harness import make_service
from ticketpager.app import build_app

pytestmark = pytest.mark.slow

#: connection → (its rule's routing key, its webhook secret)
KEYS = {
    "jira": "R0JIRADEFAULT0000000000000000001",
    "acme-jira": "R0JIRAACME0000000000000000000002",
    "zendesk": "R0ZENDESKDEFAULT0000000000000003",
    "acme-zendesk": "R0ZENDESKACME0000000000000000004",
    "servicenow": "R0SERVICENOWDEFAULT0000000000005",
    "acme-servicenow": "R0SERVICENOWACME0000000000000006",
}
SECRETS = {name: f"whsec-{name}-0123456789" for name in KEYS}
SYSTEM = {name: name.removeprefix("acme-") for name in KEYS}
JIRA_ID, ZENDESK_ID, SN_ID = "10001", 1, "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def rules() -> str:
    out = ["version: 1", "rules:"]
    for name, key in KEYS.items():
        out += [
            f"  - name: page-{name}",
            f"    when: {{connection: {name}}}",
            "    trigger:",
            f"      routing_key: {key}",
            "      severity: critical",
            '      summary: "[{{ ticket.connection }}] {{ ticket.title }}"',
        ]
    return "\n".join(out) + "\n"


@pytest.fixture(autouse=True)
def _forget_connections() -> Iterator[None]:
    yield
    declare_connections({})


def jira_signed(body: bytes, secret: str, delivery: str) -> dict[str, str]:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature": signature, "X-Atlassian-Webhook-Identifier": delivery}


def zendesk_signed(body: bytes, secret: str, now: datetime) -> dict[str, str]:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "x-zendesk-webhook-signature": sign(secret, stamp, body),
        "x-zendesk-webhook-signature-timestamp": stamp,
        "x-zendesk-webhook-id": "01HW4E0QJ3",
    }


def servicenow_signed(body: bytes, secret: str, now: datetime) -> dict[str, str]:
    signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return {"x-signature": signature, "x-timestamp": str(int(now.timestamp())), "content-type": "application/json"}


def test_two_connections_of_each_system_are_two_instances_end_to_end(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "clients.yaml").write_text(rules())
    (tmp_path / "sn1").mkdir()
    (tmp_path / "sn2").mkdir()
    with (
        MockPagerDuty() as pd,
        FakeJira() as jira,
        FakeJira() as acme_jira,
        FakeZendesk() as zendesk,
        FakeZendesk(email="api@acme-client.example", token="acme-zd-token") as acme_zendesk,  # noqa: S106
        FakeServiceNowServer(FakeInstance(), str(tmp_path / "sn1")) as servicenow,
        FakeServiceNowServer(FakeInstance(password="acme-sn-pw"), str(tmp_path / "sn2")) as acme_servicenow,  # noqa: S106
    ):
        # the same ticket id on both instances of every system, told apart by their titles
        for fake, who in ((jira, "default"), (acme_jira, "acme")):
            fake.put(make_issue(JIRA_ID, "OPS-1", updated=now - timedelta(minutes=5), summary=f"{who} jira down",
                                base_url=fake.url))  # fmt: skip
        for zd, who in ((zendesk, "default"), (acme_zendesk, "acme")):
            zd.add_ticket(ZENDESK_ID, subject=f"{who} zendesk down", priority="urgent", status="open",
                          age_seconds=600)  # fmt: skip
        for sn, who in ((servicenow, "default"), (acme_servicenow, "acme")):
            record = make_record(SN_ID, "INC0010001", now - timedelta(minutes=5), short_description=f"{who} sn down")
            sn.fake.put(record)
        bundle = tmp_path / "ca-bundle.pem"
        bundle.write_text(Path(servicenow.ca_pem).read_text() + Path(acme_servicenow.ca_pem).read_text())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        (tmp_path / "connections.yaml").write_text(
            textwrap.dedent(
                f"""\
                connections:
                  - name: acme-jira
                    system: jira
                    url: {acme_jira.url}
                    email: bot@acme-client.example
                    api_token: acme-jira-token
                    webhook_secrets: [{SECRETS["acme-jira"]}]
                  - name: acme-zendesk
                    system: zendesk
                    url: {acme_zendesk.url}
                    email: {acme_zendesk.email}
                    api_token: {acme_zendesk.token}
                    webhook_secrets: [{SECRETS["acme-zendesk"]}]
                  - name: acme-servicenow
                    system: servicenow
                    instance_url: {acme_servicenow.url}
                    username: {acme_servicenow.fake.username}
                    password: {acme_servicenow.fake.password}
                    webhook_secrets: [{SECRETS["acme-servicenow"]}]
                """
            )
        )
        service = make_service(
            db_url,
            tmp_path / "rules",
            pd.url,
            FakeClock(now),
            connections_file=str(tmp_path / "connections.yaml"),
            jira={"enabled": True, "url": jira.url, "email": "bot@example.com", "api_token": "t0ken",
                  "webhook_secrets": [SECRETS["jira"]]},
            zendesk={"enabled": True, "url": zendesk.url, "email": zendesk.email, "api_token": zendesk.token,
                     "webhook_secrets": [SECRETS["zendesk"]]},
            servicenow={"enabled": True, "instance_url": servicenow.url, "username": servicenow.fake.username,
                        "password": servicenow.fake.password, "webhook_secrets": [SECRETS["servicenow"]]},
        )  # fmt: skip
        try:
            assert sorted(service.pollable_sources()) == sorted(KEYS)
            for name in KEYS:
                report = service.poll_source(name)
                assert report.error is None and report.stored == 1, (name, report.error)
            service.process_all()

            # two tickets per system: one trigger per connection, to its own routing key, under its own key
            triggers = {e["routing_key"]: e for e in pd.events if e["event_action"] == "trigger"}
            assert len(triggers) == len(pd.events) == 6, pd.events
            for name, key in KEYS.items():
                system, ticket_id = SYSTEM[name], {"jira": JIRA_ID, "zendesk": ZENDESK_ID}.get(SYSTEM[name], SN_ID)
                who = "acme" if name.startswith("acme-") else "default"
                page = triggers[key]
                assert page["payload"]["summary"].startswith(f"[{name}] ")
                assert f"{who} " in page["payload"]["summary"], page["payload"]["summary"]
                # a default connection's dedup key is the one every earlier version wrote
                prefix = f"ticketpager/{system}" if name == system else f"ticketpager/{system}/{name}"
                assert page["dedup_key"] == f"{prefix}/{ticket_id}/page-{name}/1"

            # each note went back to the instance its ticket came from, about its own incident only
            def marker(name: str) -> str:
                return str(triggers[KEYS[name]]["dedup_key"]) + ":trigger:"

            for name, comments in (
                ("jira", jira.comments.get(JIRA_ID, [])),
                ("acme-jira", acme_jira.comments.get(JIRA_ID, [])),
                ("zendesk", [c for c in zendesk.comments[ZENDESK_ID] if "[tp:" in str(c.get("body"))]),
                ("acme-zendesk", [c for c in acme_zendesk.comments[ZENDESK_ID] if "[tp:" in str(c.get("body"))]),
                ("servicenow", [{"body": j["value"]} for j in servicenow.fake.journal]),
                ("acme-servicenow", [{"body": j["value"]} for j in acme_servicenow.fake.journal]),
            ):
                bodies = [json.dumps(c.get("body")) for c in comments]
                assert len(bodies) == 1 and marker(name) in bodies[0], (name, bodies)

            # a webhook signed with the other connection's secret is refused; its own secret verifies it
            with TestClient(build_app(service)) as client:
                jira_body = json.dumps({"webhookEvent": "jira:issue_updated", "issue": {"id": JIRA_ID}}).encode()
                other = client.post("/webhooks/jira/acme-jira", content=jira_body,
                                    headers=jira_signed(jira_body, SECRETS["jira"], "d-1"))  # fmt: skip
                back = client.post("/webhooks/jira", content=jira_body,
                                   headers=jira_signed(jira_body, SECRETS["acme-jira"], "d-2"))  # fmt: skip
                own = client.post("/webhooks/jira/acme-jira", content=jira_body,
                                  headers=jira_signed(jira_body, SECRETS["acme-jira"], "d-3"))  # fmt: skip
                assert (other.status_code, back.status_code) == (401, 401) and own.status_code != 401

                zd_body = b'{"type": "zen:event-type:ticket.status_changed", "detail": {}}'
                other = client.post("/webhooks/zendesk/acme-zendesk", content=zd_body,
                                    headers=zendesk_signed(zd_body, SECRETS["zendesk"], now))  # fmt: skip
                own = client.post("/webhooks/zendesk/acme-zendesk", content=zd_body,
                                  headers=zendesk_signed(zd_body, SECRETS["acme-zendesk"], now))  # fmt: skip
                assert other.status_code == 401 and own.status_code != 401, (other.text, own.text)

                sn_body = json.dumps({"table": "incident", "sent_at": int(now.timestamp()), "record": {}}).encode()
                other = client.post("/webhooks/servicenow/acme-servicenow", content=sn_body,
                                    headers=servicenow_signed(sn_body, SECRETS["servicenow"], now))  # fmt: skip
                own = client.post("/webhooks/servicenow/acme-servicenow", content=sn_body,
                                  headers=servicenow_signed(sn_body, SECRETS["acme-servicenow"], now))  # fmt: skip
                assert other.status_code == 401 and own.status_code != 401, (other.text, own.text)
        finally:
            service.store.dispose()
