"""Secrets from files (TICKETPAGER_SECRETS_DIR): Docker and Kubernetes secrets and Vault agents mount each
secret as a file. Every setting, nested ones included, and every ${PD_...} routing key can come from a file
named like the variable; the environment wins; values read from files never show in logs or errors."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.factories import RULES
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.serve_proc import Serve
from tests.test_app import jira_body, sign
from ticketpager import cli
from ticketpager.settings import Settings

WEBHOOK_SECRET = "webhook-secret-from-file-5150"
ROUTING_KEY = "R0FILEKEY0000000000000000000000A"
METRICS_TOKEN = "metrics-token-from-file-8086"
API_TOKEN = "jira-api-token-from-file-4242"


def kubernetes_secret_volume(root: Path, files: dict[str, str]) -> Path:
    """The layout the kubelet writes: the files in a timestamped directory, ``..data`` pointing at it, and
    one symlink per key through ``..data`` (so an update is one atomic symlink swap)."""
    root.mkdir()
    data = root / "..2026_12_03_22_00_00.000000001"
    data.mkdir()
    for name, value in files.items():
        (data / name).write_text(value + "\n")  # `kubectl create secret --from-file` keeps the newline
        (root / name).symlink_to(Path("..data") / name)
    (root / "..data").symlink_to(data.name)
    return root


def test_serve_reads_the_webhook_secret_routing_key_and_metrics_token_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = kubernetes_secret_volume(
        tmp_path / "secrets",
        {
            "TICKETPAGER_JIRA__WEBHOOK_SECRETS": WEBHOOK_SECRET,  # a nested setting
            "TICKETPAGER_METRICS_TOKEN": METRICS_TOKEN,
            "PD_PLATFORM_KEY": ROUTING_KEY,  # the rule's ${PD_PLATFORM_KEY}
        },
    )
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    for name in ("PD_PLATFORM_KEY", "TICKETPAGER_JIRA__WEBHOOK_SECRETS", "TICKETPAGER_METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with MockPagerDuty() as pd:
        serve = Serve(
            {
                "TICKETPAGER_SECRETS_DIR": str(secrets),
                "TICKETPAGER_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
                "TICKETPAGER_RULES_PATH": str(rules),
                "TICKETPAGER_PAGERDUTY__EVENTS_URL": pd.url,
                "TICKETPAGER_LOG_LEVEL": "DEBUG",
            }
        ).start()
        try:
            body = jira_body()
            status, answer = serve.post(
                "/webhooks/jira",
                body,
                {"X-Hub-Signature": sign(body, WEBHOOK_SECRET), "X-Atlassian-Webhook-Identifier": "sd-1"},
            )
            assert status == 202, answer
            deadline = time.monotonic() + 15
            while not pd.events and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [e["routing_key"] for e in pd.events] == [ROUTING_KEY]
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{serve.url}/metrics", timeout=5)  # noqa: S310 - loopback
            refused.value.close()
            assert refused.value.code == 401
            request = urllib.request.Request(  # noqa: S310 - loopback
                f"{serve.url}/admin/status", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
            )
            deadline = time.monotonic() + 5  # the page is marked sent within a quarter second of its 202
            while True:
                with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - loopback
                    status = json.loads(resp.read())
                if status["open_incidents"] == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert status["open_incidents"] == 1, status
        finally:
            assert serve.stop() == 0
    log = serve.output()
    for secret in (WEBHOOK_SECRET, ROUTING_KEY, METRICS_TOKEN):
        assert secret not in log


def test_nested_settings_come_from_files_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "TICKETPAGER_JIRA__API_TOKEN").write_text(API_TOKEN + "\n")
    (secrets / "ticketpager_servicenow__bearer_tokens").write_text('["tok-one-1111", "tok-two-2222"]')  # any case
    (secrets / "TICKETPAGER_DATABASE_URL").write_text("postgresql://tp:pw-from-file@db/tp")
    (secrets / "TICKETPAGER_PORT").write_text("9999")
    monkeypatch.setenv("TICKETPAGER_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("TICKETPAGER_PORT", "8181")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.jira.api_token.get_secret_value() == API_TOKEN
    assert [t.get_secret_value() for t in settings.servicenow.bearer_tokens] == ["tok-one-1111", "tok-two-2222"]
    assert settings.database_url == "postgresql://tp:pw-from-file@db/tp"
    assert settings.port == 8181, "the environment wins over a file"
    assert API_TOKEN not in repr(settings) + settings.model_dump_json()


def test_a_secret_read_from_a_file_is_redacted_from_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "TICKETPAGER_JIRA__API_TOKEN").write_text(API_TOKEN)
    monkeypatch.setenv("TICKETPAGER_SECRETS_DIR", str(secrets))
    assert cli.main(["--database-url", f"sqlite:///{tmp_path / 'tp.db'}", "db", "upgrade"]) == 0
    logging.getLogger("ticketpager.test").error("Jira refused the token %s", API_TOKEN)
    err = capfd.readouterr().err
    assert "Jira refused the token [redacted]" in err and API_TOKEN not in err


def test_a_missing_secrets_dir_is_a_settings_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKETPAGER_SECRETS_DIR", str(tmp_path / "not-mounted"))
    code = cli.main(["--database-url", f"sqlite:///{tmp_path / 'tp.db'}", "db", "upgrade"])
    err = capsys.readouterr().err
    assert code == 2 and "TICKETPAGER_SECRETS_DIR" in err and "does not exist" in err and "Traceback" not in err


def test_a_bad_secret_file_is_named_without_its_value_and_a_misspelled_one_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "TICKETPAGER_JIRA__API_TOKN").write_text(API_TOKEN)
    monkeypatch.setenv("TICKETPAGER_SECRETS_DIR", str(secrets))
    assert cli.main(["--database-url", f"sqlite:///{tmp_path / 'tp.db'}", "db", "upgrade"]) == 0
    assert "TICKETPAGER_JIRA__API_TOKN is ignored (did you mean TICKETPAGER_JIRA__API_TOKEN?)" in caplog.text
    assert API_TOKEN not in caplog.text
    (secrets / "TICKETPAGER_JIRA__WEBHOOK_SECRETS").write_text("['oldSecretValue9f3','newSecretValue77a']")
    code = cli.main(["--database-url", f"sqlite:///{tmp_path / 'tp.db'}", "db", "upgrade"])
    err = capsys.readouterr().err
    assert code == 2 and "TICKETPAGER_JIRA__WEBHOOK_SECRETS" in err and "double quotes" in err
    assert "oldSecretValue9f3" not in err


def test_a_rotated_routing_key_file_is_used_after_the_next_rule_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernel.clock import FakeClock
    from tests.factories import change, ticket
    from tests.harness import make_service, receive

    monkeypatch.delenv("PD_PLATFORM_KEY", raising=False)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "PD_PLATFORM_KEY").write_text(ROUTING_KEY + "\n")
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    rotated = "R0ROTATED0000000000000000000000B"
    with MockPagerDuty() as pd:
        svc = make_service(f"sqlite:///{tmp_path / 'tp.db'}", rules, pd.url, FakeClock(), secrets_dir=secrets)
        try:
            receive(svc, [change(ticket("1"))])
            svc.process_all()
            (secrets / "PD_PLATFORM_KEY").write_text(rotated)
            assert svc.rule_store.reload()
            receive(svc, [change(ticket("2"))])
            svc.process_all()
        finally:
            svc.store.dispose()
    assert [e["routing_key"] for e in pd.events] == [ROUTING_KEY, rotated]
