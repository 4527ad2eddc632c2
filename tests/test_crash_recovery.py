"""A process killed with SIGKILL after answering a webhook, before delivering its page: after a restart the
page is delivered, once. And SIGTERM stops serve cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.factories import ROUTING_KEY, RULES
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.serve_proc import Serve, free_port
from tests.test_app import SECRET, jira_body, sign


def serve_env(db_url: str, rules: Path, pd_url: str) -> dict[str, str]:
    return {
        "TICKETPAGER_DATABASE_URL": db_url,
        "TICKETPAGER_RULES_PATH": str(rules),
        "TICKETPAGER_JIRA__WEBHOOK_SECRETS": SECRET,
        "TICKETPAGER_PAGERDUTY__EVENTS_URL": pd_url,
        "TICKETPAGER_PAGERDUTY__BACKOFF_BASE_SECONDS": "0.2",
        "TICKETPAGER_PAGERDUTY__BACKOFF_CAP_SECONDS": "0.5",
        "TICKETPAGER_PAGERDUTY__TIMEOUT_SECONDS": "2",
        "TICKETPAGER_ENGINE__CLAIM_SECONDS": "1",
        "TICKETPAGER_ENGINE__IDLE_SECONDS": "0.05",
        "PD_PLATFORM_KEY": ROUTING_KEY,
    }


def test_sigkill_after_202_delivers_once_after_restart(db_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    dead_pd = f"http://127.0.0.1:{free_port()}/v2/enqueue"  # nothing listens: delivery cannot happen
    first = Serve(serve_env(db_url, rules, dead_pd)).start()
    try:
        body = jira_body(status_key="new")
        status, answer = first.post("/webhooks/jira", body, {"X-Hub-Signature": sign(body),
                                                             "X-Atlassian-Webhook-Identifier": "crash-1"})
        assert status == 202, answer
        time.sleep(0.5)  # let the engine and a failing delivery attempt run, then die hard
    finally:
        first.kill()
    with MockPagerDuty() as pd:
        second = Serve(serve_env(db_url, rules, pd.url), port=first.port).start()
        try:
            deadline = time.monotonic() + 20
            while not pd.events and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.5)  # anything sent twice would arrive by now (claims expire after 1 s)
        finally:
            assert second.stop() == 0, second.output()
        assert [e["event_action"] for e in pd.events] == ["trigger"], second.output()
        assert pd.events[0]["routing_key"] == ROUTING_KEY


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    proc = Serve(serve_env(f"sqlite:///{tmp_path / 'tp.db'}", rules, "http://127.0.0.1:9/v2/enqueue")).start()
    started = time.monotonic()
    assert proc.stop() == 0
    assert time.monotonic() - started < 15
    assert "stopped" in proc.output()


def test_serve_warns_about_placeholder_routing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in dry run, the examples' `${PD_…:-dry-run-…}` defaults would turn every page into a dead letter."""
    examples = Path(__file__).resolve().parent.parent / "rules" / "examples"
    env = serve_env(f"sqlite:///{tmp_path / 'tp.db'}", examples, "http://127.0.0.1:9/v2/enqueue")
    del env["PD_PLATFORM_KEY"]  # the example falls back to its `dry-run-platform` placeholder
    monkeypatch.delenv("PD_PLATFORM_KEY", raising=False)
    proc = Serve(env).start()
    assert proc.stop() == 0
    log = proc.output()
    assert "rule 'jira-ops-p1': routing key ****form is not a 32-character PagerDuty integration key" in log
    assert "dry-run-platform" not in log, "the key itself is masked"
