"""``trigger.custom_details`` must be a mapping: anything else passed ``rules check`` and then failed every page
of the rule when the PagerDuty event was built (``dict(custom_details)``), so a P1 never paged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ticketpager.rules_cli import main

KEY = "abcdefabcdefabcdefabcdefabcdef12"
RULE = """\
version: 1
rules:
  - name: ops-p1
    when: {{priority: P1}}
    trigger:
      routing_key: "${{PD_KEY}}"
      severity: critical
      summary: "{{{{ ticket.key }}}} down"
      custom_details:{details}
"""
TICKET = {
    "source": "jira",
    "id": "10001",
    "key": "OPS-1",
    "url": "https://example.atlassian.net/browse/OPS-1",
    "title": "Checkout down",
    "status": "Open",
    "status_category": "new",
    "priority": "P1",
    "created": "2026-01-05T10:00:00+00:00",
    "updated": "2026-01-05T10:00:00+00:00",
}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_KEY", KEY)


def _check(tmp_path: Path, details: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Path, str]:
    path = tmp_path / "ops.yaml"
    path.write_text(RULE.format(details=details))
    code = main(["check", str(path)])
    return code, path, capsys.readouterr().err


@pytest.mark.parametrize(
    ("details", "message"),
    [
        (
            "\n        - team: ops\n        - runbook: https://wiki/ops",
            "must be a mapping (key: value), not a list: remove the '- ' before each key",
        ),
        ("\n        - ops\n        - db", "must be a mapping (key: value), not a list"),
        (
            " '{{ ticket.description }}'",
            "must be a mapping (key: value), not text: give the text a key, e.g. {note: '...'}",
        ),
        (" 3", "must be a mapping (key: value), not a number (3)"),
        (" true", "must be a mapping (key: value), not true (a boolean)"),
        (" []", "must be a mapping (key: value), not a list"),
    ],
)
def test_a_custom_details_that_is_not_a_mapping_is_an_error_at_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], details: str, message: str
) -> None:
    code, path, err = _check(tmp_path, details, capsys)
    column = 9 if details.startswith("\n") else 23
    line = 10 if details.startswith("\n") else 9
    assert code == 1
    assert err.splitlines() == [
        f"{path}:{line}:{column}: rule 'ops-p1' → trigger → custom_details: {message}",
        f"1 error(s) in {path}",
    ]


@pytest.mark.parametrize("details", ["", " null", " {}"])
def test_an_empty_custom_details_pages_with_the_built_in_details(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], details: str
) -> None:
    code, path, _ = _check(tmp_path, details, capsys)
    assert code == 0
    ticket = tmp_path / "ticket.json"
    ticket.write_text(json.dumps(TICKET))
    assert main(["test", str(path), "--ticket", str(ticket), "--json"]) == 0
    [event] = json.loads(capsys.readouterr().out)["events"]
    assert event["payload"]["custom_details"] == {
        "ticketpager_rule": "ops-p1",
        "ticketpager_reason": event["payload"]["custom_details"]["ticketpager_reason"],
        "ticket": "OPS-1",
        "status": "Open",
        "priority": "P1",
        "url": "https://example.atlassian.net/browse/OPS-1",
    }
