"""Named connections (issue 17): the connections file (its errors at file:line:col, its secrets from the
environment or secret files, never shown), the default connection per system from the environment, and
the poll loop's start offsets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.settings import JiraSettings, ZendeskSettings
from kernel import redact
from kernel.fields import declare_connections
from rules.loader import RuleFileErrors
from ticketpager.connections import Connection, declare, load_connections, load_file
from ticketpager.schedule import poll_offset, poll_starts
from ticketpager.secretfiles import EnvWithSecretFiles
from ticketpager.settings import Settings

TOKEN = "acme-zendesk-token-7731"


@pytest.fixture(autouse=True)
def _forget_connections() -> Iterator[None]:
    yield
    declare_connections({})  # rule validation of later tests knows only the default connections


GOOD = """\
version: 1
connections:
  - name: acme-zendesk
    system: zendesk
    subdomain: acme
    email: ops@acme.example
    api_token: ${ACME_ZD_TOKEN}
    webhook_secrets:
      - ${ACME_ZD_WEBHOOK}
    poll_interval_seconds: 120
  - name: eng-jira
    system: jira
    url: https://eng.atlassian.net
    enabled: false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connections.yaml"
    path.write_text(text)
    return path


def errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(RuleFileErrors) as caught:
        load_file(path, env or {})
    return [str(e).replace(str(path), "F") for e in caught.value.errors]


def test_a_file_names_connections_with_their_systems_settings(tmp_path: Path) -> None:
    found = load_file(write(tmp_path, GOOD), {"ACME_ZD_TOKEN": TOKEN, "ACME_ZD_WEBHOOK": "whsec-acme-1"})
    acme, eng = found["acme-zendesk"], found["eng-jira"]
    assert list(found) == ["acme-zendesk", "eng-jira"]
    assert isinstance(acme.settings, ZendeskSettings) and acme.system == "zendesk"
    assert acme.settings.enabled is True, "a connection listed in the file is on unless it says otherwise"
    assert acme.settings.api_token.get_secret_value() == TOKEN
    assert [s.get_secret_value() for s in acme.settings.webhook_secrets] == ["whsec-acme-1"]
    assert acme.settings.poll_interval_seconds == 120
    assert isinstance(eng.settings, JiraSettings) and eng.settings.enabled is False
    assert TOKEN not in repr(found) and TOKEN not in repr(acme)


def test_secrets_come_from_the_secrets_directory_too(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "ACME_ZD_TOKEN").write_text(TOKEN + "\n")
    (secrets / "ACME_ZD_WEBHOOK").write_text("whsec-from-file\n")
    found = load_file(write(tmp_path, GOOD), EnvWithSecretFiles(secrets, environ={}))
    assert found["acme-zendesk"].settings.api_token.get_secret_value() == TOKEN


def test_every_mistake_is_reported_at_its_line_and_column(tmp_path: Path) -> None:
    text = """\
connections:
  - name: acme-zendesk
    system: zendesk
    subdomian: acme
  - name: acme-zendesk
    system: zendesk
  - name: Globex_ZD
    system: zendesk
  - name: jira
    system: jira
  - name: ops
    system: zendsk
  - name: slow
    system: servicenow
    poll_interval_seconds: soon
"""
    assert errors(tmp_path, text) == [
        "F:4:5: connection 'acme-zendesk': unknown zendesk setting 'subdomian' (did you mean 'subdomain'?)",
        "F:7:11: connection name 'Globex_ZD' is not usable: lowercase letters, digits and '-', starting with a "
        "letter, at most 40 characters",
        "F:9:11: connection name 'jira' is the default jira connection (the TICKETPAGER_JIRA__* settings): "
        "choose another name",
        "F:12:13: unknown system 'zendsk' (did you mean 'zendesk'?) (use jira | zendesk | servicenow)",
        "F:15:28: connection 'slow': poll_interval_seconds: Input should be a valid number, unable to parse "
        "string as a number",
    ]


def test_a_name_used_twice_is_an_error_at_the_second(tmp_path: Path) -> None:
    text = "connections:\n  - {name: a-zd, system: zendesk}\n  - {name: a-zd, system: zendesk}\n"
    assert errors(tmp_path, text) == ["F:3:12: connection 'a-zd' is defined twice (first at line 2)"]


def test_an_empty_or_unset_secret_names_the_connection_and_key_never_a_value(tmp_path: Path) -> None:
    found = errors(tmp_path, GOOD, {"ACME_ZD_TOKEN": "   ", "ACME_ZD_WEBHOOK": "whsec-acme-1"})
    assert found == ["F:7:16: connection 'acme-zendesk': api_token: ${ACME_ZD_TOKEN} is empty"]
    found = errors(tmp_path, GOOD, {"ACME_ZD_TOKEN": TOKEN})
    assert found == [
        "F:9:9: connection 'acme-zendesk': webhook_secrets[1]: ${ACME_ZD_WEBHOOK} is not set "
        "(environment or secrets dir)"
    ]
    assert all(TOKEN not in line for line in found)
    partial = GOOD.replace("${ACME_ZD_TOKEN}", "prefix-${ACME_ZD_TOKEN}")
    assert errors(tmp_path, partial, {"ACME_ZD_TOKEN": TOKEN, "ACME_ZD_WEBHOOK": "w"}) == [
        "F:7:16: connection 'acme-zendesk': api_token: a reference must be the whole value: ${NAME}"
    ]


def test_a_file_that_is_not_a_list_of_connections_says_what_it_should_be(tmp_path: Path) -> None:
    assert errors(tmp_path, "connection:\n  - name: x\n") == [
        "F:1:1: unknown key 'connection' (did you mean 'connections'?) (allowed: version, connections)",
        "F:1:1: 'connections' must be a list of connections",
    ]
    assert errors(tmp_path, "connections: [\n")[0].startswith("F:2:1: invalid YAML")


def test_the_environment_settings_are_the_default_connection_of_each_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_ZD_TOKEN", TOKEN)
    monkeypatch.setenv("ACME_ZD_WEBHOOK", "whsec-acme-1")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        zendesk={"enabled": True, "subdomain": "main", "api_token": SecretStr("main-token-1234")},
        connections_file=str(write(tmp_path, GOOD)),
    )
    found = load_connections(settings)
    assert list(found) == ["jira", "zendesk", "servicenow", "acme-zendesk", "eng-jira"]
    assert found["zendesk"].is_default and found["zendesk"].settings is settings.zendesk
    assert not found["acme-zendesk"].is_default
    without = Settings(_env_file=None, connections_file="")  # type: ignore[call-arg]
    assert list(load_connections(without)) == ["jira", "zendesk", "servicenow"]


def test_a_connections_secrets_are_redacted(tmp_path: Path) -> None:
    found = load_file(write(tmp_path, GOOD), {"ACME_ZD_TOKEN": TOKEN, "ACME_ZD_WEBHOOK": "whsec-acme-1"})
    declare(found)
    assert TOKEN not in redact.redact(f"Zendesk said: bad token {TOKEN}")


# -- poll scheduling: 50 connections do not all poll at the same second -------------------------------------------
def test_fifty_connections_start_their_polls_spread_over_the_interval() -> None:
    names = [f"client-{i:02d}" for i in range(50)]
    offsets = {name: poll_offset(name, names, 60.0) for name in names}
    offsets |= {"zendesk": poll_offset("zendesk", names, 60.0)}  # a default connection starts at once, as before
    assert offsets["zendesk"] == 0.0
    assert sorted(offsets.values())[1:] == sorted(offsets[n] for n in names)
    starts = poll_starts(offsets, dict.fromkeys(offsets, 60.0), horizon=600.0)
    per_second: dict[int, int] = {}
    for at, _ in starts:
        per_second[int(at)] = per_second.get(int(at), 0) + 1
    assert max(per_second.values()) <= 2, "at most one named connection (and the default) in any second"
    assert len(starts) == 51 * 10
    # the same answer on every replica (by name, not by start order), and within the interval
    assert poll_offset("client-07", list(reversed(names)), 60.0) == offsets["client-07"]
    assert all(0.0 <= offset < 60.0 for offset in offsets.values())


def test_without_a_spread_every_connection_polls_at_once() -> None:
    """What the offsets prevent: the herd at the minute."""
    names = [f"client-{i:02d}" for i in range(50)]
    starts = poll_starts(dict.fromkeys(names, 0.0), dict.fromkeys(names, 60.0), horizon=60.0)
    assert {at for at, _ in starts} == {0.0}


# -- the README's MSP example is a working configuration -----------------------------------------------------------
def readme_blocks() -> dict[str, str]:
    """The README's YAML blocks of the MSP section, by the path in their first comment line."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Several instances of a system (MSPs)") :]
    section = section[: section.index("\n## ")]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    return {b.splitlines()[0].removeprefix("# "): b for b in blocks}


def test_the_readme_msp_example_loads(tmp_path: Path) -> None:
    from rules import load_rules

    blocks = readme_blocks()
    connections = write(tmp_path, blocks.pop("/etc/ticketpager/connections.yaml"))
    variables = {word.strip("${}") for word in connections.read_text().split() if word.startswith("${")}
    found = load_file(connections, dict.fromkeys(variables, "secret-value-123"))
    assert sorted(found) == ["acme-zendesk", "globex-snow", "globex-zendesk", "initech-jira"]
    declare(found)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    assert sorted(blocks) == [
        "/etc/ticketpager/rules/acme/urgent.yaml",
        "/etc/ticketpager/rules/globex/p1.yaml",
        "/etc/ticketpager/rules/initech/highest.yaml",
    ]
    for path, text in blocks.items():  # a folder per client, as shown
        file = rules_dir / Path(path).relative_to("/etc/ticketpager/rules")
        file.parent.mkdir()
        file.write_text(text)
    keys = {name: f"{name[3:].lower():0<32}"[:32] for name in ("PD_ACME_KEY", "PD_GLOBEX_KEY", "PD_INITECH_KEY")}
    ruleset = load_rules(rules_dir, env=keys)
    assert ruleset.names == ("acme-urgent", "globex-p1", "initech-highest")


# -- start-up with many connections -------------------------------------------------------------------------------
def test_fifty_connections_secrets_are_learned_at_once_and_all_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """One pattern compile for every connection's secrets: one per connection took 58 s of start-up at 50
    connections (each compile covers every secret known so far); now ~2 s (docs/performance.md)."""
    monkeypatch.setattr(redact, "SECRETS", redact.Redactor())  # this test's secrets stay out of the others'
    found = {
        f"client-{i:02d}": Connection(
            f"client-{i:02d}",
            "zendesk",
            ZendeskSettings(
                enabled=True,
                subdomain=f"client{i:02d}",
                email=f"ops@client{i:02d}.example",
                api_token=SecretStr(f"zendesk-api-token-of-client-{i:02d}"),
                webhook_secrets=[SecretStr(f"webhook-secret-of-client-{i:02d}")],
            ),
        )
        for i in range(50)
    }
    started = time.process_time()
    declare(found)
    assert time.process_time() - started < 15.0  # was ~58 s (profiled) on the 2-core project machine
    for i in (0, 23, 49):
        text = f"401 for zendesk-api-token-of-client-{i:02d} and webhook-secret-of-client-{i:02d}"
        assert "client-" not in redact.redact(text).replace("[redacted]", "")
