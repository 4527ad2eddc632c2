"""What a fourth system registered by one entry-point line gets: run by tests/test_fake_system.py in a child
pytest whose path holds that entry point (as if Fakedesk's package were pip-installed), never collected alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from rules.load import load_rules
from rules.loader import RuleFileErrors
from rules.schema import build_schema
from tests.factories import ROUTING_KEY
from tests.fake_system import FakedeskSettings
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service
from ticketpager import cli
from ticketpager.app import build_app
from ticketpager.service import Service
from ticketpager.settings import Settings
from ticketpager.settings_doc import table

SECRET = "fakedesk-webhook-secret-0001"
TOKEN = "fakedesk-api-token-0001"
API = "https://acme.fakedesk.example"

RULE = """
version: 1
rules:
  - name: fakedesk-ops
    source: fakedesk
    when:
      queue: ops
      severity_code: [S1, S2]
    trigger:
      routing_key: ${PD_PLATFORM_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }} ({{ ticket.attributes.queue }})"
    resolve_when: {status_category: done}
"""


def fakedesk_ticket(ticket_id: int = 7, status: str = "open", queue: str = "ops") -> dict[str, object]:
    return {
        "id": ticket_id,
        "title": "Payments API returns 500",
        "status": status,
        "priority": "high",
        "queue": queue,
        "severity_code": "S1",
        "updated": "2026-11-27T09:00:00+00:00",
    }


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Fakedesk-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "X-Fakedesk-Delivery": "fd-delivery-1",
    }


@pytest.fixture
def fakedesk_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    path = tmp_path / "rules"
    path.mkdir()
    (path / "fakedesk.yaml").write_text(RULE)
    return path


def test_its_settings_are_read_from_its_environment_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETPAGER_FAKEDESK__URL", API)
    monkeypatch.setenv("TICKETPAGER_FAKEDESK__API_TOKEN", TOKEN)
    monkeypatch.setenv("TICKETPAGER_FAKEDESK__WEBHOOK_SECRETS", f"{SECRET},second-secret-0002")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    section = settings.connector("fakedesk")
    assert isinstance(section, FakedeskSettings)
    assert section.url == API and section.api_token.get_secret_value() == TOKEN
    assert len(section.webhook_secrets) == 2 and section.poll_interval_seconds == 60.0  # the common settings too
    assert TOKEN not in repr(settings) and SECRET not in repr(settings)


def test_its_settings_are_in_the_settings_table() -> None:
    rows = table().splitlines()
    assert "| `TICKETPAGER_FAKEDESK__URL` | str | (empty) | the Fakedesk API's base URL, e.g. " in "\n".join(rows)
    assert any(row.startswith("| `TICKETPAGER_FAKEDESK__WEBHOOK_SECRETS` |") for row in rows)
    assert any(row.startswith("| `TICKETPAGER_FAKEDESK__API_TOKEN` | SecretStr | (empty) |") for row in rows)


def test_poll_source_accepts_it_and_polls_it(
    tmp_path: Path,
    fakedesk_rules: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    rsps: responses.RequestsMock,
) -> None:
    rsps.get(f"{API}/api/tickets", json={"tickets": [fakedesk_ticket()]})
    for name, value in {"ENABLED": "true", "URL": API, "API_TOKEN": TOKEN, "APITOKEN": "typo"}.items():
        monkeypatch.setenv(f"TICKETPAGER_FAKEDESK__{name}", value)
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    code = cli.main(["--database-url", url, "--rules", str(fakedesk_rules), "poll", "--once", "--source", "fakedesk",
                     "--dry-run"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "fakedesk: 1 page(s), 1 change(s) seen, 1 new" in err and "processed 1 change(s)" in err
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    # its section is known to the misspelled-variable check like the built-in ones
    assert "TICKETPAGER_FAKEDESK__APITOKEN is ignored (did you mean TICKETPAGER_FAKEDESK__API_TOKEN?)" in caplog.text
    assert "TICKETPAGER_FAKEDESK__URL is ignored" not in caplog.text


def test_an_unregistered_source_is_still_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["poll", "--once", "--source", "fakedsk"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fakedsk'" in err and "'fakedesk'" in err and "'jira'" in err


def test_rules_use_its_source_and_fields_and_name_the_unknown_ones(tmp_path: Path, fakedesk_rules: Path) -> None:
    ruleset = load_rules(fakedesk_rules)
    assert [rule.name for rule in ruleset.spec.rules] == ["fakedesk-ops"]
    misspelled = tmp_path / "misspelled.yaml"
    misspelled.write_text(RULE.replace("queue: ops", "queu: ops"))
    with pytest.raises(RuleFileErrors) as errors:
        load_rules(misspelled)
    assert f"{misspelled}:7:7:" in str(errors.value) and "did you mean 'queue'" in str(errors.value)
    elsewhere = tmp_path / "jira.yaml"
    elsewhere.write_text(RULE.replace("source: fakedesk", "source: jira"))
    with pytest.raises(RuleFileErrors) as errors:
        load_rules(elsewhere)
    assert "queue" in str(errors.value) and "fakedesk" in str(errors.value)


def test_the_rules_schema_lists_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rules", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == build_schema()
    assert "fakedesk" in json.dumps(printed["$defs"]) or "fakedesk" in json.dumps(printed)


@pytest.fixture
def pd() -> Iterator[MockPagerDuty]:
    with MockPagerDuty() as mock:
        yield mock


@pytest.fixture
def service(db_url: str, fakedesk_rules: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(db_url, fakedesk_rules, pd.url, clock, fakedesk={"webhook_secrets": [SECRET]})
    svc.writer.start()
    yield svc
    svc.writer.stop()
    svc.store.dispose()


def test_a_signed_webhook_is_stored_and_pages(service: Service, pd: MockPagerDuty) -> None:
    body = json.dumps({"ticket": fakedesk_ticket()}).encode()
    with TestClient(build_app(service)) as client:
        forged = client.post("/webhooks/fakedesk", content=body, headers=signed(body, "not-the-secret"))
        assert forged.status_code == 401 and forged.json()["error"] == "bad signature"
        accepted = client.post("/webhooks/fakedesk", content=body, headers=signed(body))
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"status": "accepted", "stored": 1, "duplicates": 0}
    service.process_all()
    assert [(e["event_action"], e["payload"]["summary"]) for e in pd.events] == [
        ("trigger", "[FD-7] Payments API returns 500 (ops)")
    ]
    assert pd.events[0]["routing_key"] == ROUTING_KEY
    decision = service.store.decisions_for("fakedesk", "7")[0]
    assert decision["ticket_key"] == "FD-7" and "fakedesk-ops" in decision["detail"]
