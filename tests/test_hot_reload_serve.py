"""Hot reload in a running `serve`: a broken rule edit keeps the last good set (and says so in /readyz,
the metrics and the log) while pages keep flowing; a good edit plus SIGHUP swaps the new set in."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.factories import ROUTING_KEY, RULES
from tests.harness import wait_until
from tests.serve_proc import Serve
from tests.test_app import SECRET, jira_body, sign


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
        return str(resp.read().decode())


def wait_for(predicate: Callable[[], bool]) -> bool:
    return wait_until(predicate, 15.0, every=0.2)


def test_bad_edit_keeps_last_good_set_and_sighup_reloads(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rule_file = rules_dir / "ops.yaml"
    rule_file.write_text(RULES)
    serve = Serve(
        {
            "TICKETPAGER_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
            "TICKETPAGER_RULES_PATH": str(rules_dir),
            "TICKETPAGER_JIRA__WEBHOOK_SECRETS": SECRET,
            "TICKETPAGER_ENGINE__GAUGE_INTERVAL_SECONDS": "0.2",
            "PD_PLATFORM_KEY": ROUTING_KEY,
        },
        args=("--dry-run",),
    ).start()
    try:
        first = json.loads(get(f"{serve.url}/readyz"))["rules"]
        rule_file.write_text(RULES.replace("priority: [Highest, P1]", "priority: {equal: Highest}"))
        assert wait_for(lambda: json.loads(get(f"{serve.url}/readyz"))["rules"]["last_reload_error"] is not None)
        ready = json.loads(get(f"{serve.url}/readyz"))
        assert "unknown operator 'equal'" in ready["rules"]["last_reload_error"]
        assert "ops.yaml:" in ready["rules"]["last_reload_error"]
        assert ready["rules"]["digest"] == first["digest"], "the last good set stays active"
        assert ready["degraded"] is True and ready["ready"] is True  # still serving, but an edit did not take
        assert wait_for(lambda: "ticketpager_rules_last_reload_ok 0.0" in get(f"{serve.url}/metrics"))
        assert "ticketpager_rules_reload_failures_total 1.0" in get(f"{serve.url}/metrics")

        body = jira_body()
        status, _ = serve.post("/webhooks/jira", body, {"X-Hub-Signature": sign(body),
                                                        "X-Atlassian-Webhook-Identifier": "hr-1"})
        assert status == 202

        def delivered() -> bool:
            report = json.loads(get(f"{serve.url}/admin/status"))
            return bool(report["incidents_dry_run"] == 1 and report["outbox_pending"] == 0)  # dry run

        assert wait_for(delivered), "the page under the last good rule set was not delivered"

        fixed = RULES.replace("ops-highest", "ops-highest-v2")
        rule_file.write_text(fixed)
        assert serve.proc is not None
        serve.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: json.loads(get(f"{serve.url}/readyz"))["rules"]["last_reload_error"] is None)
        assert json.loads(get(f"{serve.url}/readyz"))["rules"]["digest"] != first["digest"]
        assert "degraded" not in json.loads(get(f"{serve.url}/readyz"))
        time.sleep(0.5)
    finally:
        serve.stop()
    log = serve.output()
    assert "unknown operator 'equal'" in log, "the rejected reload is in the log"
    sent = [line for line in log.splitlines() if "would send" in line]
    assert len(sent) == 1 and '"ticketpager_rule": "ops-highest"' in sent[0], log
