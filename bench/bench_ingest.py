"""Webhook ingest of ``ticketpager serve`` (SQLite) vs a bare Starlette endpoint, and end-to-end latency.

Run from the repository root:  python -m bench.bench_ingest [--seconds 10] [--connections 32]

1. Baseline: ``bench/bare_app.py`` (reads the body, answers 202) on uvicorn, same flags as serve.
   Second baseline, for context: ``bench/ceiling_app.py``, the bare minimum of a *durable* endpoint (raw
   body group-committed to SQLite with the stdlib driver), i.e. what this machine allows in this run.
2. ticketpager: ``ticketpager serve --dry-run`` on a fresh SQLite file, signed Jira webhooks (HMAC
   verified, parsed, normalized, durably group-committed before the 202), every request a new change.
3. End to end: ``serve`` sending to a local mock PagerDuty; webhooks at a steady rate; time from the
   POST to the mock's 202 for each triggered incident.
Both servers run one uvicorn worker; the load generator shares the same cores (see bench/loadgen.py).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import loadgen

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-webhook-secret"
RULES = """
version: 1
rules:
  - name: bench-ops-highest
    source: jira
    when: {project: OPS, priority: Highest}
    trigger:
      routing_key: benchbenchbenchbenchbenchbench00
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, path: str = "/healthz", timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)  # noqa: S310 - loopback
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not become ready")


def jira_payload(n: int) -> bytes:
    updated = datetime(2026, 11, 27, 9, 0, tzinfo=UTC) + timedelta(milliseconds=n)
    stamp = updated.strftime("%Y-%m-%dT%H:%M:%S.") + f"{updated.microsecond // 1000:03d}+0000"
    issue = {
        "id": str(100000 + n),
        "key": f"OPS-{n}",
        "self": f"https://acme.atlassian.net/rest/api/2/issue/{100000 + n}",
        "fields": {
            "summary": f"Checkout API errors in eu-west ({n})",
            "description": "Customers see HTTP 502 on /checkout. " * 20,
            "issuetype": {"id": "10004", "name": "Incident"},
            "project": {"id": "10000", "key": "OPS", "name": "Operations"},
            "priority": {"id": "1", "name": "Highest"},
            "status": {"id": "1", "name": "To Do", "statusCategory": {"id": 2, "key": "new", "name": "To Do"}},
            "labels": ["customer-impact"],
            "components": [{"id": "10100", "name": "checkout"}],
            "assignee": None,
            "reporter": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Sam Support"},
            "created": stamp,
            "updated": stamp,
        },
    }
    return json.dumps({"timestamp": 1790503391123, "webhookEvent": "jira:issue_created", "issue": issue}).encode()


def jira_headers(n: int, body: bytes) -> dict[str, str]:
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature": f"sha256={sig}", "X-Atlassian-Webhook-Identifier": f"bench-{n}"}


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def serve_env(tmp: Path, port: int, extra: dict[str, str]) -> dict[str, str]:
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    env = dict(os.environ)
    env.update(
        {
            "TICKETPAGER_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
            "TICKETPAGER_RULES_PATH": str(rules),
            "TICKETPAGER_JIRA__WEBHOOK_SECRETS": SECRET,
            "TICKETPAGER_PORT": str(port),
            "TICKETPAGER_LOG_LEVEL": "WARNING",
        }
    )
    env.update(extra)
    return env


def measure(port: int, requests: list[bytes], seconds: float, connections: int) -> loadgen.LoadResult:
    loadgen.run("127.0.0.1", port, requests[:2000], seconds=min(2.0, seconds), connections=connections)  # warm up
    return loadgen.run("127.0.0.1", port, requests[2000:], seconds=seconds, connections=connections)


def baseline(app: str, bodies: list[bytes], seconds: float, connections: int) -> loadgen.LoadResult:
    port = free_port()
    reqs = [loadgen.build_request("127.0.0.1", port, "/webhooks/jira", b, {}) for b in bodies]
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(
            [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning", "--no-access-log"],
            {**os.environ, "CEILING_DB": str(Path(tmp) / "ceiling.db")},
        )
        try:
            time.sleep(1.5)  # the baselines have no health route; uvicorn is up well within this
            return measure(port, reqs, seconds, connections)
        finally:
            stop(proc)


def ingest(seconds: float, connections: int, count: int) -> tuple[loadgen.LoadResult, ...]:
    bodies = [jira_payload(n) for n in range(count)]
    tp_port = free_port()
    tp_reqs = [
        loadgen.build_request("127.0.0.1", tp_port, "/webhooks/jira", b, jira_headers(n, b))
        for n, b in enumerate(bodies)
    ]
    base = baseline("bench.bare_app:app", bodies, seconds, connections)
    ceiling = baseline("bench.ceiling_app:app", bodies, seconds, connections)
    with tempfile.TemporaryDirectory() as tmp:
        env = serve_env(Path(tmp), tp_port, {"TICKETPAGER_DRY_RUN": "true"})
        proc = start([sys.executable, "-m", "sync.cli", "serve"], env)
        try:
            wait_ready(tp_port)
            ours = measure(tp_port, tp_reqs, seconds, connections)
        finally:
            stop(proc)
    return base, ceiling, ours


def end_to_end(count: int, rate: float) -> list[float]:
    sys.path.insert(0, str(ROOT))
    from tests.fakes.pagerduty_server import MockPagerDuty

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, MockPagerDuty() as pd:
        env = serve_env(
            Path(tmp),
            port,
            {
                "TICKETPAGER_PAGERDUTY__EVENTS_URL": pd.url,
                "TICKETPAGER_ENGINE__IDLE_SECONDS": "0.05",
                # one routing key for every incident here: lift the 120/min spacing, which is not measured
                "TICKETPAGER_PAGERDUTY__RATE_LIMIT_PER_MINUTE": "1000000",
            },
        )
        proc = start([sys.executable, "-m", "sync.cli", "serve"], env)
        sent: dict[str, float] = {}
        try:
            wait_ready(port)
            for n in range(count):
                body = jira_payload(900000 + n)
                req = urllib.request.Request(  # noqa: S310 - loopback
                    f"http://127.0.0.1:{port}/webhooks/jira",
                    data=body,
                    method="POST",
                    headers={"Content-Type": "application/json", **jira_headers(900000 + n, body)},
                )
                sent[str(100000 + 900000 + n)] = time.perf_counter()
                urllib.request.urlopen(req, timeout=10)  # noqa: S310
                time.sleep(1 / rate)
            deadline = time.time() + 30
            while len(pd.events) < count and time.time() < deadline:
                time.sleep(0.05)
        finally:
            stop(proc)
        latencies = []
        for event, arrived in zip(pd.events, pd.arrivals, strict=True):
            ticket_id = event["dedup_key"].split("/")[2]
            latencies.append((arrived - sent[ticket_id]) * 1000)
        return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--e2e-count", type=int, default=200)
    parser.add_argument("--e2e-rate", type=float, default=50.0)
    args = parser.parse_args()
    count = int(args.seconds * 25000) + 4000
    base, ceiling, ours = ingest(args.seconds, args.connections, count)
    print(f"ingest, {args.connections} connections, {args.seconds:.0f} s, one uvicorn worker each")
    print(f"{'':36}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    rows = (
        ("bare Starlette endpoint", base),
        ("durable minimum (ceiling_app.py)", ceiling),
        ("ticketpager serve (SQLite)", ours),
    )
    for name, r in rows:
        print(f"{name:36}{r.rps:>10.0f}{r.pct(0.5):>10.2f}{r.pct(0.99):>10.2f}{r.errors:>10}")
    print(f"ratio ticketpager / bare: {ours.rps / base.rps:.2f}  (goal >= 0.50, p99 < 25 ms)")
    print(
        f"ratio durable minimum / bare: {ceiling.rps / base.rps:.2f}; "
        f"ticketpager / durable minimum: {ours.rps / ceiling.rps:.2f}"
    )
    lat = end_to_end(args.e2e_count, args.e2e_rate)
    if lat:
        lat.sort()
        print(
            f"end to end webhook -> mock PagerDuty 202, {len(lat)} incidents at {args.e2e_rate:.0f}/s: "
            f"p50 {statistics.median(lat):.1f} ms, p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f} ms, "
            f"max {lat[-1]:.1f} ms"
        )
    else:
        print("end to end: no events arrived")


if __name__ == "__main__":
    main()
