"""The shipped examples: each passes `rules check`, has a golden `rules test`, and matches the JSON Schema.
Also the rules CLI end to end (subprocess, as an admin runs it in CI)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from kernel.model import Ticket
from rules import load_rules
from rules.schema import build_schema, schema_text
from ticketpager.rules_cli import simulate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rules" / "examples"
# example -> extra `rules test` arguments (the time rule needs a "now" 35 minutes after creation)
GOLDEN = {
    "jira-ops-p1": ["--previous", str(EXAMPLES / "jira-ops-p1.previous.json")],
    "zendesk-vip-urgent": [],
    "servicenow-p1-p2": [],
    "support-unassigned-p2": ["--now", "2026-11-30T09:40:00Z"],
    "servicenow-central-ops": ["--pagerduty-event", str(EXAMPLES / "servicenow-central-ops.pagerduty.json")],
}


def _env() -> dict[str, str]:
    """The environment without any PD_* key: the examples' ${VAR:-default} must carry them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PD_")}


def cli(
    *args: str, env: dict[str, str] | None = None, module: str = "ticketpager.rules_cli"
) -> subprocess.CompletedProcess[str]:
    """Run a CLI (``ticketpager.rules_cli``, or ``ticketpager.cli`` — the ``ticketpager`` console script) from the
    repository root."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env() if env is None else env,
        timeout=60,
    )


def test_examples_are_all_covered() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.yaml")} == set(GOLDEN)


def test_examples_directory_passes_rules_check_without_any_keys() -> None:
    done = cli("check", str(EXAMPLES))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 6 rules in")
    assert "time rules: support-p2-unassigned-30m" in done.stdout


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_example_passes_check_and_its_golden_rules_test(name: str) -> None:
    rule_file = str(EXAMPLES / f"{name}.yaml")
    assert cli("check", rule_file).returncode == 0
    done = cli(
        "test",
        rule_file,
        "--ticket",
        str(EXAMPLES / f"{name}.ticket.json"),
        *GOLDEN[name],
        "--expect",
        str(EXAMPLES / f"{name}.expect.json"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"OK: matches {EXAMPLES / f'{name}.expect.json'}" in done.stdout
    expected = json.loads((EXAMPLES / f"{name}.expect.json").read_text())
    assert any(v == "matched" for v in expected["verdicts"].values()) and expected["events"]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_examples_validate_against_the_published_schema(name: str) -> None:
    document = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    document = json.loads(json.dumps(document, default=str))  # YAML dates -> text, as an editor sees them
    jsonschema.validate(document, build_schema())


def test_schema_json_is_current_and_cli_prints_it() -> None:
    assert (ROOT / "rules" / "schema.json").read_text() == schema_text(), (
        "run: python -m rules.schema > rules/schema.json"
    )
    done = cli("schema")
    assert done.returncode == 0 and json.loads(done.stdout) == build_schema()
    jsonschema.Draft202012Validator.check_schema(build_schema())


def test_schema_rejects_what_an_editor_should_flag() -> None:
    bad = {
        "version": 1,
        "rules": [
            {
                "name": "x",
                "when": {"priority": {"equal": "P1"}},
                "trigger": {"routing_key": "k", "severity": "critcal", "summary": "s"},
            }
        ],
    }
    errors = list(jsonschema.Draft202012Validator(build_schema()).iter_errors(bad))
    assert errors


def test_golden_mismatch_exits_1_with_a_diff(tmp_path: Path) -> None:
    expect = json.loads((EXAMPLES / "zendesk-vip-urgent.expect.json").read_text())
    expect["events"][0]["payload"]["severity"] = "warning"
    (tmp_path / "expect.json").write_text(json.dumps(expect))
    done = cli(
        "test",
        str(EXAMPLES / "zendesk-vip-urgent.yaml"),
        "--ticket",
        str(EXAMPLES / "zendesk-vip-urgent.ticket.json"),
        "--expect",
        str(tmp_path / "expect.json"),
    )
    assert done.returncode == 1
    assert '-        "severity": "warning",' in done.stderr and '+        "severity": "critical",' in done.stderr


def test_rules_test_masks_routing_keys_and_explains(tmp_path: Path) -> None:
    env = {**_env(), "PD_SUPPORT_KEY": "R0UT1NGKEYSECRETVALUE0000000wxyz"}
    done = cli("test", str(EXAMPLES), "--ticket", str(EXAMPLES / "zendesk-vip-urgent.ticket.json"), env=env)
    assert done.returncode == 0, done.stderr
    assert "R0UT1NGKEYSECRETVALUE" not in done.stdout + done.stderr
    assert '"routing_key": "****wxyz"' in done.stdout
    assert "jira-ops-p1: NOT APPLICABLE" in done.stdout
    assert "source is zendesk, rule wants jira" in done.stdout
    assert "zendesk-vip-urgent: MATCHED" in done.stdout


def test_rules_check_reports_every_error_and_exits_1() -> None:
    bad = ROOT / "tests" / "fixtures" / "rules" / "bad_dir"
    done = cli("check", str(bad), env={**_env(), "PD_KEY": "R0KEY000000000000000000000000001"})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{bad / 'b.yaml'}:6:11: rule 'shared': duplicate rule name (first defined at {bad / 'a.yaml'}:3:11)",
        f"1 error(s) in {bad}",
    ]


def test_rules_test_usage_errors_exit_2(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("{not json")
    done = cli("test", str(EXAMPLES), "--ticket", str(tmp_path / "t.json"))
    assert done.returncode == 2 and f"{tmp_path / 't.json'}:1:2: invalid JSON" in done.stderr
    (tmp_path / "t.json").write_text('{"some": "vendor payload"}')
    done = cli("test", str(EXAMPLES), "--ticket", str(tmp_path / "t.json"))
    assert done.returncode == 2 and "pass --source" in done.stderr


def test_rules_test_reads_a_ticket_saved_as_utf16(tmp_path: Path) -> None:
    """Windows PowerShell's `>` writes UTF-16: the same ticket must give the same verdict, not a traceback."""
    ticket = EXAMPLES / "zendesk-vip-urgent.ticket.json"
    utf16 = tmp_path / "utf16.json"
    utf16.write_text(ticket.read_text(encoding="utf-8"), encoding="utf-16")
    done = cli("test", str(EXAMPLES), "--ticket", str(utf16), env=_env())
    assert done.returncode == 0, done.stderr
    assert "zendesk-vip-urgent: MATCHED" in done.stdout
    (tmp_path / "latin1.json").write_bytes(b'{"title": "caf\xe9"}')
    done = cli("test", str(EXAMPLES), "--ticket", str(tmp_path / "latin1.json"), env=_env())
    assert done.returncode == 2 and "save it as UTF-8" in done.stderr and "Traceback" not in done.stderr


TIER_RULE = """
version: 1
rules:
  - name: jira-ops-gold
    source: jira
    when:
      project: OPS
      custom.Customer Tier: {in: [Gold, Platinum]}
    trigger: {routing_key: R0UT1NGKEY0000000000000000000001, severity: critical, summary: s}
"""


def test_rules_test_explains_jira_custom_field_names_and_takes_jiras_names_map(tmp_path: Path) -> None:
    """A Jira webhook body names custom fields by id only: `rules test` says why `custom.Customer Tier` is
    missing instead of a bare NO MATCH, and takes Jira's own `names` map (REST ?expand=names) from the file."""
    (tmp_path / "r.yaml").write_text(TIER_RULE)
    sample = ROOT / "docs" / "examples" / "jira-issue-created.json"
    done = cli("test", str(tmp_path / "r.yaml"), "--ticket", str(sample), "--source", "jira")
    assert done.returncode == 0, done.stderr
    assert "jira-ops-gold: NO MATCH" in done.stdout
    assert "custom.Customer Tier" in done.stderr and "expand=names" in done.stderr
    payload = json.loads(sample.read_text())
    payload["names"] = {"customfield_10010": "Customer Tier", "summary": "Summary"}
    (tmp_path / "named.json").write_text(json.dumps(payload))
    done = cli("test", str(tmp_path / "r.yaml"), "--ticket", str(tmp_path / "named.json"), "--source", "jira")
    assert done.returncode == 0, done.stderr
    assert "jira-ops-gold: MATCHED" in done.stdout and "expand=names" not in done.stderr


def test_rules_test_reads_the_change_list_a_jira_webhook_carries(tmp_path: Path) -> None:
    """The service reads a Jira webhook's changelog for changed/changed_to/changed_from; `rules test`
    on the same body must give the same verdict without --previous."""
    (tmp_path / "r.yaml").write_text(
        "version: 1\nrules:\n"
        "  - name: status-done\n    source: jira\n    continue: true\n"
        "    when: {status: {changed_to: Done}}\n"
        "    trigger: {routing_key: R0UT1NGKEY0000000000000000000001, severity: info, summary: s}\n"
        "  - name: tier-gold\n    source: jira\n"
        "    when: {custom.customfield_10010: {changed_from: Silver}}\n"
        "    trigger: {routing_key: R0UT1NGKEY0000000000000000000001, severity: info, summary: s}\n"
    )
    body = ROOT / "tests" / "fixtures" / "jira" / "webhook_issue_updated_done.json"
    done = cli("test", str(tmp_path / "r.yaml"), "--ticket", str(body), "--source", "jira")
    assert done.returncode == 0, done.stderr
    assert "status-done: MATCHED" in done.stdout and "tier-gold: MATCHED" in done.stdout


def test_rules_test_json_lists_verdicts_in_file_order(tmp_path: Path) -> None:
    rule = (
        "    when: {project: OPS}\n"
        "    trigger: {routing_key: R0UT1NGKEY0000000000000000000001, severity: info, summary: s}\n"
    )
    (tmp_path / "r.yaml").write_text(f"version: 1\nrules:\n  - name: zulu\n{rule}  - name: alpha\n{rule}")
    sample = ROOT / "docs" / "examples" / "jira-issue-created.json"
    done = cli("test", str(tmp_path / "r.yaml"), "--ticket", str(sample), "--source", "jira", "--json")
    assert done.returncode == 0, done.stderr
    assert list(json.loads(done.stdout)["verdicts"]) == ["zulu", "alpha"]


def test_rules_command_is_registered_in_the_service_cli() -> None:
    done = cli("rules", "check", str(EXAMPLES), module="ticketpager.cli")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 6 rules")


@pytest.mark.parametrize(
    ("now", "changes", "paged"),
    [
        ("2026-11-30T09:40:00+00:00", {}, True),  # 35 min old, Monday 10:40 Berlin
        ("2026-11-30T09:20:00+00:00", {}, False),  # only 15 minutes old
        ("2026-11-30T17:30:00+00:00", {}, False),  # 18:30 Berlin: outside support hours
        ("2026-12-01T07:00:00+00:00", {}, True),  # next morning 08:00 Berlin: pages then
        ("2026-11-30T09:40:00+00:00", {"assignee": "Sam"}, False),  # someone took it
    ],
)
def test_time_rule_example(now: str, changes: dict[str, str], paged: bool) -> None:
    from datetime import datetime

    ruleset = load_rules(EXAMPLES, env={})
    ticket = Ticket.from_json({**json.loads((EXAMPLES / "support-unassigned-p2.ticket.json").read_text()), **changes})
    results, events = simulate(ruleset, ticket, None, datetime.fromisoformat(now))
    assert [e.rule for e in events] == (["support-p2-unassigned-30m"] if paged else [])


HEADER_COMMAND = re.compile(r"^#\s+(ticketpager rules .+)$")


def _header_commands(name: str) -> list[list[str]]:
    """The `ticketpager rules ...` commands written in an example's header comment (before `version:`)."""
    header = []
    for line in (EXAMPLES / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    return [shlex.split(m.group(1)) for m in map(HEADER_COMMAND.match, header) if m]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_example_header_commands_work_exactly_as_written(name: str) -> None:
    commands = _header_commands(name)
    tests = [c for c in commands if c[:3] == ["ticketpager", "rules", "test"]]
    assert len(tests) == 1 and "--expect" in tests[0], f"{name}.yaml must document its golden `rules test`"
    # the documented command carries the extra arguments the golden test needs (e.g. --previous)
    extra = [arg.replace(str(ROOT) + "/", "") for arg in GOLDEN[name]]
    assert all(arg in tests[0] for arg in extra), (name, tests[0])
    for words in commands:
        # `ticketpager` is the console script for ticketpager.cli:main; run it the same way from the repository root
        done = cli(*words[1:], module="ticketpager.cli")
        assert done.returncode == 0, (" ".join(words), done.stdout + done.stderr)


def test_allow_missing_env_turns_unset_keys_into_warnings() -> None:
    bad = "tests/fixtures/rules/bad/env_unset.yaml"
    done = cli("check", bad)
    assert done.returncode == 2  # valid rules, incomplete environment (see tests/test_rules_admin_messages.py)
    done = cli("check", bad, "--allow-missing-env")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"{bad}:8:20: warning: rule 'r1' → trigger → routing_key: environment variable PD_MISSING_KEY is not set "
        "(using a placeholder key)"
    ]
    assert done.stdout.startswith(f"OK: 1 rule in {bad}")
    # anything else wrong still fails, and the warnings are shown with the errors
    other = "tests/fixtures/rules/bad/env_partial.yaml"
    done = cli("check", other, "--allow-missing-env", env={**_env(), "PD_KEY": "R0KEY000000000000000000000000001"})
    assert done.returncode == 1 and "an environment reference must be the whole value" in done.stderr


def test_rules_test_allow_missing_env(tmp_path: Path) -> None:
    text = (EXAMPLES / "zendesk-vip-urgent.yaml").read_text()
    rule_file = tmp_path / "r.yaml"
    rule_file.write_text(text.replace("${PD_SUPPORT_KEY:-dry-run-support}", "${PD_SUPPORT_KEY}"))
    ticket = str(EXAMPLES / "zendesk-vip-urgent.ticket.json")
    assert cli("test", str(rule_file), "--ticket", ticket).returncode == 2  # valid files, an unset key: exit 2
    done = cli("test", str(rule_file), "--ticket", ticket, "--allow-missing-env")
    assert done.returncode == 0, done.stderr
    assert "warning: rule 'zendesk-vip-urgent' → trigger → routing_key: environment variable PD_SUPPORT_KEY" in (
        done.stderr
    )
    assert "zendesk-vip-urgent: MATCHED" in done.stdout


def test_rules_test_now_needs_a_time_zone() -> None:
    args = ["test", str(EXAMPLES / "support-unassigned-p2.yaml")]
    args += ["--ticket", str(EXAMPLES / "support-unassigned-p2.ticket.json")]
    done = cli(*args, "--now", "2026-11-30T10:00")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ticketpager rules test: --now '2026-11-30T10:00' has no time zone; "
        "add one, e.g. 2026-11-30T10:00Z for UTC or 2026-11-30T10:00+01:00"
    )
    assert cli(*args, "--now", "2026-11-30 10:00:00").returncode == 2
    assert cli(*args, "--now", "yesterday").returncode == 2
    for good in ("2026-11-30T09:40:00Z", "2026-11-30T10:40:00+01:00", "2026-11-30"):
        done = cli(*args, "--now", good)
        assert done.returncode == 0, (good, done.stderr)
    assert "at 2026-11-30T00:00:00+00:00" in done.stdout  # a plain date is midnight UTC, as in rules


@pytest.mark.parametrize("command", [[], ["check"], ["test"], ["schema"], ["backtest"]])
def test_rules_help_is_for_users(command: list[str]) -> None:
    done = cli("rules", *command, "--help", module="ticketpager.cli")
    assert done.returncode == 0, done.stderr
    for developer_text in ("register(", "subparsers", "ticketpager/cli.py", "python -m ticketpager.rules_cli", "``"):
        assert developer_text not in done.stdout
    first = done.stdout.split("\n\n")[1]  # usage, blank line, then the description
    expected = {
        (): "Check, test and back-test the rule files",
        ("check",): "Validate a rule file or a directory",
        ("test",): "Evaluate the rules against one ticket",
        ("schema",): "Print the JSON Schema of rule files",
        ("backtest",): "Read recent tickets through the configured connector",
    }[tuple(command)]
    assert first.startswith(expected), done.stdout
    if command in (["check"], ["test"]):
        assert "--allow-missing-env" in done.stdout
