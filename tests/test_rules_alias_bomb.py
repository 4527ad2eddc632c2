"""A rule file whose YAML aliases expand without bound ("billion laughs") is refused at the alias, before it is
expanded: 7 levels of 9 aliases each in 557 bytes took ``rules check`` 10 s and 448 MB, 8 levels a MemoryError.
The service's hot reload reads files with the same loader, so it keeps the last good set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rules import RuleStore
from rules.loader import MAX_ALIAS_VALUES
from ticketpager.rules_cli import main

KEY = "abcdefabcdefabcdefabcdefabcdef12"
HEAD = f"""\
version: 1
rules:
  - name: ops-p1
    when: {{priority: P1}}
    trigger:
      routing_key: {KEY}
      severity: critical
      summary: s
      custom_details:
"""
BOMB = (
    HEAD
    + "        l0: &l0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
    + "".join(f"        l{n}: &l{n} [{','.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 7))
)


def test_an_alias_bomb_is_refused_at_the_alias_that_goes_over_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB.encode()) < 600
    assert main(["check", str(path)]) == 1
    # the aliases of l1..l4 add 90 + 819 + 7,380 + 66,429 values; the first *l4 in l5 (line 15, column 18) adds
    # 66,430 more: past the limit
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:15:18: YAML aliases expand to more than 100,000 values (an alias bomb?)",
        f"1 error(s) in {path}",
    ]
    assert MAX_ALIAS_VALUES == 100_000


def test_the_hot_reload_keeps_the_last_good_set(tmp_path: Path) -> None:
    path = tmp_path / "ops.yaml"
    path.write_text(HEAD + "        team: ops\n")
    store = RuleStore(path, env={})
    path.write_text(BOMB)
    assert store.reload() is False
    assert store.last_error == f"{path}:15:18: YAML aliases expand to more than 100,000 values (an alias bomb?)"
    assert store.current.names == ("ops-p1",)


def test_a_file_with_a_few_aliases_still_loads_and_pages_with_them_expanded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ops.yaml"
    path.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: ops-p1\n"
        "    when: &p1 {priority: Highest}\n"
        "    trigger: &page\n"
        f"      routing_key: {KEY}\n"
        "      severity: critical\n"
        "      summary: s\n"
        "      custom_details:\n"
        "        owners: &owners [ops, sre, dba]\n"
        "        escalation: {first: *owners, then: *owners}\n"
        "  - name: ops-p1-done\n"
        "    when: {<<: *p1, status_category: done}\n"
        "    trigger: {<<: *page, severity: info}\n"
    )
    assert main(["check", str(path)]) == 0
    ticket = Path(__file__).parent.parent / "rules" / "examples" / "jira-ops-p1.ticket.json"
    capsys.readouterr()
    assert main(["test", str(path), "--ticket", str(ticket), "--json"]) == 0
    [event] = json.loads(capsys.readouterr().out)["events"]
    details = event["payload"]["custom_details"]
    assert details["owners"] == ["ops", "sre", "dba"]
    assert details["escalation"] == {"first": ["ops", "sre", "dba"], "then": ["ops", "sre", "dba"]}
