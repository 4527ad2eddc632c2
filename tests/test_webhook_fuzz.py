"""Bad input never crashes a webhook: property-based tests against the REAL HTTP app.

For each source (jira, zendesk, servicenow) hypothesis feeds ``POST /webhooks/{source}`` of the real
Starlette app (a real :class:`~ticketpager.service.Service` on a temporary SQLite database, real connectors)
arbitrary bodies — binary, JSON of any shape, and the vendors' documented payloads with fields deleted or
replaced by values of the wrong type — with arbitrary extra headers, either

* signed correctly over that arbitrary body (so the parser is reached), or
* unsigned / signed wrongly (so only the authentication code runs).

What a vendor (or an attacker) would notice is asserted: the answer is a 202 or a 4xx carrying a JSON
``{"error": "<reason>"}``, never a 5xx; nothing is stored for a 4xx or for a 202 "ignored"; an unsigned
request is always a 401. The app turns any exception escaping a parser into a 400 so the vendor does not
retry forever; such an exception is still a parser bug, so it is detected (the app's
``ticketpager_webhooks_total{outcome="unparseable"}`` counter moves) and fails the test with its traceback.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import importlib.util
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.metrics import METRICS
from sync.schema import changes
from sync.store import Store
from tests.factories import ROUTING_KEY, RULES
from ticketpager.app import build_app
from ticketpager.service import Service
from ticketpager.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "fuzz-webhook-secret-0001"
BEARER = "fuzz-bearer-token-0001"
SIGNED_EXAMPLES = 150  # per source; keeps the whole module well under a minute on 2 shared cores
UNSIGNED_EXAMPLES = 60
FUZZ = settings(
    max_examples=SIGNED_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Documented payloads the mutations start from (see each connector's docs/<vendor>.md).
SEEDS: dict[str, list[str]] = {
    "jira": ["jira/webhook_issue_updated_done.json", "jira/webhook_comment_created.json"],
    "zendesk": [
        "zendesk/event_status_changed.json",
        "zendesk/event_comment_added_own_note.json",
        "zendesk/trigger_body.json",
    ],
    "servicenow": ["servicenow/webhook_incident_update.json"],
}
# Headers each vendor sends besides the signature: fuzzed with arbitrary values too.
VENDOR_HEADERS: dict[str, list[str]] = {
    "jira": ["X-Atlassian-Webhook-Identifier", "X-Atlassian-Webhook-Retry", "User-Agent"],
    "zendesk": ["X-Zendesk-Webhook-Id", "X-Zendesk-Webhook-Invocation-Id", "X-Zendesk-Webhook-Signature-Timestamp"],
    "servicenow": ["X-Ticketpager-Delivery", "X-Timestamp", "Authorization"],
}
SIGNATURE_HEADERS: dict[str, list[str]] = {
    "jira": ["X-Hub-Signature"],
    "zendesk": ["X-Zendesk-Webhook-Signature", "X-Zendesk-Webhook-Signature-Timestamp"],
    "servicenow": ["X-Signature", "X-Timestamp", "Authorization"],
}
# Framing headers the HTTP client owns; fuzzing them tests the client, not us.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect"}


def _has_connector(source: str) -> bool:
    return importlib.util.find_spec(f"connectors.{source}") is not None


def _source_param(source: str) -> Any:
    marks = [] if _has_connector(source) else [pytest.mark.skip(reason=f"connectors/{source}.py is not written yet")]
    return pytest.param(source, marks=marks, id=source)


SOURCES = [_source_param(s) for s in ("jira", "zendesk", "servicenow")]


# -- the app under test ---------------------------------------------------------------------------------
def make_service(db_url: str, rules: Path, clock: FakeClock, source: str, connector: dict[str, Any]) -> Service:
    """A real Service (store migrated, rules loaded, connectors built on demand); PagerDuty is never reached."""
    config = Settings.model_validate(  # no environment, no .env: only what this test says
        {
            "database_url": db_url,
            "rules_path": rules,
            "pagerduty": {"events_url": "http://127.0.0.1:9/v2/enqueue"},
            source: connector,
        }
    )
    store = Store(db_url)
    store.upgrade()
    return Service(config, clock=clock, store=store)


class CrashLog(logging.Handler):
    """Collects the tracebacks the app logs when a parser raises something other than WebhookRejected."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.tracebacks.append(logging.Formatter().format(record))


@dataclass
class Target:
    source: str
    service: Service
    client: TestClient
    clock: FakeClock
    crashes: CrashLog = field(default_factory=CrashLog)

    def rows(self) -> int:
        with self.service.store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(changes)).scalar_one())

    def unparseable(self) -> float:
        value = METRICS.registry.get_sample_value(
            "ticketpager_webhooks_total", {"source": self.source, "outcome": "unparseable"}
        )
        return value or 0.0


@pytest.fixture(scope="module", params=SOURCES)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    source: str = request.param
    tmp = tmp_path_factory.mktemp(f"fuzz-{source}")
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    clock = FakeClock()
    connector_settings: dict[str, Any] = {"enabled": True, "webhook_secrets": [SECRET]}
    if source == "servicenow":
        connector_settings["bearer_tokens"] = [BEARER]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
        service = make_service(f"sqlite:///{tmp / 'tp.db'}", rules, clock, source, connector_settings)
    service.writer.start()
    crashes = CrashLog()
    http_log = logging.getLogger("ticketpager.http")
    http_log.addHandler(crashes)
    try:
        with TestClient(build_app(service), raise_server_exceptions=False) as client:
            yield Target(source, service, client, clock, crashes)
    finally:
        http_log.removeHandler(crashes)
        service.writer.stop()
        service.store.dispose()


# -- signing, as each vendor does it ----------------------------------------------------------------------
def _b64_hmac(message: bytes) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), message, hashlib.sha256).digest()).decode()


def signed_headers(target: Target, body: bytes, mode: str) -> dict[str, str]:
    """Valid authentication for ``body`` (read from each connector's verify_webhook)."""
    if target.source == "jira":  # X-Hub-Signature: sha256=<hex HMAC of the raw body>
        return {"X-Hub-Signature": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    if target.source == "zendesk":  # base64 HMAC of timestamp + body, timestamp in its own header
        stamp = target.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "X-Zendesk-Webhook-Signature": _b64_hmac(stamp.encode() + body),
            "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        }
    if mode == "bearer":  # ServiceNow's alternative: a static bearer token
        return {"Authorization": f"Bearer {BEARER}"}
    # ServiceNow business rule: X-Signature = base64 HMAC of the body, X-Timestamp = the body's sent_at
    return {"X-Signature": _b64_hmac(body), "X-Timestamp": servicenow_stamp(target)}


def servicenow_stamp(target: Target) -> str:
    return str(int(target.clock.now().timestamp()))


# -- strategies -----------------------------------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**400)  # ids and epoch values no column was sized for
    | st.floats()  # NaN and ±Infinity included: Python's json reads them back
    | st.text(max_size=40)
    | st.sampled_from(["", "0", "-1", "²", "9" * 300, "not-a-date", "2026-13-45T99:99:99Z", "2026-11-27T09:00:00"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=15), children, max_size=4),
    max_leaves=20,
)

Path_ = tuple[Any, ...]


def _paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    out: list[Path_] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _apply(doc: Any, path: Path_, value: Any, delete: bool) -> None:
    parent = doc
    for key in path[:-1]:
        try:
            parent = parent[key]
        except (KeyError, IndexError, TypeError):
            return  # an earlier mutation removed or replaced this branch
    last = path[-1]
    try:
        if delete:
            del parent[last]
        else:
            parent[last] = value
    except (KeyError, IndexError, TypeError):
        return


def _seed(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@st.composite
def vendor_shaped(draw: st.DrawFn, source: str) -> Any:
    """A documented payload with 1–4 fields deleted or replaced by a value of any (usually wrong) type."""
    doc = copy.deepcopy(_seed(draw(st.sampled_from(SEEDS[source]))))
    paths = _paths(doc)
    for _ in range(draw(st.integers(1, 4))):
        _apply(doc, draw(st.sampled_from(paths)), draw(json_values), delete=draw(st.booleans()))
    return doc


def json_bodies(source: str) -> st.SearchStrategy[Any]:
    return st.one_of(vendor_shaped(source), vendor_shaped(source), json_values)


def raw_bodies(source: str) -> st.SearchStrategy[bytes | Any]:
    """Either bytes to send as they are, or a JSON document to serialise."""
    return st.one_of(
        st.binary(max_size=512),
        st.sampled_from([b"", b"{", b"null", b"[]", b"\xff\xfe{}", b'{"a":1}{"a":2}', b"1e999"]),
        json_bodies(source),
    )


header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)
header_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,30}\Z").filter(lambda n: n.lower() not in FRAMING)


def extra_headers(source: str) -> st.SearchStrategy[dict[str, str]]:
    names = st.one_of(st.sampled_from(VENDOR_HEADERS[source] + SIGNATURE_HEADERS[source]), header_names)
    return st.dictionaries(names, header_values, max_size=4)


def encode(body: bytes | Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def post(target: Target, body: bytes, headers: dict[str, str]) -> Any:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return target.client.post(f"/webhooks/{target.source}", content=body, headers=raw)


def check_answer(target: Target, response: Any, rows_before: int, unparseable_before: float, body: bytes) -> None:
    """202, or a 4xx with a JSON reason and nothing stored; and no exception escaped a parser."""
    crashed = target.unparseable() > unparseable_before or target.crashes.tracebacks
    if crashed:
        tracebacks = "\n".join(target.crashes.tracebacks)
        target.crashes.tracebacks.clear()
        pytest.fail(f"{target.source} parser raised on body {body[:300]!r}:\n{tracebacks}")
    status = response.status_code
    assert status < 500, f"{target.source} answered {status} {response.text[:300]} to body {body[:300]!r}"
    assert status == 202 or 400 <= status < 500, f"unexpected status {status}"
    payload = response.json()  # every answer is JSON
    rows_after = target.rows()
    if status == 202:
        assert payload.get("status") in ("accepted", "ignored"), payload
        if payload["status"] == "ignored":
            assert rows_after == rows_before, "an ignored webhook must not store anything"
        return
    assert isinstance(payload.get("error"), str) and payload["error"].strip(), payload
    assert rows_after == rows_before, f"a {status} stored {rows_after - rows_before} change(s)"


# -- the properties -------------------------------------------------------------------------------------
def test_signed_arbitrary_bodies_are_202_or_a_clear_4xx(target: Target) -> None:
    modes = ["hmac", "bearer"] if target.source == "servicenow" else ["hmac"]

    @FUZZ
    @given(body=raw_bodies(target.source), extra=extra_headers(target.source), mode=st.sampled_from(modes))
    def run(body: bytes | Any, extra: dict[str, str], mode: str) -> None:
        if target.source == "servicenow" and mode == "hmac" and isinstance(body, dict):
            body = {**body, "sent_at": int(servicenow_stamp(target))}  # the signed body repeats X-Timestamp
        raw = encode(body)
        signature_names = {h.lower() for h in SIGNATURE_HEADERS[target.source]}
        headers = {k: v for k, v in extra.items() if k.lower() not in signature_names}
        headers.update(signed_headers(target, raw, mode))
        rows, unparseable = target.rows(), target.unparseable()
        check_answer(target, post(target, raw, headers), rows, unparseable, raw)

    run()


def test_vendor_shaped_bodies_reach_the_parser(target: Target) -> None:
    """Guards the property above: with a valid signature the documented payload is really parsed (202),
    so the fuzzing is not just exercising the signature check."""
    for seed in SEEDS[target.source]:
        doc = _seed(seed)
        if target.source == "servicenow":
            doc["sent_at"] = int(servicenow_stamp(target))
        raw = json.dumps(doc).encode()
        response = post(target, raw, signed_headers(target, raw, "hmac"))
        assert response.status_code == 202, (seed, response.text)


def test_unsigned_or_wrongly_signed_requests_are_401_and_store_nothing(target: Target) -> None:
    @settings(FUZZ, max_examples=UNSIGNED_EXAMPLES)
    @given(body=raw_bodies(target.source), extra=extra_headers(target.source))
    def run(body: bytes | Any, extra: dict[str, str]) -> None:
        raw = encode(body)
        rows, unparseable = target.rows(), target.unparseable()
        response = post(target, raw, extra)
        check_answer(target, response, rows, unparseable, raw)
        assert response.status_code == 401, (response.status_code, response.text)

    run()


# -- identifiers the database cannot hold -----------------------------------------------------------------
# Found by fuzzing against PostgreSQL: ``changes.ticket_id`` is VARCHAR(255) and PostgreSQL refuses text with
# NUL characters. Such a signed payload used to fail the group commit with a 503 (retried forever by the
# vendor, and failing every webhook batched with it); it is now a 400 naming the identifier, on both databases.


def _with_bad_id(source: str, variant: str, stamp: int) -> dict[str, Any]:
    bad = "1" * 300 if variant == "long" else "10\u000042"
    if source == "jira":
        doc = _seed(SEEDS["jira"][0])
        doc["issue"]["id"] = bad
    elif source == "zendesk":
        doc = _seed(SEEDS["zendesk"][0])
        if variant == "long":
            doc["detail"]["id"] = bad  # Zendesk ids are integers: a 300-digit one is still "valid"
        else:
            doc["id"] = "event\u0000id"  # the event id becomes the delivery id
    else:
        doc = _seed(SEEDS["servicenow"][0])
        doc["record"]["sys_id"] = bad
        doc["sent_at"] = stamp
    return doc


@pytest.mark.parametrize("variant", ["long", "nul"])
@pytest.mark.parametrize("source", SOURCES)
def test_ids_the_database_cannot_store_are_not_a_5xx(
    source: str, variant: str, db_url: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
        service = make_service(db_url, rules, clock, source, {"enabled": True, "webhook_secrets": [SECRET]})
    service.writer.start()
    try:
        with TestClient(build_app(service), raise_server_exceptions=False) as client:
            target = Target(source, service, client, clock)
            raw = json.dumps(_with_bad_id(source, variant, int(servicenow_stamp(target)))).encode()
            rows, unparseable = target.rows(), target.unparseable()
            response = post(target, raw, signed_headers(target, raw, "hmac"))
            check_answer(target, response, rows, unparseable, raw)
            assert response.status_code == 400, response.text
            assert ("longer than 255" if variant == "long" else "NUL") in response.json()["error"]
    finally:
        service.writer.stop()
        service.store.dispose()
