"""The Prometheus Operator objects in ``deploy/k8s``: the ServiceMonitor scrapes the Service's port with the
metrics token, and the PrometheusRule holds the alerts docs/operations.md describes, whose expressions use
only metrics (and labels) that a real scrape of the app's ``/metrics`` has: a renamed metric or a typo would
otherwise be an alert that silently never fires. With ``promtool`` installed (Debian: ``prometheus``), the
rules are also checked and unit-tested by Prometheus itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from tests.factories import change, ticket
from tests.harness import make_service, receive
from ticketpager.app import build_app
from ticketpager.service import Service

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OPERATIONS = ROOT / "docs" / "operations.md"
MONITORING_API = "monitoring.coreos.com/v1"
# Metrics the alerts may use that ticketpager does not export, each with where it comes from.
EXTERNAL_METRICS = {"kube_deployment_status_replicas_available": "kube-state-metrics"}


def objects(kind: str) -> list[dict[str, Any]]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    return [doc for doc in docs if isinstance(doc, dict) and doc.get("kind") == kind]


def the(kind: str) -> dict[str, Any]:
    found = objects(kind)
    assert len(found) == 1, f"one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def rule_alerts() -> list[dict[str, Any]]:
    rule = the("PrometheusRule")
    assert rule["apiVersion"] == MONITORING_API
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def docs_alerts() -> list[dict[str, Any]]:
    text = OPERATIONS.read_text()
    section = text[text.index("### Alerts to set"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "docs/operations.md: no yaml block under 'Alerts to set'"
    groups = yaml.safe_load(block.group(1))["groups"]
    return [r for group in groups for r in group["rules"]]


# -- PromQL: which metrics and labels an expression uses ----------------------------------------------------
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
RANGE = re.compile(r"\[[^\]]*\]")
IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")  # a whole word, not a call
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan"}


def promql_uses(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses; functions and aggregations are not metrics."""
    text = STRING.sub('""', expr)
    labels: set[str] = set()
    metrics: set[str] = set()
    for name, body in SELECTOR.findall(text):
        labels.update(label for label in MATCHER_LABEL.findall(body) if label != "__name__")
        if name:
            metrics.add(name)
    text = SELECTOR.sub(" ", text)
    for group in GROUPING.findall(text):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    text = RANGE.sub(" ", GROUPING.sub(" ", text))
    metrics.update(word for word in IDENTIFIER.findall(text) if word.lower() not in KEYWORDS)
    return metrics, labels


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ('max(ticketpager_dead_letters{kind="event"}) > 0', {"ticketpager_dead_letters"}, {"kind"}),
        ("sum by (source) (increase(ticketpager_poll_errors_total[15m])) > 0", {"ticketpager_poll_errors_total"},
         {"source"}),
        ('sum(rate(a_total{outcome=~"x|y{2}"}[5m])) > 0.2 * sum(rate(b_total[5m] offset 1h))', {"a_total", "b_total"},
         {"outcome"}),
        ("histogram_quantile(0.9, sum by (le) (rate(x_seconds_bucket[5m])))", {"x_seconds_bucket"}, {"le"}),
    ],
)
def test_promql_uses_finds_metrics_and_labels(expr: str, metrics: set[str], labels: set[str]) -> None:
    assert promql_uses(expr) == (metrics, labels)


# -- a real scrape ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> label names, from /metrics of a service that took a change and refreshed its gauges
    (what a replica has after its first seconds), with Jira set up to poll."""
    from tests.factories import ROUTING_KEY, RULES

    tmp = tmp_path_factory.mktemp("scrape")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "ops.yaml").write_text(RULES.replace("${PD_PLATFORM_KEY}", ROUTING_KEY))
    jira = {"enabled": True, "url": "https://example.atlassian.net", "email": "bot@example.com",
            "api_token": "jira-token-0001", "webhook_secrets": ["jira-webhook-secret-0001"]}
    svc: Service = make_service(f"sqlite:///{tmp / 'db.sqlite'}", tmp / "rules", "http://127.0.0.1:9/v2/enqueue",
                                FakeClock(), jira=jira)
    try:
        receive(svc, [change(ticket("10001"))])
        svc.engine.drain()
        svc.update_gauges()
        with TestClient(build_app(svc)) as client:
            response = client.get("/metrics")
    finally:
        svc.store.dispose()
    assert response.status_code == 200
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_the_rules_use_only_metrics_and_labels_the_app_exports(scraped: dict[str, set[str]]) -> None:
    problems = []
    for alert in rule_alerts():
        metrics, labels = promql_uses(str(alert["expr"]))
        assert metrics, f"{alert['alert']}: no metric found in {alert['expr']!r}"
        ours = metrics - set(EXTERNAL_METRICS)
        for metric in sorted(ours - set(scraped)):
            problems.append(f"{alert['alert']}: {metric} is not in a scrape of /metrics")
        known = set().union(*(scraped.get(m, set()) for m in ours)) if ours else None
        if known is not None:
            problems.extend(f"{alert['alert']}: no metric it uses has a label {label!r}" for label in labels - known)
    assert not problems, "\n".join(problems)


def test_a_misspelt_metric_would_be_caught(scraped: dict[str, set[str]]) -> None:
    metrics, _ = promql_uses('max(ticketpager_dead_letter{kind="event"}) > 0')
    assert metrics - set(scraped) == {"ticketpager_dead_letter"}


def test_every_alert_has_a_severity_and_a_summary() -> None:
    alerts = rule_alerts()
    assert len({a["alert"] for a in alerts}) == len(alerts), "alert names repeat"
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]


def normalised(alert: dict[str, Any]) -> tuple[str, str, str | None]:
    return alert["alert"], " ".join(str(alert["expr"]).split()), alert.get("for")


def test_the_rules_are_the_alerts_the_docs_describe() -> None:
    assert [normalised(a) for a in rule_alerts()] == [normalised(a) for a in docs_alerts()]


# -- ServiceMonitor and kustomization ---------------------------------------------------------------------
def test_the_servicemonitor_scrapes_the_services_port_with_the_metrics_token() -> None:
    monitor, service, deployment = the("ServiceMonitor"), the("Service"), the("Deployment")
    assert monitor["apiVersion"] == MONITORING_API
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted and wanted.items() <= service["metadata"]["labels"].items(), "selects no Service"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    token = env["TICKETPAGER_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    auth = endpoint["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert (auth["credentials"]["name"], auth["credentials"]["key"]) == (token["name"], token["key"])


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)


# -- promtool (Prometheus' own checker), where installed -----------------------------------------------------
@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus); the Python checks above ran")
    return found


def write_rules(path: Path, *, annotations: bool = True) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rule file."""
    groups = the("PrometheusRule")["spec"]["groups"]
    if not annotations:  # promtool's unit tests compare annotations too: the firing is what is tested here
        groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                  for g in groups]
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def test_promtool_checks_the_rules(promtool: str, tmp_path: Path) -> None:
    rules_file = write_rules(tmp_path / "ticketpager.rules.yaml")
    out = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


PROMTOOL_TESTS = """
rule_files: [ticketpager.rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ticketpager_dead_letters{kind="event", pod="a"}'
        values: '0 1 1 1'
      - series: 'ticketpager_dead_letters{kind="event", pod="b"}'
        values: '0 1 1 1'
      - series: 'ticketpager_outbox_oldest_age_seconds{pod="a"}'
        values: '0+60x12'
      - series: 'ticketpager_webhooks_total{source="jira", outcome="accepted"}'
        values: '0+10x30'
      - series: 'ticketpager_webhooks_total{source="jira", outcome="rejected_401"}'
        values: '0+10x30'
      - series: 'ticketpager_webhooks_total{source="unknown", outcome="unknown_connection"}'
        values: '0+2x30'
      - series: 'ticketpager_worker_restarts_total{worker="engine", reason="database", pod="a"}'
        values: '0+60x3 180x30'
      - series: 'ticketpager_worker_restarts_total{worker="delivery", reason="database", pod="a"}'
        values: '0+1x20'
      - series: 'ticketpager_worker_restarts_total{worker="scheduler", reason="crash", pod="a"}'
        values: '0 1 2 3 3 3'
    alert_rule_test:
      - eval_time: 3m
        alertname: TicketpagerDeadLetters
        exp_alerts:
          - exp_labels: {severity: critical}
      - eval_time: 4m
        alertname: TicketpagerOutboxStuck
        exp_alerts: []
      - eval_time: 12m
        alertname: TicketpagerOutboxStuck
        exp_alerts:
          - exp_labels: {severity: critical}
      - eval_time: 20m
        alertname: TicketpagerWebhookRejections
        exp_alerts:
          - exp_labels: {severity: warning, source: jira}
          - exp_labels: {severity: warning, source: unknown}
      - eval_time: 9m
        alertname: TicketpagerWorkerDatabaseUnavailable
        exp_alerts: []
      - eval_time: 12m
        alertname: TicketpagerWorkerDatabaseUnavailable
        exp_alerts:
          - exp_labels: {severity: critical, worker: delivery}
      - eval_time: 2m
        alertname: TicketpagerWorkerCrashing
        exp_alerts: []
      - eval_time: 4m
        alertname: TicketpagerWorkerCrashing
        exp_alerts:
          - exp_labels: {severity: warning, worker: scheduler}
"""


def test_promtool_fires_the_alerts_as_documented(promtool: str, tmp_path: Path) -> None:
    """A dead letter that both replicas report is one alert; a stuck outbox alerts once it has been over
    300 s for 5 m, not before; half of a source's webhooks rejected for 10 m alerts for that source, and so do
    webhooks to a connection name that is not configured (source "unknown", a vendor pointed at a mistyped URL); a
    database away for 3 minutes (the engine restarting every second) does not page, for 20 minutes (delivery,
    retrying once a minute, as a pool's or a connection's timeout makes it) it does; a worker's third crash within
    15 minutes warns."""
    write_rules(tmp_path / "ticketpager.rules.yaml", annotations=False)
    tests = tmp_path / "tests.yaml"
    tests.write_text(PROMTOOL_TESTS)
    out = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
