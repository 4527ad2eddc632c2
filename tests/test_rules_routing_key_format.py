"""``rules check`` refuses a routing key that ``serve`` would call invalid (not 32 letters and digits): a variable
written in another tool's syntax, a URL, or a ``${VAR}`` whose value is not a key. The value of a variable is a
secret and never appears in the output."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

KEY = "abcdefabcdefabcdefabcdefabcdef12"
RULE = (
    "version: 1\nrules:\n  - name: ops-p1\n    when: {{priority: P1}}\n"
    '    trigger: {{routing_key: "{key}", severity: critical, summary: s}}\n'
)
TRAIL = "rule 'ops-p1' → trigger → routing_key"
NOT_A_KEY = "is not a 32-character PagerDuty integration key (letters and digits)"


def _rules(tmp_path: Path, key: str) -> Path:
    path = tmp_path / "ops.yaml"
    path.write_text(RULE.format(key=key))
    return path


@pytest.mark.parametrize("written", ["{PD_KEY}", "PD_KEY", "%PD_KEY%", "{{ PD_KEY }}", "$(PD_KEY)"])
def test_a_variable_in_another_syntax_is_an_error_that_says_how_to_write_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], written: str
) -> None:
    monkeypatch.setenv("PD_KEY", KEY)
    path = _rules(tmp_path, written)
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:5:28: {TRAIL}: {NOT_A_KEY}: it looks like a variable: write ${{PD_KEY}}",
        f"1 error(s) in {path}",
    ]


@pytest.mark.parametrize(
    ("written", "hint"),
    [
        (
            "https://events.pagerduty.com/integration/abc/enqueue",
            "it is a URL; write the integration key alone (the service's Events API v2 integration shows it)",
        ),
        ("k", "use the key of the service's Events API v2 integration, or ${ENV_VAR}"),
        (KEY[:31], "use the key of the service's Events API v2 integration, or ${ENV_VAR}"),
        (KEY[:31] + "-", "use the key of the service's Events API v2 integration, or ${ENV_VAR}"),
    ],
)
def test_a_literal_that_is_not_a_key_is_an_error_at_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str, hint: str
) -> None:
    path = _rules(tmp_path, written)
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:5:28: {TRAIL}: {NOT_A_KEY}: {hint}",
        f"1 error(s) in {path}",
    ]


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("PD_KEY=" + KEY, "its value looks like NAME=value; set the variable to the key alone"),
        (f'"{KEY}"', "its value is in quotes; set the variable to the key alone"),
        (
            f"https://events.pagerduty.com/integration/{KEY}/enqueue",
            "its value is a URL; set the variable to the integration key alone",
        ),
        ("s3cr3t-but-not-a-key", "set it to the key of the service's Events API v2 integration"),
    ],
)
def test_a_variable_whose_value_is_not_a_key_is_named_and_its_value_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, hint: str
) -> None:
    monkeypatch.setenv("PD_KEY", value)
    path = _rules(tmp_path, "${PD_KEY}")
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{path}:5:28: {TRAIL}: environment variable PD_KEY {NOT_A_KEY}: {hint}",
        f"1 error(s) in {path}",
    ]
    assert value not in out + err and KEY not in out + err and "s3cr3t" not in out + err
    # rules test answers the same, --allow-missing-env included: the variable is set, just not to a key
    ticket = Path(__file__).parent.parent / "rules" / "examples" / "jira-ops-p1.ticket.json"
    assert main(["test", str(path), "--ticket", str(ticket), "--allow-missing-env"]) == 1
    out, err = capsys.readouterr()
    assert f"{path}:5:28: {TRAIL}: environment variable PD_KEY {NOT_A_KEY}: {hint}" in err.splitlines()
    assert value not in out + err and KEY not in out + err


def test_valid_keys_unset_variables_and_defaults_keep_their_behaviour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PD_KEY", KEY)
    monkeypatch.delenv("PD_UNSET", raising=False)
    for written in (KEY, KEY.upper(), "${PD_KEY}", "${PD_UNSET:-dry-run-ops}"):  # a default is a dry-run placeholder
        path = _rules(tmp_path, written)
        assert main(["check", str(path)]) == 0, written
        assert capsys.readouterr().out.startswith(f"OK: 1 rule in {path}")
    path = _rules(tmp_path, "${PD_UNSET}")
    assert main(["check", str(path), "--allow-missing-env"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:5:28: warning: {TRAIL}: environment variable PD_UNSET is not set (using a placeholder key)"
    ]


def test_the_loader_the_service_uses_still_loads_a_placeholder_key(tmp_path: Path) -> None:
    """``serve`` (and ``rules backtest``, which sends nothing) load such a key; the service logs it as a problem
    and /readyz says degraded, as before: only ``rules check`` and ``rules test`` refuse it."""
    from rules import load_rules

    path = _rules(tmp_path, "k")
    assert load_rules(path, env={}).rule("ops-p1").trigger.routing_key == "k"
