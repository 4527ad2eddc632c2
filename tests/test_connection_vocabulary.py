"""Rule validation knows each connection's vocabulary (issue 17): a rule naming connections that declare
custom field names (Zendesk's ``custom_field_names``) may read only those names (or field ids); an
instance without configured names keeps accepting any name. ``rules check`` reads the connections file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.fields import declare_connections
from rules import RuleFileErrors, load_rules
from ticketpager import cli
from ticketpager.connections import declare, default_connections, load_file
from ticketpager.settings import Settings

KEY = "R0UT1NGKEY0000000000000000000042"

CONNECTIONS = """\
version: 1
connections:
  - name: acme-zendesk
    system: zendesk
    subdomain: acme
    custom_field_names: {"360001": Tier, "360002": Region}
  - name: globex-zendesk
    system: zendesk
    subdomain: globex
    custom_field_names: {"360009": Contract}
  - name: initech-zendesk
    system: zendesk
    subdomain: initech
"""

RULES = """\
version: 1
rules:
  - name: acme-gold
    when:
      connection: acme-zendesk
      custom.Teir: gold
      priority: urgent
    trigger:
      routing_key: ${PD_KEY}
      severity: critical
      summary: "{{ ticket.title }}"
  - name: two-clients
    when:
      connection: [acme-zendesk, globex-zendesk]
      any:
        - custom.Region: emea
        - custom.Contrat: premium
        - custom.360003: x
    trigger:
      routing_key: ${PD_KEY}
      severity: {from: custom.Tier, map: {gold: critical}, default: warning}
      summary: "{{ ticket.title }}"
  - name: no-names-configured
    when:
      connection: initech-zendesk
      custom.Anything: "yes"
    trigger:
      routing_key: ${PD_KEY}
      severity: warning
      summary: "{{ ticket.title }}"
  - name: every-connection
    when:
      custom.Whatever: 1
    trigger:
      routing_key: ${PD_KEY}
      severity: warning
      summary: "{{ ticket.title }}"
"""


@pytest.fixture(autouse=True)
def _forget_connections() -> Iterator[None]:
    yield
    declare_connections({})  # later tests know only the default connections, and no vocabulary


def files(tmp_path: Path, rules: str = RULES) -> tuple[Path, Path]:
    (tmp_path / "connections.yaml").write_text(CONNECTIONS)
    (tmp_path / "rules.yaml").write_text(rules)
    return tmp_path / "connections.yaml", tmp_path / "rules.yaml"


def test_rules_check_reports_each_unknown_custom_field_at_its_line_and_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    connections, rules = files(tmp_path)
    monkeypatch.setenv("PD_KEY", KEY)
    monkeypatch.setenv("TICKETPAGER_CONNECTIONS_FILE", str(connections))
    assert cli.main(["rules", "check", str(rules)]) == 1
    err = capsys.readouterr().err
    lines = [line.replace(str(rules), "R") for line in err.splitlines() if line.startswith(str(rules))]
    assert lines == [
        "R:6:7: rule 'acme-gold' → when → custom.Teir: no custom field 'Teir' on connection 'acme-zendesk' "
        "(did you mean 'Tier'?) (custom_field_names: Region, Tier; or custom.<field id>)",
        "R:17:11: rule 'two-clients' → when → any[2] → custom.Contrat: no custom field 'Contrat' on connection "
        "'acme-zendesk' or 'globex-zendesk' (did you mean 'Contract'?) "
        "(custom_field_names: Contract, Region, Tier; or custom.<field id>)",
    ]


def test_the_same_rules_pass_once_the_names_are_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    connections, rules = files(tmp_path, RULES.replace("Teir", "Tier").replace("Contrat", "Contract"))
    monkeypatch.setenv("PD_KEY", KEY)
    monkeypatch.setenv("TICKETPAGER_CONNECTIONS_FILE", str(connections))
    assert cli.main(["rules", "check", str(rules)]) == 0, capsys.readouterr().err


def test_without_the_connections_file_nothing_is_known_and_any_name_is_accepted(tmp_path: Path) -> None:
    declare_connections({"acme-zendesk": "zendesk", "globex-zendesk": "zendesk", "initech-zendesk": "zendesk"})
    _, rules = files(tmp_path)
    assert len(load_rules(rules, env={"PD_KEY": KEY}).spec.rules) == 4


def test_a_name_of_another_connection_is_not_one_of_this_connections(tmp_path: Path) -> None:
    connections, rules = files(tmp_path, RULES.replace("custom.Teir", "custom.Contract"))
    declare(default_connections(Settings()) | load_file(connections, {}))
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(rules, env={"PD_KEY": KEY})
    assert [(e.line, e.col) for e in caught.value.errors] == [(6, 7), (17, 11)]
    assert "no custom field 'Contract' on connection 'acme-zendesk'" in caught.value.errors[0].message


def test_the_default_connections_custom_field_names_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKETPAGER_ZENDESK__CUSTOM_FIELD_NAMES", '{"1": "Tier"}')
    declare(default_connections(Settings()))
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.split("  - name: two-clients")[0].replace("acme-zendesk", "zendesk"))
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(rules, env={"PD_KEY": KEY})
    assert [e.message for e in caught.value.errors] == [
        "rule 'acme-gold' → when → custom.Teir: no custom field 'Teir' on connection 'zendesk' "
        "(did you mean 'Tier'?) (custom_field_names: Tier; or custom.<field id>)"
    ]


SERVICENOW = """\
version: 1
connections:
  - name: acme-sn
    system: servicenow
    instance_url: https://acme.service-now.com
    state_map: {"1": in_progress, "10": done}
  - name: globex-sn
    system: servicenow
    instance_url: https://globex.service-now.com
"""

SERVICENOW_RULES = """\
version: 1
rules:
  - name: acme-new
    when:
      connection: acme-sn
      status_category: [in_progress, new]
    trigger:
      routing_key: ${PD_KEY}
      severity: critical
      summary: "{{ ticket.title }}"
  - name: both
    when:
      connection: [acme-sn, globex-sn]
      status_category: new
    trigger:
      routing_key: ${PD_KEY}
      severity: critical
      summary: "{{ ticket.title }}"
"""


def test_a_category_a_servicenow_state_map_leaves_unused_is_an_error_for_its_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "connections.yaml").write_text(SERVICENOW)
    rules = tmp_path / "rules.yaml"
    rules.write_text(SERVICENOW_RULES)
    monkeypatch.setenv("PD_KEY", KEY)
    monkeypatch.setenv("TICKETPAGER_CONNECTIONS_FILE", str(tmp_path / "connections.yaml"))
    assert cli.main(["rules", "check", str(rules)]) == 1
    lines = [line.replace(str(rules), "R") for line in capsys.readouterr().err.splitlines()]
    assert [line for line in lines if line.startswith("R:")] == [
        "R:6:38: rule 'acme-new' → when → status_category: status category 'new' never occurs on connection "
        "'acme-sn': its state_map maps no state to new (possible: in_progress | done | deleted)"
    ], "globex-sn has the stock states: a rule naming it too may ask for new"
    rules.write_text(SERVICENOW_RULES.replace("[in_progress, new]", "in_progress"))
    assert cli.main(["rules", "check", str(rules)]) == 0
