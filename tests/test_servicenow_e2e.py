"""End to end: a fake ServiceNow (TLS) → ``ticketpager poll --once`` → a mock PagerDuty.

A P1 incident of the Network group pages the network routing key, a P2 of the service desk pages the
desk key, a P3 pages nobody; resolving the network incident in ServiceNow resolves its PagerDuty
incident on the next poll, and each event leaves exactly one work note.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fakes.pagerduty_server import MockPagerDuty
from tests.fakes.servicenow_server import FakeInstance, FakeServiceNowServer, make_record
from tests.serve_proc import cli_env, run_cli

pytestmark = pytest.mark.slow

POLL_ONCE = ("poll", "--once", "--source", "servicenow")
RULES = Path(__file__).parent / "fixtures" / "servicenow" / "e2e_rules.yaml"
NETWORK_KEY = "R0NETWORK0000000000000000000000A"
DESK_KEY = "R0DESK000000000000000000000000AB"


def test_poll_once_pages_network_p1_and_resolving_it_resolves(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    fake = FakeInstance(
        [
            make_record(
                "sn-net-1",
                "INC0010001",
                now - timedelta(minutes=10),
                short_description="Core router down",
                priority="1",
                impact="1",
                urgency="1",
                state="2",
                assignment_group="grp-network",
                cmdb_ci="ci-router",
            ),
            make_record("sn-desk-1", "INC0010002", now - timedelta(minutes=8), priority="2", state="1"),
            make_record("sn-low-1", "INC0010003", now - timedelta(minutes=6), priority="3", state="1"),
        ]
    )
    with MockPagerDuty() as pd, FakeServiceNowServer(fake, str(tmp_path)) as sn:
        env = cli_env(
            tmp_path,
            rules=RULES,
            pagerduty_url=pd.url,
            REQUESTS_CA_BUNDLE=sn.ca_pem,
            TICKETPAGER_SERVICENOW__ENABLED="true",
            TICKETPAGER_SERVICENOW__INSTANCE_URL=sn.url,
            TICKETPAGER_SERVICENOW__USERNAME=fake.username,
            TICKETPAGER_SERVICENOW__PASSWORD=fake.password,
            TICKETPAGER_SERVICENOW__WEBHOOK_SECRETS="e2e-webhook-secret",
            PD_NETWORK_KEY=NETWORK_KEY,
            PD_DESK_KEY=DESK_KEY,
        )

        first = run_cli(*POLL_ONCE, env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr

        triggers = {e["routing_key"]: e for e in pd.events if e["event_action"] == "trigger"}
        assert set(triggers) == {NETWORK_KEY, DESK_KEY}
        network = triggers[NETWORK_KEY]
        assert network["payload"]["summary"] == "[INC0010001] Core router down"
        assert network["payload"]["severity"] == "critical"
        assert "INC0010002" in triggers[DESK_KEY]["payload"]["summary"]
        assert not any("INC0010003" in e.get("payload", {}).get("summary", "") for e in pd.events)

        # the admin resolves the incident in ServiceNow, later than anything written so far
        latest = max(datetime.strptime(r["sys_updated_on"], "%Y-%m-%d %H:%M:%S") for r in fake.records.values())
        fake.update("sn-net-1", latest.replace(tzinfo=UTC) + timedelta(minutes=1), state="6", active="false")

        second = run_cli(*POLL_ONCE, env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr

        resolves = [e for e in pd.events if e["event_action"] == "resolve"]
        assert [(e["routing_key"], e["dedup_key"]) for e in resolves] == [(NETWORK_KEY, network["dedup_key"])]
        assert len([e for e in pd.events if e["event_action"] == "trigger"]) == 2  # our notes paged nobody

        notes = [j for j in fake.journal if j["element_id"] == "sn-net-1"]
        assert len(notes) == 2  # one for the trigger, one for the resolve, each written once
        assert all(n["value"].startswith("[ticketpager]") for n in notes)
