"""Signed input that can never be stored is the sender's error: a 400 with a reason, not a 503.

Found probing the real app (issue 13, item 7): a lone surrogate ``\\ud800`` in a title failed the commit
("surrogates not allowed"), an ``updated`` of ``0001-01-01T00:00:00+01:00`` or ``9999-12-31T23:59:59-01:00``
failed the serialization ("date value out of range"); both were answered 503, so the vendor retried forever
and the store-failure alert fired. JSON nested 1,000+ levels deep got a 400 but was counted ``unparseable``
with a traceback logged per request. Every such body is now a 400 naming the reason, counted
``rejected_400`` (the sender's error), logged in one line without a traceback, and nothing is stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from sqlalchemy import select
from starlette.testclient import TestClient

from connectors.servicenow import ServiceNowConnector
from connectors.zendesk import ZendeskConnector
from kernel import jsonutil
from kernel.clock import FakeClock
from sync.metrics import METRICS
from sync.poller import poll_once
from sync.repos.cursors import load_cursor
from sync.schema import changes
from sync.store import Store
from tests.factories import ROUTING_KEY, RULES
from tests.fakes.jira_server import make_issue
from tests.fakes.servicenow_server import INSTANCE, FakeInstance, make_record, register_responses
from tests.test_jira_poll import API as JIRA_API
from tests.test_jira_poll import T0 as JIRA_T0
from tests.test_jira_poll import make_connector, mock_lookups
from tests.test_webhook_fuzz import SECRET, SEEDS, Target, _seed, make_service, post, servicenow_stamp, signed_headers
from tests.test_zendesk_poll import EXPORT as ZD_EXPORT
from tests.test_zendesk_poll import NOW as ZD_NOW
from tests.test_zendesk_poll import page as zd_page
from tests.test_zendesk_poll import ticket as zd_ticket
from ticketpager.app import build_app
from ticketpager.settings import ServiceNowSettings, ZendeskSettings

SURROGATE = "\ud800"  # json.dumps writes it as the escape "\ud800": valid JSON syntax, not text
EARLY, LATE = "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"


@pytest.fixture(params=["jira", "zendesk", "servicenow"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    source: str = request.param
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
        service = make_service(
            f"sqlite:///{tmp_path / 'tp.db'}", rules, clock, source, {"enabled": True, "webhook_secrets": [SECRET]}
        )
    service.writer.start()
    try:
        with TestClient(build_app(service), raise_server_exceptions=False) as client:
            yield Target(source, service, client, clock)
    finally:
        service.writer.stop()
        service.store.dispose()


def seed(target: Target) -> dict[str, Any]:
    doc = _seed(SEEDS[target.source][0])
    if target.source == "servicenow":
        doc["sent_at"] = int(servicenow_stamp(target))
    return doc


def with_title(target: Target, title: str) -> dict[str, Any]:
    doc = seed(target)
    if target.source == "jira":
        doc["issue"]["fields"]["summary"] = title
    elif target.source == "zendesk":
        doc["detail"]["subject"] = title
    else:
        doc["record"]["short_description"] = title
    return doc


def with_updated(target: Target, value: str) -> dict[str, Any]:
    doc = seed(target)
    if target.source == "jira":
        doc["issue"]["fields"]["updated"] = value
    elif target.source == "zendesk":
        doc["detail"]["updated_at"] = value
    else:  # ServiceNow dates carry no offset: the stored watermark's format, out of range in any zone
        doc["record"]["sys_updated_on"] = value[:19].replace("T", " ")
    return doc


def nested(target: Target) -> bytes:
    deep = b'{"a":' * 1100 + b"1" + b"}" * 1100
    doc = seed(target)
    return json.dumps(doc).encode()[:-1] + b', "deep": ' + deep + b"}"


def outcome(source: str, name: str) -> float:
    return METRICS.registry.get_sample_value("ticketpager_webhooks_total", {"source": source, "outcome": name}) or 0.0


CASES: dict[str, tuple[Callable[[Target], bytes], str]] = {
    "surrogate title": (lambda t: json.dumps(with_title(t, f"Checkout {SURROGATE} down")).encode(), "surrogate"),
    "updated in year 0": (lambda t: json.dumps(with_updated(t, EARLY)).encode(), "out of range"),
    "updated in year 10000": (lambda t: json.dumps(with_updated(t, LATE)).encode(), "out of range"),
    "nested 1,100 deep": (nested, "nested deeper than 1024 levels"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_signed_body_that_cannot_be_stored_is_a_400_counted_as_the_senders(
    target: Target, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, reason = CASES[case]
    body = make(target)
    good = json.dumps(seed(target)).encode()
    before = {name: outcome(target.source, name) for name in ("rejected_400", "unparseable", "store_failed")}
    rows = target.rows()
    caplog.set_level(logging.DEBUG)
    caplog.clear()

    response = post(target, body, signed_headers(target, body, "hmac"))

    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]
    assert target.rows() == rows
    after = {name: outcome(target.source, name) for name in before}
    assert after == {**before, "rejected_400": before["rejected_400"] + 1}
    ours = [r for r in caplog.records if r.name.startswith(("ticketpager", "connectors", "sync"))]
    assert len(ours) == 1 and ours[0].exc_info is None, [r.getMessage() for r in ours]
    # the same request, well formed, is accepted: the refusal was about this input only
    assert post(target, good, signed_headers(target, good, "hmac")).status_code == 202


# -- polls: one such ticket is skipped with its reason and counted; the page and the cursor move on --------------
def received(source: str, outcome_name: str) -> float:
    labels = {"source": source, "origin": "poll", "outcome": outcome_name}
    return METRICS.registry.get_sample_value("ticketpager_changes_received_total", labels) or 0.0


def poll_and_check(
    tmp_path: Path, connector: Any, caplog: pytest.LogCaptureFixture, good: str, expect: dict[str, int]
) -> None:
    """Poll once into a real store: only ``good`` is stored, the rest counted per outcome, the cursor saved."""
    store = Store(f"sqlite:///{tmp_path / 'poll.db'}")
    store.upgrade()
    source = connector.name
    before = {name: received(source, name) for name in expect}
    caplog.set_level(logging.WARNING)
    try:
        report = poll_once(store, connector, connector.clock)
        assert report.error is None, report.error
        with store.engine.connect() as conn:
            stored = [row.ticket_id for row in conn.execute(select(changes.c.ticket_id))]
            saved = load_cursor(conn, source)
    finally:
        store.dispose()
    assert stored == [good]
    assert saved is not None  # the cursor moved past the page holding the bad tickets
    assert {name: received(source, name) - before[name] for name in expect} == expect
    text = caplog.text
    assert "surrogate" in text and ("out of range" in text or "out of range" not in str(expect))


def test_zendesk_poll_skips_unstorable_tickets_and_moves_on(
    tmp_path: Path, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    tickets = [
        zd_ticket(1, updated_at="2026-11-27T08:50:00Z"),
        zd_ticket(2, subject=f"Checkout {SURROGATE} down", updated_at="2026-11-27T08:51:00Z"),
        zd_ticket(3, updated_at=LATE),
    ]
    rsps.get(ZD_EXPORT, json=zd_page(tickets, "c1", True))
    conn = ZendeskConnector(
        ZendeskSettings(enabled=True, subdomain="acme", email="api@acme.example", api_token="zd-token"),
        clock=FakeClock(ZD_NOW),
        session=requests.Session(),
    )
    poll_and_check(tmp_path, conn, caplog, "1", {"unstorable": 1, "malformed": 1})
    assert "updated_at 9999-12-31T23:59:59-01:00 is out of range" in caplog.text


def test_jira_poll_skips_unstorable_issues_and_moves_on(
    tmp_path: Path, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    mock_lookups(rsps)
    issues = [
        make_issue("10001", "OPS-1", updated=JIRA_T0 + timedelta(minutes=1)),
        make_issue("10002", "OPS-2", updated=JIRA_T0 + timedelta(minutes=2), summary=f"API {SURROGATE} down"),
        make_issue("10003", "OPS-3", updated=JIRA_T0 + timedelta(minutes=3)),
    ]
    issues[2]["fields"]["updated"] = EARLY
    rsps.get(f"{JIRA_API}/search/jql", json={"issues": issues, "isLast": True})
    conn = make_connector(FakeClock(JIRA_T0 + timedelta(minutes=10)))
    poll_and_check(tmp_path, conn, caplog, "10001", {"unstorable": 1, "malformed": 1})
    assert "out of range" in caplog.text


def test_servicenow_poll_skips_unstorable_records_and_moves_on(
    tmp_path: Path, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    t0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    fake = FakeInstance(
        [
            make_record("id01", "INC0000001", t0 + timedelta(minutes=1)),
            make_record("id02", "INC0000002", t0 + timedelta(minutes=2), short_description=f"Router {SURROGATE}"),
        ]
    )
    register_responses(rsps, fake)
    conn = ServiceNowConnector(
        ServiceNowSettings(
            enabled=True, instance_url=INSTANCE, username="ticketpager", password="s3cret-pw", page_size=3
        ),
        clock=FakeClock(t0 + timedelta(minutes=10)),
        session=requests.Session(),
    )
    poll_and_check(tmp_path, conn, caplog, "id01", {"unstorable": 1})


def test_a_surrogate_behind_a_number_only_the_stdlib_reads_is_still_refused() -> None:
    """orjson stops at its first complaint (an integer beyond 64 bits, which the stdlib fallback reads):
    a lone surrogate after it must not slip through the fallback."""
    huge = b"9" * 400
    assert jsonutil.loads(b'{"n": ' + huge + b"}") == {"n": int(huge)}
    with pytest.raises(jsonutil.BadJSON, match="surrogate"):
        jsonutil.loads(b'{"n": ' + huge + b', "title": "\\ud800"}')
    with pytest.raises(jsonutil.BadJSON, match="surrogate"):
        jsonutil.dumps({"n": int(huge), "title": SURROGATE})


def test_already_encoded_json_is_spliced_into_a_document_on_both_encoders() -> None:
    """A decision's verdicts are encoded once and spliced in (``jsonutil.Encoded``): the document must hold them
    as JSON values, also when a value orjson refuses (an integer beyond 64 bits) sends it to the stdlib."""
    stored = [{"rule": "p1", "why": ["priority: 'Low' is not 'P1'"]}]
    doc = {"origin": "webhook", "verdicts": jsonutil.Encoded(jsonutil.encode(stored))}
    assert jsonutil.loads(jsonutil.dumps(doc)) == {"origin": "webhook", "verdicts": stored}
    huge = 2**70
    assert jsonutil.loads(jsonutil.dumps(doc | {"n": huge})) == {"origin": "webhook", "verdicts": stored, "n": huge}
    spliced = {"v": jsonutil.Encoded(jsonutil.encode([huge])), "n": huge}  # encoded by the stdlib, read back exactly
    assert jsonutil.loads(jsonutil.dumps(spliced)) == {"v": [huge], "n": huge}
