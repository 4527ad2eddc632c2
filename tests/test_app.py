"""The webhook endpoint and operational routes, through the real Starlette app and the real Jira connector:
a 202 only once the change is committed; every rejection a JSON reason with nothing stored."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import responses
from sqlalchemy import func, select
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.repos.cursors import record_poll_error, save_cursor
from sync.schema import changes
from tests.factories import ROUTING_KEY
from tests.harness import make_service
from ticketpager.app import build_app
from ticketpager.service import Service

SECRET = "jira-webhook-secret-0001"
FIXTURES = Path(__file__).parent / "fixtures" / "jira"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def jira_body(issue_id: str = "10042", status_key: str = "new") -> bytes:
    payload = json.loads((FIXTURES / "webhook_issue_updated_done.json").read_text())
    payload["issue"]["id"] = issue_id
    payload["issue"]["fields"]["status"]["statusCategory"]["key"] = status_key
    return json.dumps(payload).encode()


def _service(db_url: str, rules_path: Path, clock: FakeClock, **settings: object) -> Service:
    settings.setdefault("jira", {"webhook_secrets": [SECRET]})
    return make_service(db_url, rules_path, "http://127.0.0.1:9/v2/enqueue", clock, **settings)


@pytest.fixture
def service(db_url: str, rules_path: Path, clock: FakeClock) -> Iterator[Service]:
    svc = _service(db_url, rules_path, clock)
    svc.writer.start()
    yield svc
    svc.writer.stop()
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(build_app(service)) as c:
        yield c


def test_a_webhook_the_database_refuses_is_a_503_and_one_log_line_without_its_content(
    service: Service, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The changes table is gone (SQLite says "no such table", PostgreSQL ProgrammingError): 503 for the vendor to
    retry, and the log says why in one line, never with the stored row (the ticket's text) or the statement's values."""
    from sqlalchemy import text

    body = jira_body("31401")
    with service.store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE changes RENAME TO changes_away"))
    with caplog.at_level(logging.ERROR, logger="ticketpager"):
        response = post(client, body, delivery="wh-31401")
    assert response.status_code == 503 and "retry" in response.json()["error"]
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("storing webhook from jira failed")]
    assert "changes" in line and "\n" not in line
    summary = json.loads(body)["issue"]["fields"]["summary"]
    assert summary not in line and "31401" not in line and "[SQL" not in line


def stored(service: Service) -> int:
    with service.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(changes)).scalar_one())


def post(client: TestClient, body: bytes, *, delivery: str = "wh-1", signature: str | None = None,
         source: str = "jira") -> object:
    headers = {"Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": delivery}
    if signature is not False:
        headers["X-Hub-Signature"] = signature or sign(body)
    return client.post(f"/webhooks/{source}", content=body, headers=headers)


def test_signed_webhook_is_committed_before_202(client: TestClient, service: Service) -> None:
    response = post(client, jira_body())
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "stored": 1, "duplicates": 0}
    assert stored(service) == 1, "the 202 means the change is already durable"


def test_duplicate_delivery_is_accepted_but_stored_once(client: TestClient, service: Service) -> None:
    body = jira_body()
    assert post(client, body, delivery="same").json()["stored"] == 1
    again = post(client, body, delivery="same")
    assert again.status_code == 202 and again.json()["duplicates"] == 1
    assert stored(service) == 1


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (False, "missing X-Hub-Signature"),
        ("sha256=" + "0" * 64, "invalid X-Hub-Signature"),
        ("sha1=abc", "sha256="),
    ],
)
def test_bad_signatures_are_401_and_store_nothing(
    client: TestClient, service: Service, signature: object, reason: str
) -> None:
    response = post(client, jira_body(), signature=signature)  # type: ignore[arg-type]
    assert response.status_code == 401
    assert reason in response.json()["error"]
    assert stored(service) == 0


def test_signature_with_a_rotated_secret(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    svc = _service(db_url, rules_path, clock, jira={"webhook_secrets": ["new-secret-2026", SECRET]})
    svc.writer.start()
    try:
        with TestClient(build_app(svc)) as c:
            body = jira_body()
            assert post(c, body, signature=sign(body, "new-secret-2026")).status_code == 202
            assert post(c, body, delivery="wh-2", signature=sign(body, SECRET)).status_code == 202
    finally:
        svc.writer.stop()
        svc.store.dispose()


def test_malformed_json_is_400_with_reason(client: TestClient, service: Service) -> None:
    body = b'{"webhookEvent": "jira:issue_updated", '
    response = post(client, body)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    assert stored(service) == 0


def test_body_over_limit_is_413(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    svc = _service(db_url, rules_path, clock, max_body_bytes=1000)
    svc.writer.start()
    try:
        with TestClient(build_app(svc)) as c:
            body = jira_body()
            assert len(body) > 1000
            response = post(c, body)
            assert response.status_code == 413 and "1000" in response.json()["error"]
            # no Content-Length (chunked): refused while it streams in, past the limit
            halves = [body[:600], body[600:]]
            headers = {"X-Hub-Signature": sign(body), "X-Atlassian-Webhook-Identifier": "chunked"}
            response = c.post("/webhooks/jira", content=iter(halves), headers=headers)
            assert response.status_code == 413 and "1000" in response.json()["error"]
            response = c.post("/webhooks/jira", content=body[:900], headers={**headers, "Content-Length": "x9"})
            assert response.status_code == 400 and response.json() == {"error": "invalid Content-Length header"}
            assert stored(svc) == 0
    finally:
        svc.writer.stop()
        svc.store.dispose()


def test_unknown_source_is_404(client: TestClient) -> None:
    response = client.post("/webhooks/github", content=b"{}")
    assert response.status_code == 404 and "jira" in response.json()["error"]


def test_unconfigured_secret_rejects_unless_insecure(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    for insecure, expected in ((False, 401), (True, 202)):
        svc = _service(db_url, rules_path, clock, jira={}, insecure_webhooks=insecure)
        svc.writer.start()
        try:
            with TestClient(build_app(svc)) as c:
                response = post(c, jira_body(), signature=False, delivery=f"x-{insecure}")  # type: ignore[arg-type]
                assert response.status_code == expected
                if expected == 401:
                    assert "not configured" in response.json()["error"]
        finally:
            svc.writer.stop()
            svc.store.dispose()


def test_health_ready_and_metrics(client: TestClient, service: Service) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["database"] == "ok" and body["rules"]["loaded"] and body["rules"]["count"] == 1
    commits_before = _metric(client.get("/metrics").text, "ticketpager_webhook_commit_seconds_count")
    post(client, jira_body())
    metrics = client.get("/metrics").text
    assert 'ticketpager_webhooks_total{outcome="accepted",source="jira"}' in metrics
    assert "ticketpager_outbox_pending" in metrics
    assert _metric(metrics, "ticketpager_webhook_commit_seconds_count") == commits_before + 1
    assert _metric(metrics, "ticketpager_webhook_commit_requests_count") >= 1


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match is not None, f"{name} missing from /metrics"
    return float(match.group(1))


def test_readyz_reports_a_permanent_poll_error(client: TestClient, service: Service, clock: FakeClock) -> None:
    with service.store.begin() as conn:
        record_poll_error(conn, "jira", "Jira answered HTTP 401: check the API token", "permanent", clock.now())
    body = client.get("/readyz").json()
    assert body["degraded"] is True
    assert "401" in body["sources"]["permanent_errors"]["jira"]


def test_readyz_flags_rules_whose_routing_key_cannot_page(
    db_url: str, rules_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The examples' ``${PD_..._KEY:-dry-run-…}`` default left in production: every page would be a dead
    letter. The service still takes webhooks (ready), but says so (degraded), without showing the key."""
    monkeypatch.setenv("PD_PLATFORM_KEY", "dry-run-platform-placeholder")
    svc = _service(db_url, rules_path, clock)
    try:
        with TestClient(build_app(svc)) as c:
            body = c.get("/readyz").json()
        assert body["ready"] is True and body["degraded"] is True
        [problem] = body["rules"]["routing_key_problems"]
        assert "ops-highest" in problem and "32-character" in problem
        assert "dry-run-platform-placeholder" not in json.dumps(body)
    finally:
        svc.store.dispose()


CUSTOM_TIER_RULES = """
version: 1
rules:
  - name: gold-ops
    source: jira
    when:
      project: OPS
      custom.Customer Tier: {in: [Gold, Platinum]}
    trigger:
      routing_key: ${PD_PLATFORM_KEY}
      severity: critical
      summary: "{{ ticket.title }}"
"""


def test_a_jira_webhook_refused_for_missing_field_names_stores_nothing(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    (rules_path / "ops.yaml").write_text(CUSTOM_TIER_RULES)
    base = "https://acme.atlassian.net"
    jira = {"webhook_secrets": [SECRET], "url": base, "email": "bot@acme.example", "api_token": "t"}
    svc = _service(db_url, rules_path, clock, jira=jira)
    try:
        with responses.RequestsMock() as rsps, TestClient(build_app(svc)) as c:
            rsps.get(f"{base}/rest/api/2/serverInfo", body=requests.ConnectionError("Jira unreachable"))
            svc.writer.start()
            response = post(c, jira_body())
            assert response.status_code == 503  # type: ignore[attr-defined]
            assert "custom.Customer Tier" in response.json()["error"]  # type: ignore[attr-defined]
            assert stored(svc) == 0
            assert 'ticketpager_webhooks_total{outcome="unavailable",source="jira"}' in c.get("/metrics").text
    finally:
        svc.writer.stop()
        svc.store.dispose()


def test_readyz_says_when_rules_read_jira_field_names_a_webhook_only_setup_cannot_know(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    (rules_path / "ops.yaml").write_text(CUSTOM_TIER_RULES)
    svc = _service(db_url, rules_path, clock)  # webhook secret, no Jira URL or API token
    try:
        with TestClient(build_app(svc)) as c:
            body = c.get("/readyz").json()
        assert body["degraded"] is True
        assert "custom.Customer Tier" in body["rules"]["jira_custom_field_names"]
        assert "custom.customfield_10010" in body["rules"]["jira_custom_field_names"]
        (rules_path / "ops.yaml").write_text(CUSTOM_TIER_RULES.replace("Customer Tier", "customfield_10010"))
        assert svc.reload_rules()
        with TestClient(build_app(svc)) as c:
            assert "jira_custom_field_names" not in c.get("/readyz").json()["rules"]
    finally:
        svc.store.dispose()


def test_a_source_that_never_polled_successfully_still_shows_its_poll_lag(
    db_url: str, rules_path: Path, clock: FakeClock, client: TestClient
) -> None:
    """The lag alert must fire for a source misconfigured from day one, not find no series at all."""
    jira = {"enabled": True, "webhook_secrets": [SECRET], "url": "https://acme.atlassian.net",
            "email": "bot@acme.example", "api_token": "t"}
    svc = _service(db_url, rules_path, clock, jira=jira)
    try:
        clock.advance(1800)  # half an hour of failing polls (or none at all)
        svc.update_gauges()
        assert _metric(client.get("/metrics").text, 'ticketpager_poll_lag_seconds\\{source="jira"\\}') == 1800
        with svc.store.begin() as conn:
            save_cursor(conn, "jira", {"watermark": "x"}, clock.now() - timedelta(seconds=60))
        svc.update_gauges()
        assert _metric(client.get("/metrics").text, 'ticketpager_poll_lag_seconds\\{source="jira"\\}') == 60
    finally:
        svc.store.dispose()


def test_failure_counters_exist_before_the_first_failure(client: TestClient) -> None:
    """An alert on increase(...) cannot see a series' first sample: the failure series start at 0."""
    text = client.get("/metrics").text
    for series in (
        'ticketpager_webhooks_total{outcome="store_failed",source="servicenow"}',
        'ticketpager_poll_errors_total{kind="permanent",source="zendesk"}',
        'ticketpager_events_total{action="trigger",outcome="dead"}',
        'ticketpager_changes_processed_total{outcome="failed",source="jira"}',
    ):
        assert series in text, series


def test_metrics_token(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    svc = _service(db_url, rules_path, clock, metrics_token="metrics-token-xyz")
    try:
        with TestClient(build_app(svc)) as c:
            assert c.get("/metrics").status_code == 401
            assert c.get("/admin/status").status_code == 401
            ok = c.get("/metrics", headers={"Authorization": "Bearer metrics-token-xyz"})
            assert ok.status_code == 200
            assert c.get("/admin/status", headers={"Authorization": "Bearer metrics-token-xyz"}).status_code == 200
    finally:
        svc.store.dispose()


def test_no_secret_in_responses_or_logs(
    client: TestClient, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        responses = [
            post(client, jira_body(), signature="sha256=" + "1" * 64),
            post(client, b"not json"),
            post(client, jira_body()),
            client.get("/readyz"),
            client.get("/metrics"),
            client.get("/admin/status"),
        ]
    text = caplog.text + "".join(r.text for r in responses)  # type: ignore[attr-defined]
    for secret in (SECRET, ROUTING_KEY):
        assert secret not in text
    assert SECRET not in repr(service) and SECRET not in repr(service.connector("jira"))


def test_http_errors_are_json_and_trailing_slash_is_accepted(client: TestClient, service: Service) -> None:
    wrong_method = client.get("/webhooks/jira")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}
    assert wrong_method.headers["allow"] == "POST"
    assert client.get("/webhooks/jira/").status_code == 405
    nowhere = client.get("/nope")
    assert nowhere.status_code == 404 and nowhere.json() == {"error": "Not Found"}
    for path in ("/webhooks/", "/webhooks/jira/extra/more", "/webhooks//"):
        response = client.post(path, content=b"{}")
        assert response.status_code == 404 and response.json() == {"error": "Not Found"}, path
    # /webhooks/{system}/{connection}: a connection that is not configured is named in the 404
    response = client.post("/webhooks/jira/extra", content=b"{}")
    assert response.status_code == 404 and response.json() == {"error": "unknown jira connection 'extra'"}
    body = jira_body()
    response = client.post("/webhooks/jira/", content=body, follow_redirects=False,
                           headers={"X-Hub-Signature": sign(body), "X-Atlassian-Webhook-Identifier": "slash"})
    assert response.status_code == 202 and stored(service) == 1


def test_missing_secret_names_the_setting(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    svc = _service(db_url, rules_path, clock, jira={})
    try:
        with TestClient(build_app(svc)) as c:
            response = post(c, jira_body(), signature=False)  # type: ignore[arg-type]
            assert response.status_code == 401
            assert "TICKETPAGER_JIRA__WEBHOOK_SECRETS" in response.json()["error"]
    finally:
        svc.store.dispose()


def test_a_stalled_writer_answers_503_in_bounded_time(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    """If the writer never commits (disk hung), the vendor hears 503 and retries; the request does not hang."""
    svc = _service(db_url, rules_path, clock)
    svc.writer.submit_timeout = 0.2  # the writer thread is never started: nothing will commit
    try:
        with TestClient(build_app(svc)) as c:
            response = post(c, jira_body())
        assert response.status_code == 503
        assert response.json() == {"error": "could not store the change; retry later"}
    finally:
        svc.store.dispose()


def test_webhooks_behind_a_root_path(service: Service) -> None:
    """Behind a proxy prefix (uvicorn --root-path /api), webhooks route like every other endpoint."""
    with TestClient(build_app(service), root_path="/api") as c:
        body = jira_body()
        headers = {"X-Hub-Signature": sign(body), "X-Atlassian-Webhook-Identifier": "prefixed"}
        response = c.post("/api/webhooks/jira", content=body, headers=headers)
        assert response.status_code == 202, response.text
        assert c.get("/api/healthz").status_code == 200
    assert stored(service) == 1
