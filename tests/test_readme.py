"""The README is what a newcomer runs: its commands, settings table and examples must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from ticketpager.settings_doc import table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert "ticketpager serve --dry-run" in blocks[0]
    assert "pip install -e '.[test]'" in blocks[1] and "python -m pytest" in blocks[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[test]'" in ci and "\npython -m pytest\n" in ci


def test_settings_table_matches_the_settings_tree() -> None:
    start = README.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = README.index("<!-- settings-table:end -->")
    assert README[start:end] == table(), "run: python -m ticketpager.settings_doc and paste it into README.md"


def test_sample_webhook_file_exists() -> None:
    assert (ROOT / "docs" / "examples" / "jira-issue-created.json").is_file()


def test_newcomer_walkthrough_dry_run(tmp_path: Path) -> None:
    """Start `serve --dry-run` like the README's first command, run its curl block, see the event."""
    import json
    import shutil
    import subprocess
    import time
    import urllib.request

    import pytest

    from tests.serve_proc import Serve

    if not (shutil.which("curl") and shutil.which("openssl")):
        pytest.skip("the README walkthrough uses curl and openssl, which this machine lacks")
    first = re.findall(r"```bash\n(.*?)```", README, re.S)[0]
    env = dict(re.findall(r"(TICKETPAGER_\w+)=(\S+)", first))
    env["TICKETPAGER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ticketpager.db'}"
    serve = Serve(env, args=("--dry-run",)).start()
    try:
        curl = re.search(r"### Try it.*?```bash\n(.*?)```", README, re.S)
        assert curl is not None
        script = curl.group(1).replace("http://127.0.0.1:8080", serve.url)
        for attempt in range(2):  # the second post is a duplicate: accepted, nothing more sent
            out = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert '"status":"accepted"' in out.stdout, out.stdout + out.stderr
            assert f'"duplicates":{attempt}' in out.stdout
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the event is "sent" (logged) by the delivery worker
            with urllib.request.urlopen(f"{serve.url}/admin/status", timeout=5) as resp:  # noqa: S310
                report = json.loads(resp.read())
            if report["incidents_dry_run"] == 1 and report["outbox_pending"] == 0:  # logged, not sent
                break
            time.sleep(0.1)
    finally:
        serve.stop()
    log = serve.output()
    sent = [line for line in log.splitlines() if "dry run: would send" in line]
    assert len(sent) == 1, log
    assert '"summary": "[OPS-12] Checkout API down in eu-west"' in sent[0]
    assert '"event_action": "trigger"' in sent[0]


def test_every_console_screenshot_is_shown_in_the_readme() -> None:
    """The browser tests write one screenshot per page to docs/console/; the README shows each of them."""
    shots = sorted(p.name for p in (ROOT / "docs" / "console").glob("*.png"))
    assert len(shots) >= 9
    section = README[README.index("## Admin console") : README.index("## Settings")]
    missing = [name for name in shots if f"(docs/console/{name})" not in section]
    assert missing == [], f"README's 'Admin console' section does not show {missing}"
