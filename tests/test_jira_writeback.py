"""Jira write-back (one comment per marker, retried safely) and secrets staying out of logs/errors/repr."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses
from pydantic import SecretStr

from connectors.base import WriteBack
from connectors.jira import JiraConnector
from kernel.clock import FakeClock
from kernel.errors import PermanentError, RetryableError, SkippableError
from kernel.model import EventAction, TicketRef
from kernel.retry import RetryPolicy
from ticketpager.settings import JiraSettings

BASE = "https://jira.example.com"
API = f"{BASE}/rest/api/2"
TOKEN = "pat-VERY-SECRET-TOKEN-0123456789"
WEBHOOK_SECRET = "whsec-DO-NOT-LEAK"
COMMENTS = f"{API}/issue/10042/comment"
NOTE = WriteBack(
    ticket=TicketRef("jira", "10042", "OPS-12", f"{BASE}/browse/OPS-12"),
    action=EventAction.TRIGGER,
    dedup_key="tp-jira-10042-jira-ops-p1-1",
    rule="jira-ops-p1",
    marker="tp:tp-jira-10042-jira-ops-p1-1:trigger:1",
    text="Incident triggered in PagerDuty.",
)


def connector(clock: FakeClock | None = None, **extra: Any) -> JiraConnector:
    values: dict[str, Any] = {
        "enabled": True,
        "url": BASE,
        "api_token": SecretStr(TOKEN),  # no e-mail: Data Center personal access token (Bearer)
        "deployment": "datacenter",
        "webhook_secrets": [SecretStr(WEBHOOK_SECRET)],
    }
    values.update(extra)
    return JiraConnector(
        JiraSettings(**values),
        clock=clock or FakeClock(datetime(2026, 11, 27, 9, 0, tzinfo=UTC)),
        session=requests.Session(),
        retry=RetryPolicy(max_attempts=3),
    )


def comments(*bodies: str) -> dict[str, Any]:
    items = [{"id": str(n), "body": b, "author": {"name": "someone"}} for n, b in enumerate(bodies)]
    return {"startAt": 0, "maxResults": 100, "total": len(items), "comments": items}


def test_writes_one_comment_with_dedup_key_and_marker(rsps: responses.RequestsMock) -> None:
    listed = rsps.get(COMMENTS, json=comments("Looking into it"))
    posted = rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})

    connector().write_back(NOTE)

    assert listed.call_count == 1 and posted.call_count == 1
    body = json.loads(posted.calls[0].request.body)["body"]
    assert body.startswith("[ticketpager] PagerDuty trigger (rule jira-ops-p1)")
    assert NOTE.dedup_key in body and NOTE.marker in body and NOTE.text in body
    assert posted.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "orderBy=-created" in listed.calls[0].request.url


def test_a_retried_write_back_finds_its_marker_and_writes_nothing(rsps: responses.RequestsMock) -> None:
    c = connector()
    rsps.get(COMMENTS, json=comments("Looking into it"))
    posted = rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})
    c.write_back(NOTE)
    body = json.loads(posted.calls[0].request.body)["body"]
    rsps.replace("GET", COMMENTS, json=comments("Looking into it", body))

    c.write_back(NOTE)  # the core retries the step (e.g. it crashed before recording success)

    assert posted.call_count == 1


def test_a_failed_post_is_retried_by_rechecking_first(rsps: responses.RequestsMock) -> None:
    clock = FakeClock()
    listed = rsps.get(COMMENTS, json=comments())
    rsps.post(COMMENTS, status=503, headers={"Retry-After": "2"}, json={"errorMessages": ["busy"]})
    rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})

    connector(clock).write_back(NOTE)

    assert clock.sleeps == [2.0]
    assert listed.call_count == 2  # each attempt re-reads the comments before posting
    assert sum(1 for c in rsps.calls if c.request.method == "POST") == 2


def test_write_back_off_does_nothing(rsps: responses.RequestsMock) -> None:
    connector(write_back=False).write_back(NOTE)
    assert len(rsps.calls) == 0


def test_webhook_only_deployment_skips_write_back_without_calls(rsps: responses.RequestsMock) -> None:
    c = connector(api_token=SecretStr(""))
    assert not c.can_poll
    c.write_back(NOTE)
    c.check()  # webhook-only is a valid deployment
    assert len(rsps.calls) == 0


def test_deleted_issue_is_skippable(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, status=404, json={"errorMessages": ["Issue does not exist"]})
    with pytest.raises(SkippableError):
        connector().write_back(NOTE)


def test_nothing_configured_fails_check() -> None:
    c = connector(api_token=SecretStr(""), webhook_secrets=[])
    with pytest.raises(PermanentError, match="TICKETPAGER_JIRA__URL"):
        c.check()


def test_no_network_at_construction_or_import(rsps: responses.RequestsMock) -> None:
    c = connector()
    assert c.can_poll
    assert len(rsps.calls) == 0


# -- secrets -------------------------------------------------------------------------------------------
def test_secrets_never_reach_logs_errors_or_repr(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    c = connector(clock, deployment="auto")
    errors: list[BaseException] = []
    rsps.get(f"{API}/serverInfo", status=401, json={"errorMessages": ["bad token"]})
    with pytest.raises(PermanentError) as info:
        c.check()
    errors.append(info.value)
    rsps.replace("GET", f"{API}/serverInfo", body=requests.ConnectionError("connection refused"))
    with pytest.raises(RetryableError) as info2:
        c.write_back(NOTE)
    errors.append(info2.value)
    with pytest.raises(Exception) as info3:
        c.verify_webhook({"x-hub-signature": "sha256=" + "0" * 64}, b"{}")
    errors.append(info3.value)

    texts = [caplog.text, repr(c), repr(c.settings), str(c.settings)]
    for err in errors:
        texts += [str(err), repr(err), repr(err.__cause__), repr(err.__context__)]
    for text in texts:
        assert TOKEN not in text and WEBHOOK_SECRET not in text
    assert all(e.__cause__ is None for e in errors)  # JIRAError (which prints request headers) is not chained
