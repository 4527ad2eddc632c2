"""End to end: a fake Zendesk → ``ticketpager poll --once`` → a mock PagerDuty.

An urgent ticket from a gold organization pages the support on-call; an urgent ticket from another
organization and a low-priority gold ticket page nobody; a gold urgent ticket changed within the last
minute (withheld by the export) pages on the next poll, not never; solving the first ticket resolves its
incident; each event leaves exactly one internal note, and those notes page nobody.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fakes.pagerduty_server import MockPagerDuty
from tests.fakes.zendesk_server import FakeZendesk
from tests.serve_proc import cli_env, run_cli

pytestmark = pytest.mark.slow

POLL_ONCE = ("poll", "--once", "--source", "zendesk")
RULES = Path(__file__).parent / "fixtures" / "zendesk" / "e2e_rules.yaml"
SUPPORT_KEY = "R0SUPPORT000000000000000000000AB"
GOLD, OTHER = 509974, 600001


def test_poll_once_pages_gold_urgent_and_solving_it_resolves(tmp_path: Path) -> None:
    with MockPagerDuty() as pd, FakeZendesk() as zd:
        zd.add_organization(GOLD, "Gold Customer Ltd", ["gold", "emea"])
        zd.add_organization(OTHER, "Bronze Corp", ["bronze"])
        zd.add_user(20978392, "Dana Requester", "dana@gold-customer.example")
        zd.add_ticket(1, subject="Checkout is down", priority="urgent", status="open", organization_id=GOLD,
                      requester_id=20978392, age_seconds=600)
        zd.add_ticket(2, subject="Cannot log in", priority="urgent", status="new", organization_id=OTHER,
                      age_seconds=500)
        zd.add_ticket(3, subject="Typo on invoice", priority="low", status="open", organization_id=GOLD,
                      age_seconds=400)
        zd.add_ticket(4, subject="Payments failing", priority="urgent", status="new", organization_id=GOLD,
                      age_seconds=10)  # inside the newest minute: the export withholds it for now
        env = cli_env(
            tmp_path,
            rules=RULES,
            pagerduty_url=pd.url,
            TICKETPAGER_ZENDESK__ENABLED="true",
            TICKETPAGER_ZENDESK__URL=zd.url,
            TICKETPAGER_ZENDESK__EMAIL=zd.email,
            TICKETPAGER_ZENDESK__API_TOKEN=zd.token,
            TICKETPAGER_ZENDESK__WEBHOOK_SECRETS="e2e-webhook-secret",
            PD_SUPPORT_KEY=SUPPORT_KEY,
        )

        first = run_cli(*POLL_ONCE, env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        triggers = [e for e in pd.events if e["event_action"] == "trigger"]
        assert len(triggers) == 1, pd.events
        page = triggers[0]
        assert page["routing_key"] == SUPPORT_KEY
        assert page["payload"]["summary"] == "[Zendesk #1] Checkout is down (Gold Customer Ltd)"
        assert page["payload"]["severity"] == "critical"
        assert any(link["href"] == f"{zd.url}/agent/tickets/1" for link in page.get("links", []))

        # time passes in Zendesk; the agent solves ticket 1; a minute later it is exportable
        zd.advance(120)
        zd.update_ticket(1, status="solved")
        zd.advance(61)

        second = run_cli(*POLL_ONCE, env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        resolves = [e for e in pd.events if e["event_action"] == "resolve"]
        assert [e["dedup_key"] for e in resolves] == [page["dedup_key"]]
        triggers = [e for e in pd.events if e["event_action"] == "trigger"]
        assert [e["payload"]["summary"] for e in triggers] == [
            "[Zendesk #1] Checkout is down (Gold Customer Ltd)",
            "[Zendesk #4] Payments failing (Gold Customer Ltd)",  # withheld at first, never skipped
        ]

        # one internal note per event, never public, and they paged nobody
        notes = {tid: [c for c in zd.comments[tid] if c["author_id"] == 777] for tid in (1, 2, 3, 4)}
        assert [len(notes[t]) for t in (1, 2, 3, 4)] == [2, 0, 0, 1]
        assert all(not c["public"] and c["body"].startswith("[ticketpager]") for c in notes[1] + notes[4])

        third = run_cli(*POLL_ONCE, env=env, cwd=tmp_path)  # nothing new: no events, no notes
        assert third.returncode == 0, third.stderr
        assert len(pd.events) == 3
        assert sum(len(c) for c in zd.comments.values()) == 3


def test_connector_against_the_fake_server_pages_throttles_and_resumes() -> None:
    """The real zenpy client over real HTTP (settings.url override): small pages, a 429, a restart."""
    import requests
    from pydantic import SecretStr

    from connectors.zendesk import ZendeskConnector
    from kernel.clock import FakeClock
    from ticketpager.settings import ZendeskSettings

    with FakeZendesk() as zd:
        zd.add_organization(GOLD, "Gold Customer Ltd", ["gold"])
        for tid in range(1, 6):
            zd.add_ticket(tid, priority="urgent", status="open", organization_id=GOLD, age_seconds=600 - tid)
        settings = ZendeskSettings(enabled=True, url=zd.url, email=zd.email, api_token=SecretStr(zd.token), page_size=2)
        clock = FakeClock(datetime.now(UTC))
        conn = ZendeskConnector(settings, clock=clock, session=requests.Session())
        zd.fail_next(1, 429, {"Retry-After": "3"})
        pages = list(conn.poll(conn.start_cursor(clock.now() - timedelta(hours=1))))
        # zenpy sends per_page only with start_time; cursor pages use Zendesk's default (1000)
        assert [[c.ticket.id for c in p.changes] for p in pages] == [["1", "2"], ["3", "4", "5"]]
        assert "per_page=2" in zd.requests[0][1] and "cursor=" in zd.requests[-1][1]
        assert pages[0].changes[0].ticket.attributes["organization_tags"] == ["gold"]
        assert 3.0 in clock.sleeps  # the 429's Retry-After, on the injected clock

        zd.update_ticket(2, status="deleted", age_seconds=90)
        restarted = ZendeskConnector(settings, clock=FakeClock(datetime.now(UTC)), session=requests.Session())
        resumed = list(restarted.poll(pages[-1].cursor))
        assert [(c.ticket.id, c.ticket.status) for p in resumed for c in p.changes] == [("2", "deleted")]
