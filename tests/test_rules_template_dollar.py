"""``${...}`` in a template (issue 17): ``${connection}`` is the ticket's connection, as the issue spells it; any
other ``${NAME}`` is the environment-reference syntax of a routing key, which a template would send as written
("[${key}] Down"): a load error at the value's file:line:col naming what to write (``{{ ticket.key }}``).
``${ENV}`` routing keys stay legal."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kernel.model import StatusCategory, Ticket
from rules import EvalContext, RuleFileErrors, load_rules
from ticketpager import cli

KEY = "R123456789abcdef0123456789abcdef"
NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def rules(summary: str, extra: str = "") -> str:
    return (
        "version: 1\n"
        "rules:\n"
        "  - name: acme-p1\n"
        "    when: {priority: urgent}\n"
        "    trigger:\n"
        "      routing_key: ${PD_KEY}\n"
        "      severity: critical\n"
        f"      summary: {summary}\n" + extra
    )


def load_errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env={"PD_KEY": KEY})
    return [str(e).replace(str(path), "R") for e in caught.value.errors]


def _acme_ticket() -> Ticket:
    return Ticket(
        source="zendesk", id="4711", key="4711", title="Checkout down", status="new",
        status_category=StatusCategory.NEW, created=NOW, updated=NOW, priority="urgent", connection="acme-zendesk",
    )  # fmt: skip


def test_dollar_connection_in_a_summary_is_the_tickets_connection(tmp_path: Path) -> None:
    """Issue 17's spelling: ``${connection}`` (and ``${ticket.connection}``) in a template is the connection's
    name, with or without other template syntax around it."""
    path = tmp_path / "rules.yaml"
    for summary, expected in [
        ('"[${connection}] Down"', "[acme-zendesk] Down"),
        ('"[${ticket.connection}] {{ ticket.title }}"', "[acme-zendesk] Checkout down"),
    ]:
        path.write_text(rules(summary))
        [result] = load_rules(path, env={"PD_KEY": KEY}).evaluate(EvalContext(_acme_ticket(), None, (), NOW))
        assert result.trigger is not None and result.trigger.summary == expected


def test_any_other_dollar_brace_is_an_error_that_names_the_template_syntax(tmp_path: Path) -> None:
    assert load_errors(tmp_path, rules('"[${key}] {{ ticket.title }}"')) == [
        "R:8:16: rule 'acme-p1' → trigger → summary: '${key}' is not template syntax and would be sent as "
        "written: use {{ ticket.key }}"
    ]
    [error] = load_errors(tmp_path, rules("'[${ticket.priority}] Down'"))
    assert error.startswith("R:8:16: rule 'acme-p1' → trigger → summary: '${ticket.priority}'"), error
    assert error.endswith("use {{ ticket.priority }}")


def test_an_environment_variable_in_a_template_says_templates_cannot_read_the_environment(tmp_path: Path) -> None:
    details = "      custom_details:\n        runbook: https://wiki.example/${RUNBOOK_SPACE}/p1\n"
    [error] = load_errors(tmp_path, rules("Down", details))
    assert error.startswith("R:10:18: rule 'acme-p1' → trigger → custom_details → runbook: '${RUNBOOK_SPACE}'")
    assert "a template cannot read the environment (${NAME} works only as a whole routing_key)" in error
    assert "{{ ticket.connection }}" in error


def test_rules_check_fails_on_it_and_env_routing_keys_still_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PD_KEY", KEY)
    path = tmp_path / "rules.yaml"
    path.write_text(rules('"[${key}] Down"'))
    assert cli.main(["rules", "check", str(path)]) == 1
    assert f"{path}:8:16:" in capsys.readouterr().err
    path.write_text(rules('"[{{ ticket.connection }}] Down {{ \'${x}\' }}"'))  # a string inside {{ }} is text
    assert cli.main(["rules", "check", str(path)]) == 0, capsys.readouterr().err
    ruleset = load_rules(path, env={"PD_KEY": KEY})
    ticket = Ticket(
        source="zendesk",
        id="4711",
        key="4711",
        title="Checkout down",
        status="new",
        status_category=StatusCategory.NEW,
        created=NOW,
        updated=NOW,
        priority="urgent",
        connection="acme-zendesk",
    )
    [result] = ruleset.evaluate(EvalContext(ticket, None, (), NOW))
    assert result.trigger is not None and result.trigger.summary == "[acme-zendesk] Down ${x}"
    assert result.trigger.routing_key == KEY
