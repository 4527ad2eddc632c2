"""Settings come from the environment as documented, and secrets never leak into repr, logs or errors."""

from __future__ import annotations

import logging

import pytest

from kernel import logs
from ticketpager.settings import PAGERDUTY_EVENTS_URL_EU, PAGERDUTY_EVENTS_URL_US, Settings

SECRET = "s3cr3t-webhook-value-123"
TOKEN = "jira-api-token-abcdef987"


def test_environment_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETPAGER_DATABASE_URL", "sqlite:////tmp/x.db")
    monkeypatch.setenv("TICKETPAGER_PAGERDUTY__REGION", "eu")
    monkeypatch.setenv("TICKETPAGER_JIRA__WEBHOOK_SECRETS", f"{SECRET},older-secret")
    monkeypatch.setenv("TICKETPAGER_ZENDESK__WEBHOOK_SECRETS", '["a-json-list"]')
    monkeypatch.setenv("TICKETPAGER_PORT", "9090")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.database_url == "sqlite:////tmp/x.db"
    assert s.pagerduty.url == PAGERDUTY_EVENTS_URL_EU
    assert [x.get_secret_value() for x in s.jira.webhook_secrets] == [SECRET, "older-secret"]
    assert [x.get_secret_value() for x in s.zendesk.webhook_secrets] == ["a-json-list"]
    assert s.port == 9090


def test_defaults_are_secure() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.pagerduty.url == PAGERDUTY_EVENTS_URL_US
    assert s.insecure_webhooks is False and s.host == "127.0.0.1"
    assert not s.jira.webhook_configured


def test_secrets_not_in_repr_or_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETPAGER_JIRA__WEBHOOK_SECRETS", SECRET)
    monkeypatch.setenv("TICKETPAGER_JIRA__API_TOKEN", TOKEN)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    for text in (repr(s), str(s), s.model_dump_json()):
        assert SECRET not in text and TOKEN not in text


def test_log_filter_redacts_every_configured_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TICKETPAGER_JIRA__API_TOKEN", TOKEN)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    redact = logs.RedactSecrets(logs.secret_values(s))
    logger = logging.getLogger("ticketpager.test")
    logger.addFilter(redact)
    try:
        with caplog.at_level(logging.INFO, logger="ticketpager.test"):
            logger.info("calling with token %s", TOKEN)
            try:
                raise RuntimeError(f"auth failed for {TOKEN}")
            except RuntimeError:
                logger.exception("boom")
    finally:
        logger.removeFilter(redact)
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert TOKEN not in text and logs.REDACTED in text


def test_json_log_lines_carry_utc_milliseconds_and_redact_secrets() -> None:
    """Replicas' JSON lines must interleave by time (second resolution with a +0000 offset did not), and a
    secret in a message or an exception is still redacted."""
    import io
    import json
    import logging
    import re

    from kernel import logs

    stream = io.StringIO()
    logs.FILTER.add(["json-secret-4711"])
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.FILTER)
    logger = logging.getLogger("ticketpager.test-json")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("token json-secret-4711 refused")
        except ValueError:
            logger.error("calling with json-secret-4711", exc_info=True)
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]), line["ts"]
    assert "json-secret-4711" not in stream.getvalue()
    assert line["level"] == "ERROR" and "ValueError" in line["exc"]
