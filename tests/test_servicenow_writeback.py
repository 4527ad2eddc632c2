"""ServiceNow work-note write-back (pysnc + ``responses``): written once, honours settings, no echo, no secrets."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses

from connectors.base import WriteBack
from connectors.servicenow import ServiceNowConnector
from kernel.clock import FakeClock
from kernel.errors import ConfigError, PermanentError, SkippableError
from kernel.model import EventAction, TicketRef
from tests.fakes.servicenow_server import INSTANCE, FakeInstance, make_record, register_responses
from ticketpager.settings import ServiceNowSettings

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
PASSWORD = "s3cret-pw"


def connector(clock: FakeClock | None = None, **overrides: Any) -> ServiceNowConnector:
    values: dict[str, Any] = {
        "enabled": True,
        "instance_url": INSTANCE,
        "username": "ticketpager",
        "password": PASSWORD,
        "webhook_secrets": ["whsec-value-xyz"],
        "bearer_tokens": ["bearer-value-xyz"],
        **overrides,
    }
    return ServiceNowConnector(
        ServiceNowSettings(**values), clock=clock or FakeClock(T0 + timedelta(hours=1)), session=requests.Session()
    )


def note(action: EventAction = EventAction.TRIGGER, marker: str = "tp:dk-123:trigger:1") -> WriteBack:
    return WriteBack(
        ticket=TicketRef("servicenow", "id01", "INC0000001", f"{INSTANCE}/nav_to.do?uri=incident.do?sys_id=id01"),
        action=action,
        dedup_key="dk-123",
        rule="sn-p1-network",
        marker=marker,
        text=f"PagerDuty event {action.value} sent (rule sn-p1-network, dedup key dk-123)",
    )


@pytest.fixture
def fake() -> Any:
    instance = FakeInstance([make_record("id01", "INC0000001", T0)])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_responses(rsps, instance)
        yield instance


def patches(fake: FakeInstance) -> list[Any]:
    return [r for r in fake.requests if r[0] == "PATCH"]


def test_work_note_is_written_with_prefix_and_marker(fake: FakeInstance) -> None:
    connector().write_back(note())

    [entry] = fake.journal
    assert entry["element_id"] == "id01"
    assert entry["value"].startswith("[ticketpager] PagerDuty event trigger sent")
    assert entry["value"].endswith("tp:dk-123:trigger:1")
    assert len(patches(fake)) == 1


def test_write_back_is_idempotent_on_the_marker(fake: FakeInstance) -> None:
    conn = connector()
    conn.write_back(note())
    conn.write_back(note())  # the core retried the step
    connector().write_back(note())  # or another replica did

    assert len(fake.journal) == 1
    assert len(patches(fake)) == 1


def test_each_action_gets_its_own_note(fake: FakeInstance) -> None:
    conn = connector()
    conn.write_back(note(EventAction.TRIGGER, "tp:dk-123:trigger:1"))
    conn.write_back(note(EventAction.ACKNOWLEDGE, "tp:dk-123:acknowledge:1"))
    conn.write_back(note(EventAction.RESOLVE, "tp:dk-123:resolve:1"))

    assert [e["value"].splitlines()[-1] for e in fake.journal] == [
        "tp:dk-123:trigger:1",
        "tp:dk-123:acknowledge:1",
        "tp:dk-123:resolve:1",
    ]


def test_write_back_disabled_does_nothing(fake: FakeInstance) -> None:
    connector(write_back=False).write_back(note())
    assert fake.requests == []


def test_429_during_write_back_retries_once_and_writes_once(fake: FakeInstance) -> None:
    clock = FakeClock(T0)
    conn = connector(clock)
    fake.fail_next(1, 429, {"Retry-After": "3"})

    conn.write_back(note())

    assert clock.sleeps == [3.0]
    assert len(fake.journal) == 1


def test_our_note_polls_back_as_our_own_update_and_webhook_ignores_it(fake: FakeInstance) -> None:
    conn = connector()
    conn.write_back(note())
    record = dict(fake.records["id01"])
    assert record["sys_updated_by"] == "ticketpager"

    payload = json.dumps({"event": "update", "table": "incident", "record": record}).encode()
    result = conn.parse_webhook({}, payload)

    assert result.changes == [] and result.ignored_reason == "own_write_back"


def test_deleted_record_is_skippable(fake: FakeInstance) -> None:
    gone = WriteBack(
        ticket=TicketRef("servicenow", "nope", "INC9", None),
        action=EventAction.RESOLVE,
        dedup_key="d",
        rule="r",
        marker="tp:d:resolve:1",
        text="resolved",
    )
    with pytest.raises(SkippableError, match="no longer exists"):
        connector().write_back(gone)


def test_write_back_without_credentials_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="credentials are not configured"):
        connector(password="").write_back(note())


def test_secrets_never_reach_logs_errors_or_repr(fake: FakeInstance, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.password = "another-password"  # the instance now rejects ours
    conn = connector()

    with pytest.raises(PermanentError) as info:
        conn.write_back(note())
    with pytest.raises(PermanentError) as check_info:
        conn.check()

    secrets = [PASSWORD, "whsec-value-xyz", "bearer-value-xyz"]
    texts = [str(info.value), repr(info.value), str(check_info.value), repr(conn), repr(conn.settings), caplog.text]
    for secret in secrets:
        for text in texts:
            assert secret not in text
