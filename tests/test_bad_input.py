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
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from sync.app import build_app
from sync.clock import FakeClock
from sync.metrics import METRICS
from tests.factories import ROUTING_KEY, RULES
from tests.test_webhook_fuzz import SECRET, SEEDS, Target, _seed, make_service, post, servicenow_stamp, signed_headers

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
