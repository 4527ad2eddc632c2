"""End to end: a fake Jira Cloud (local HTTP server) → ``ticketpager poll --once`` → a mock PagerDuty.

Five OPS issues across two search pages, two of them Highest: two triggers. One P1 is then moved to
Done in Jira: the next poll resolves exactly that incident. Each event leaves one comment, and those
comments (which bump the issue's ``updated``, as in Jira) page nobody.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fakes.jira_server import FakeJira, jira_time, make_issue
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.serve_proc import cli_env, run_cli

pytestmark = pytest.mark.slow

POLL_ONCE = ("poll", "--once", "--source", "jira")
FIXTURES = Path(__file__).parent / "fixtures" / "jira"
PLATFORM_KEY = "R0PLATFORM000000000000000000000A"


def test_poll_once_pages_two_p1s_and_done_resolves_one(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    fields = json.loads((FIXTURES / "fields.json").read_text())
    # the API user's profile is in India: the JQL literal must be written in IST
    with MockPagerDuty() as pd, FakeJira(deployment="Cloud", time_zone="Asia/Kolkata", fields=fields) as jira:
        for n, (priority, pid) in enumerate(
            [("Highest", "1"), ("Medium", "3"), ("Highest", "1"), ("Low", "4"), ("High", "2")]
        ):
            jira.put(
                make_issue(
                    str(10001 + n),
                    f"OPS-{n + 1}",
                    updated=now - timedelta(minutes=20 - 2 * n),
                    summary=f"Issue {n + 1}",
                    priority=priority,
                    priority_id=pid,
                    base_url=jira.url,
                )
            )
        env = cli_env(
            tmp_path,
            rules=FIXTURES / "e2e_rules.yaml",
            pagerduty_url=pd.url,
            TICKETPAGER_JIRA__ENABLED="true",
            TICKETPAGER_JIRA__URL=jira.url,
            TICKETPAGER_JIRA__EMAIL="ticketpager-bot@acme.example",
            TICKETPAGER_JIRA__API_TOKEN="e2e-api-token",
            TICKETPAGER_JIRA__WEBHOOK_SECRETS="e2e-webhook-secret",
            TICKETPAGER_JIRA__JQL="project = OPS",
            TICKETPAGER_JIRA__PAGE_SIZE="3",
            PD_PLATFORM_KEY=PLATFORM_KEY,
        )

        first = run_cli(*POLL_ONCE, env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr

        searches = [q for m, p, q in jira.requests if p == "/rest/api/2/search/jql"]
        assert len(searches) == 2  # five issues, pages of three
        assert "nextPageToken" in searches[1]
        assert "/rest/api/2/search" not in jira.paths()  # the removed Cloud endpoint is never called
        triggers = [e for e in pd.events if e["event_action"] == "trigger"]
        assert sorted(e["payload"]["summary"] for e in triggers) == ["[OPS-1] Issue 1", "[OPS-3] Issue 3"]
        assert {e["routing_key"] for e in triggers} == {PLATFORM_KEY}
        assert all(e["payload"]["severity"] == "critical" for e in triggers)

        # the on-call fixes OPS-3 and moves it to Done, after everything written so far
        latest = max(datetime.fromisoformat(i["fields"]["updated"]) for i in jira.issues.values())
        done = make_issue(
            "10003",
            "OPS-3",
            updated=latest + timedelta(minutes=1),
            summary="Issue 3",
            priority="Highest",
            priority_id="1",
            status="Done",
            category="done",
            base_url=jira.url,
        )
        jira.put(done)
        assert done["fields"]["updated"] == jira_time(latest + timedelta(minutes=1))

        second = run_cli(*POLL_ONCE, env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr

        ops3 = next(e for e in triggers if "OPS-3" in e["payload"]["summary"])
        resolves = [e for e in pd.events if e["event_action"] == "resolve"]
        assert [(e["routing_key"], e["dedup_key"]) for e in resolves] == [(PLATFORM_KEY, ops3["dedup_key"])]
        assert len([e for e in pd.events if e["event_action"] == "trigger"]) == 2  # our comments paged nobody

        # one comment per event, each once: OPS-1 (trigger), OPS-3 (trigger + resolve)
        assert len(jira.comments.get("10001", [])) == 1
        notes = jira.comments.get("10003", [])
        assert len(notes) == 2
        assert all(n["body"].startswith("[ticketpager]") and ops3["dedup_key"] in n["body"] for n in notes)
