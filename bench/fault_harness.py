"""Fault and load harness: 2-3 ``ticketpager serve`` replicas on one PostgreSQL, broken on purpose.

Run from the repository root (PostgreSQL from ``TICKETPAGER_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``)::

    python -m bench.fault_harness --seconds 30 --replicas 3

What it does (issue 7, section 2):

* a fresh schema in the local PostgreSQL shared by every replica, a mock PagerDuty
  (:class:`tests.fakes.pagerduty_server.MockPagerDuty`) and a rule paging Jira project OPS priority Highest;
* bounded senders play Jira: each ticket goes created → a few updates → done through signed webhooks
  (``X-Hub-Signature: sha256=…``, a unique ``X-Atlassian-Webhook-Identifier`` per delivery), plus
  duplicate deliveries (same identifier, another replica) and out-of-order ones (an older version
  re-sent under a new identifier after a newer one), spread across replicas. A POST that fails
  (connection refused, reset, 5xx) is retried against another replica with the same identifier, like a
  vendor would, and recorded;
* Zendesk trigger webhooks (issue 13, item 3), signed as Zendesk signs them: a few tickets are paged and
  solved, then their first request is replayed byte for byte with a new ``X-Zendesk-Webhook-Invocation-Id``
  (it must be stored as a duplicate and page nobody); pairs of one minute arrive out of order (nobody paged);
* meanwhile: SIGKILL a replica while it is sending (the mock PagerDuty slowed for a moment so its delivery
  workers hold claimed rows in flight) and restart it, ``--kills`` times (one replica after another), and
  measure the **time to recovery**: from the SIGKILL until every outbox row the killed replica had claimed
  is sent by another (the heartbeat takeover, ``TICKETPAGER_ENGINE__REPLICA_TIMEOUT_SECONDS``; goal: p99
  ≤ 15 s); then restart PostgreSQL once (``pg_ctlcluster``), make the mock PagerDuty answer 500s, then 429
  with ``Retry-After``;
* and all along, hostile connections at the HTTP edge (``bench/edge_attack.py``): header floods (64 MiB of
  an unfinished header each) and slowloris (a header line or a body byte per interval, or nothing), with the
  replicas' RSS sampled from /proc: the peak is the memory bound, reported next to the webhooks/s held;
* then waits (bounded) for the outbox to drain and checks per ticket that PagerDuty got exactly one
  trigger then one resolve, same dedup key and routing key. PagerDuty dedups a repeated trigger/resolve
  on one dedup key, so a raw re-send after a crash (at-least-once) is reported as a "redelivery after
  crash"; a *duplicate* is a repeat with a visible effect (a trigger after the resolve, a second incident).

Exit status 0 only if nothing was lost, duplicated or reordered, every accepted webhook was stored and the
recovery p99 met the goal.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``tests.fakes`` when run as a script from elsewhere
    sys.path.insert(0, str(ROOT))

from bench.edge_attack import EdgeAttack, EdgeReport  # noqa: E402
from tests.fakes.pagerduty_server import MockPagerDuty  # noqa: E402

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "fault-harness-webhook-secret"
ROUTING_KEY = "faultharnessroutingkey0000000001"  # 32 characters, like a PagerDuty integration key
RULE = "ops-highest"
RULES = """
version: 1
rules:
  - name: ops-highest
    description: Highest-priority OPS issues page the platform on-call; done resolves.
    source: jira
    when: {project: OPS, priority: Highest}
    trigger:
      routing_key: ${TP_HARNESS_ROUTING_KEY}
      severity: critical
      summary: "[{{ ticket.key }}] {{ ticket.title }}"
    resolve_when: {status_category: done}
  - name: zendesk-urgent
    description: Urgent gold Zendesk tickets (trigger webhooks, replayed during the run) page the same on-call.
    source: zendesk
    when: {priority: urgent, labels: {contains: gold}}
    trigger:
      routing_key: ${TP_HARNESS_ROUTING_KEY}
      severity: critical
      summary: "[Zendesk {{ ticket.key }}] {{ ticket.title }}"
    resolve_when: {status_category: done}
"""
ZENDESK_RULE = "zendesk-urgent"
# https://developer.atlassian.com/cloud/jira/platform/webhooks/#secure-admin-webhooks — HMAC-SHA256 of the body
SIGNATURE_HEADER = "X-Hub-Signature"
# https://developer.atlassian.com/cloud/jira/platform/webhooks/#known-issues — unique per delivery, kept on retry
DELIVERY_HEADER = "X-Atlassian-Webhook-Identifier"
VENDOR_RETRY_SECONDS = 60.0  # how long a "vendor" keeps retrying one delivery before giving up
RETRY_AFTER_SECONDS = "1"  # the mock PagerDuty's Retry-After during the 429 window
#: an outage window stays open until this many sends were answered with its status (at most OUTAGE_MAX_SECONDS)
OUTAGE_MIN_FAILURES = 3
OUTAGE_MAX_SECONDS = 30.0
#: how much longer than ``--seconds`` the load goes on while the faults are not all done yet
FAULTS_GRACE_SECONDS = 60.0
RECOVERY_GOAL_SECONDS = 15.0  # issue 13: p99 of the time from a SIGKILL to its claimed rows sent elsewhere
SLOW_SEND_SECONDS = 0.5  # the mock PagerDuty's latency just before a kill: the victim dies mid-send


@dataclass
class Config:
    seconds: float = 30.0
    replicas: int = 3
    senders: int = 16
    rate: float = 0.0  # webhooks/s offered by all senders together; 0 = as fast as answers come (closed loop)
    updates: int = 3  # updates between created and done
    duplicate_rate: float = 0.15  # chance a delivery is re-sent with the same identifier
    out_of_order_rate: float = 0.15  # chance an older version is re-sent under a new identifier
    kill_replica: bool = True
    kills: int = 2  # SIGKILLs, each of another replica, each after the previous one recovered
    restart_postgres: bool = True
    pagerduty_outage: bool = True
    outage_seconds: float = 3.0  # length of the 500 window, then of the 429 window
    kill_down_seconds: float = 2.0  # how long the killed replica stays down before it is restarted
    claim_seconds: float = 60.0  # the default: a dead replica's rows come back through the heartbeat, not this
    heartbeat_seconds: float = 2.0  # the defaults of engine.heartbeat_seconds / engine.replica_timeout_seconds
    replica_timeout_seconds: float = 10.0
    recovery_timeout: float = 40.0  # give up waiting for one kill's recovery after this (reported as a problem)
    drain_timeout: float = 90.0
    postgres_url: str = field(default_factory=lambda: os.environ.get("TICKETPAGER_TEST_POSTGRES_URL")
                              or DEFAULT_PG_URL)
    seed: int = 7
    zendesk_replays: int = 4  # Zendesk tickets paged, solved, then their first request replayed (0: none)
    edge_attack: bool = True  # header floods and slowloris connections during the load
    attack_floods: int = 4  # connections streaming an endless header at any time
    attack_slow: int = 6  # slowloris connections at any time
    edge_deadline_seconds: float = 2.0  # the replicas' header and body deadlines (TICKETPAGER_HTTP__*)
    rss_bound_mb: float = 192.0  # a replica's RSS must stay under this (deploy/k8s: requests.memory 192Mi)
    keep_logs: bool = False
    logdir: Path | None = None  # where replica logs go (default: a temporary directory)
    log: Callable[[str], None] = print


@dataclass
class Report:
    tickets: int = 0
    tickets_given_up: int = 0
    webhooks_accepted: int = 0
    webhooks_duplicate_sent: int = 0
    webhooks_out_of_order_sent: int = 0
    failed_attempts: dict[str, int] = field(default_factory=dict)
    load_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    expected_events: int = 0
    received_events: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    wrong_routing: int = 0
    redeliveries: int = 0
    drained: bool = False
    backlog_at_end: dict[str, int] = field(default_factory=dict)  # pending changes / outbox when draining began
    drain_seconds: float = 0.0
    stored_missing: int = 0  # webhooks answered 202 whose change is not in the database
    dead_letters: int = 0
    failed_changes: int = 0
    pagerduty_failures: dict[int, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    skipped_faults: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    problem_tickets: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # the stored changes of a few problem tickets
    replica_exit_codes: list[int | None] = field(default_factory=list)
    schema: str = ""
    replica_pids: list[int] = field(default_factory=list)  # every process started, restarts included
    zendesk_paged: list[str] = field(default_factory=list)  # tickets triggered, solved, first request replayed
    zendesk_quiet: list[str] = field(default_factory=list)  # tickets whose same-minute pair arrived out of order
    zendesk_replays: int = 0  # replayed requests answered 202
    zendesk_replays_stored: int = 0  # of those, stored as a new change (must be 0: same signed bytes)
    edge: EdgeReport | None = None  # the edge attack's outcomes and the replicas' peak RSS
    recoveries: list[float] = field(default_factory=list)  # per SIGKILL: seconds until its claimed rows were sent
    rows_in_flight_at_kill: list[int] = field(default_factory=list)  # per SIGKILL: rows the victim had claimed

    @property
    def recovery_p99(self) -> float:
        if not self.recoveries:
            return float("nan")
        ordered = sorted(self.recoveries)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    @property
    def webhooks_per_second(self) -> float:
        return self.webhooks_accepted / self.load_seconds if self.load_seconds else 0.0

    def pct_ms(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000

    @property
    def ok(self) -> bool:
        slow_recovery = bool(self.recoveries) and self.recovery_p99 > RECOVERY_GOAL_SECONDS
        return not (self.lost or self.duplicates or self.out_of_order or self.unexpected or self.wrong_routing
                    or self.stored_missing or self.dead_letters or self.failed_changes or self.tickets_given_up
                    or not self.drained or self.problems or not self.tickets or self.zendesk_replays_stored
                    or slow_recovery)

    def lines(self) -> list[str]:
        fails = ", ".join(f"{k} {v}" for k, v in sorted(self.failed_attempts.items())) or "none"
        pd_fail = ", ".join(f"{k} x{v}" for k, v in sorted(self.pagerduty_failures.items())) or "none"
        out = [
            f"tickets: {self.tickets} completed (created -> updates -> done), {self.tickets_given_up} given up",
            f"webhooks: {self.webhooks_accepted} accepted in {self.load_seconds:.1f} s = "
            f"{self.webhooks_per_second:.0f}/s held (incl. {self.webhooks_duplicate_sent} duplicate and "
            f"{self.webhooks_out_of_order_sent} out-of-order re-sends)",
            f"webhook latency (accepted attempts): p50 {self.pct_ms(0.5):.1f} ms, p99 {self.pct_ms(0.99):.1f} ms, "
            f"max {self.pct_ms(1.0):.1f} ms",
            f"webhook attempts retried on another replica: {fails}",
            f"mock PagerDuty answered failures: {pd_fail}",
            f"events: expected {self.expected_events}, received {self.received_events} (202)",
            f"events lost: {self.lost}",
            f"duplicates: {self.duplicates}",
            f"out-of-order: {self.out_of_order}",
            f"unexpected events: {self.unexpected}, wrong routing key: {self.wrong_routing}",
            f"redeliveries after crash (same event re-sent, deduped by PagerDuty): {self.redeliveries}",
            f"webhooks answered 202 but not stored: {self.stored_missing}",
            f"dead letters: {self.dead_letters}, failed changes: {self.failed_changes}",
            f"time to drain: {self.drain_seconds:.1f} s" + ("" if self.drained else " (NOT drained: timed out)")
            + f", backlog when draining began: {self.backlog_at_end}",
            f"replica exit codes at stop: {self.replica_exit_codes}",
            f"zendesk replay: {len(self.zendesk_paged)} tickets paged and solved, then their first request replayed "
            f"(same signature, new invocation id): {self.zendesk_replays} replays answered, "
            f"{self.zendesk_replays_stored} stored as new; {len(self.zendesk_quiet)} same-minute pairs sent out of "
            "order (solve first): must page nobody",
            self.recovery_line(),
        ]
        if self.edge is not None:
            out += self.edge.lines()
        out += [f"fault: {f}" for f in self.faults]
        out += [f"fault skipped: {f}" for f in self.skipped_faults]
        out += [f"PROBLEM: {p}" for p in self.problems]
        out += [f"example: {e}" for e in self.examples[:10]]
        out += self.evidence
        verdict = f"OK (0 lost, 0 duplicated, 0 out of order, recovery p99 {self.recovery_p99:.1f} s)"
        out.append("RESULT: " + (verdict if self.ok else "FAILED"))
        return out

    def recovery_line(self) -> str:
        if not self.recoveries:
            return "time to recovery after SIGKILL: not measured"
        ordered = sorted(self.recoveries)
        return (
            f"time to recovery after SIGKILL ({len(ordered)} kills, {sum(self.rows_in_flight_at_kill)} claimed rows "
            f"in flight): p50 {ordered[len(ordered) // 2]:.1f} s, p99 {self.recovery_p99:.1f} s, "
            f"max {ordered[-1]:.1f} s (goal p99 <= {RECOVERY_GOAL_SECONDS:.0f} s)"
        )


# -- Jira webhooks ------------------------------------------------------------------------------------
def ticket_id(n: int) -> str:
    return str(500000 + n)


def jira_body(n: int, version: int, updates: int, base: datetime) -> bytes:
    """Version ``version`` of ticket ``n``: 0 = created (To Do), 1..updates = edits, updates+1 = Done."""
    updated = base + timedelta(seconds=version)
    created = base.strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    stamp = updated.strftime("%Y-%m-%dT%H:%M:%S.") + f"{updated.microsecond // 1000:03d}+0000"
    done = version == updates + 1
    status = (
        {"id": "10001", "name": "Done", "statusCategory": {"id": 3, "key": "done", "name": "Done"}}
        if done
        else {"id": "1", "name": "To Do", "statusCategory": {"id": 2, "key": "new", "name": "To Do"}}
    )
    title = f"Checkout API errors in eu-west ({n})" + (f", update {min(version, updates)}" if version else "")
    issue = {
        "id": ticket_id(n),
        "key": f"OPS-{n}",
        "self": f"https://acme.atlassian.net/rest/api/2/issue/{ticket_id(n)}",
        "fields": {
            "summary": title,
            "description": "Customers see HTTP 502 on /checkout.",
            "issuetype": {"id": "10004", "name": "Incident"},
            "project": {"id": "10000", "key": "OPS", "name": "Operations"},
            "priority": {"id": "1", "name": "Highest"},
            "status": status,
            "resolution": {"id": "10000", "name": "Done"} if done else None,
            "labels": ["customer-impact"] + [f"u{i}" for i in range(1, min(version, updates) + 1)],
            "assignee": None,
            "reporter": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Sam Support"},
            "created": created,
            "updated": stamp,
        },
    }
    payload: dict[str, Any] = {
        "timestamp": int(updated.timestamp() * 1000),
        "webhookEvent": "jira:issue_created" if version == 0 else "jira:issue_updated",
        "issue": issue,
    }
    if done:
        payload["changelog"] = {"id": f"{n}{version}", "items": [
            {"field": "status", "fieldtype": "jira", "from": "1", "fromString": "To Do", "to": "10001",
             "toString": "Done"}]}
    elif version:
        payload["changelog"] = {"id": f"{n}{version}", "items": [
            {"field": "summary", "fieldtype": "jira", "from": None, "fromString": None, "to": None,
             "toString": title}]}
    return json.dumps(payload).encode()


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


# -- PostgreSQL -----------------------------------------------------------------------------------------
def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def schema_url(base: str, schema: str) -> str:
    """``base`` with ``search_path`` set to ``schema`` (as tests/conftest.py does)."""
    sep = "&" if "?" in base else "?"
    return f"{sqlalchemy_url(base)}{sep}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_schema(base: str) -> Iterator[str]:
    """Create a uniquely named schema, yield its name, always drop it."""
    name = f"tp_fault_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sqlalchemy_url(base), poolclass=NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        yield name
    finally:
        for attempt in range(30):  # the server may be restarting
            try:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
                break
            except Exception:  # noqa: BLE001
                if attempt == 29:
                    raise
                time.sleep(1)
        admin.dispose()


def schema_exists(base: str, name: str) -> bool:
    admin = create_engine(sqlalchemy_url(base), poolclass=NullPool)
    try:
        with admin.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :n"),
                                 {"n": name}).first()
        return found is not None
    finally:
        admin.dispose()


def find_cluster(url: str) -> tuple[list[str] | None, str]:
    """The ``pg_ctlcluster … restart`` command for the local cluster serving ``url``, or why there is none."""
    parsed = urllib.parse.urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1", None):
        return None, f"PostgreSQL at {parsed.hostname} is not local"
    if not shutil.which("pg_ctlcluster") or not shutil.which("pg_lsclusters"):
        return None, "pg_ctlcluster is not available on this machine"
    port = parsed.port or 5432
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30)
    for line in listing.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == str(port):
            return ["pg_ctlcluster", "--skip-systemctl-redirect", parts[0], parts[1], "restart"], ""
    return None, f"no local cluster listens on port {port} (pg_lsclusters)"


def db_state(engine: Engine) -> dict[str, int]:
    """Counts the drain check and the report need, from the replicas' shared schema."""
    with engine.connect() as conn:
        out = {f"changes_{s}": int(c) for s, c in conn.execute(
            text("SELECT status, count(*) FROM changes GROUP BY status"))}
        out |= {f"outbox_{s}": int(c) for s, c in conn.execute(
            text("SELECT status, count(*) FROM outbox GROUP BY status"))}
    return out


def change_history(engine: Engine, tid: str, source: str = "jira") -> list[str]:
    """One ticket's stored changes in arrival (id) order, with what the engine made of each and when."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT id, delivery_id, ticket_updated, status, received_at, processed_at FROM changes "
            "WHERE source = :s AND ticket_id = :t ORDER BY id"), {"s": source, "t": tid}).all()
    return [
        f"    change {r[0]} {r[1].split('-', 2)[-1]:<14} version {r[2]:%H:%M:%S} -> {r[3]:<12} "
        f"received {r[4]:%H:%M:%S.%f} processed {r[5] and f'{r[5]:%H:%M:%S.%f}'}"
        for r in rows
    ]


def claimed_by_pid(engine: Engine, pid: int) -> list[int]:
    """Pending outbox rows claimed by the process ``pid`` (``claimed_by`` = ``<host>-<pid>-<hex6>/<worker>``)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, claimed_by FROM outbox WHERE status = 'pending' "
                                     "AND claimed_until IS NOT NULL AND claimed_by LIKE :p"),
                            {"p": f"%-{pid}-%"}).all()
    return [int(r[0]) for r in rows if re.search(rf"-{pid}-[0-9a-f]{{6}}/", str(r[1]))]


def pending_among(engine: Engine, ids: list[int]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'pending' AND id = ANY(:ids)"),
                                {"ids": ids}).scalar_one())


def retry_db(query: Callable[[], Any], attempts: int = 60) -> Any:
    """``query`` again every 0.5 s while the database is unavailable (PostgreSQL may be restarting)."""
    for attempt in range(attempts):
        try:
            return query()
        except Exception:  # noqa: BLE001
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    return None  # pragma: no cover - the loop returns or raises


def stored_deliveries(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(text("SELECT delivery_id FROM changes WHERE source = 'jira'"))}


# -- replicas ---------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One ``ticketpager serve`` process on a fixed port (restarts reuse it, like a pod behind a Service).
    Output goes to a log file: a pipe nobody reads would block the replica once it fills."""

    def __init__(self, index: int, env: dict[str, str], logdir: Path) -> None:
        self.index = index
        self.port = free_port()
        self.env = {**env, "TICKETPAGER_PORT": str(self.port)}
        self.logfile = logdir / f"replica-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.incarnations = 0
        self.pids: list[int] = []

    def spawn(self) -> None:
        self._close_log()
        self._log = self.logfile.open("ab")
        self.incarnations += 1
        self._log.write(f"--- incarnation {self.incarnations} ---\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ticketpager.cli", "serve"], env=self.env, cwd=ROOT,
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pids.append(self.proc.pid)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.index} exited at start; see {self.logfile}:\n{self.tail()}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        raise RuntimeError(f"replica {self.index} did not become healthy in {timeout:.0f} s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 25 s. Returns the exit code of the graceful stop."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return self.proc.returncode

    def tail(self, lines: int = 30, errors_only: bool = False) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text_ = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        if errors_only:
            text_ = [line for line in text_ if " ERROR " in line or " CRITICAL " in line or "Error" in line]
        return "\n".join(text_[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def replica_env(db_url: str, rules: Path, pd_url: str, cfg: Config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETPAGER_")}
    env.update({
        "TICKETPAGER_DATABASE_URL": db_url,
        "TICKETPAGER_RULES_PATH": str(rules),
        "TICKETPAGER_JIRA__WEBHOOK_SECRETS": SECRET,
        "TICKETPAGER_ZENDESK__ENABLED": "true",  # webhook-only: the signed trigger body is all there is
        "TICKETPAGER_ZENDESK__WEBHOOK_SECRETS": SECRET,
        "TICKETPAGER_PAGERDUTY__EVENTS_URL": pd_url,
        "TICKETPAGER_PAGERDUTY__BACKOFF_BASE_SECONDS": "0.1",
        "TICKETPAGER_PAGERDUTY__BACKOFF_CAP_SECONDS": "1",
        "TICKETPAGER_PAGERDUTY__TIMEOUT_SECONDS": "3",
        "TICKETPAGER_PAGERDUTY__MAX_ATTEMPTS": "100000",  # with a 0.1 s base, 12 tries last ~5 s: the cap is time
        "TICKETPAGER_PAGERDUTY__RATE_LIMIT_PER_MINUTE": "100000",  # not a rate-limit test
        "TICKETPAGER_ENGINE__CLAIM_SECONDS": str(cfg.claim_seconds),
        "TICKETPAGER_ENGINE__HEARTBEAT_SECONDS": str(cfg.heartbeat_seconds),
        "TICKETPAGER_ENGINE__REPLICA_TIMEOUT_SECONDS": str(cfg.replica_timeout_seconds),
        "TICKETPAGER_ENGINE__IDLE_SECONDS": "0.05",
        "TICKETPAGER_LOG_LEVEL": "WARNING",
        "TICKETPAGER_HTTP__HEADER_TIMEOUT_SECONDS": str(cfg.edge_deadline_seconds),
        "TICKETPAGER_HTTP__BODY_TIMEOUT_SECONDS": str(cfg.edge_deadline_seconds),
        "TP_HARNESS_ROUTING_KEY": ROUTING_KEY,
    })
    return env


# -- the vendor: sends webhooks, retries failed deliveries on another replica ---------------------------
class Pacer:
    """Spaces new deliveries of all senders to ``rate`` per second (0: no pacing). Retries are not paced."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.lock = threading.Lock()
        self.next_at = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(self.next_at, now)
            self.next_at = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class Vendor:
    """What Jira does: POST each delivery; on refused / reset / timeout / 5xx retry it, same identifier,
    against the next replica, with a short backoff, for up to :data:`VENDOR_RETRY_SECONDS`."""

    def __init__(self, replicas: list[Replica], pacer: Pacer | None = None) -> None:
        self.replicas = replicas
        self.pacer = pacer or Pacer(0)
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.failed: dict[str, int] = {}
        self.accepted: set[str] = set()
        #: identifier -> the delivery id a tree that dedupes on the signed body's digest stores it under
        self.digests: dict[str, str] = {}
        self.accepted_count = 0
        self.local = threading.local()

    def _conn(self, replica: Replica) -> http.client.HTTPConnection:
        conns: dict[int, http.client.HTTPConnection] = self.local.__dict__.setdefault("conns", {})
        if replica.index not in conns:
            conns[replica.index] = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=10)
        return conns[replica.index]

    def _drop(self, replica: Replica) -> None:
        conns: dict[int, http.client.HTTPConnection] = self.local.__dict__.setdefault("conns", {})
        conn = conns.pop(replica.index, None)
        if conn is not None:
            conn.close()

    def close_thread(self) -> None:
        for conn in self.local.__dict__.get("conns", {}).values():
            conn.close()

    def _fail(self, kind: str) -> None:
        with self.lock:
            self.failed[kind] = self.failed.get(kind, 0) + 1

    def deliver(self, body: bytes, identifier: str, start: int) -> bool:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body), DELIVERY_HEADER: identifier}
        self.pacer.wait()
        deadline = time.monotonic() + VENDOR_RETRY_SECONDS
        for attempt in itertools.count():
            replica = self.replicas[(start + attempt) % len(self.replicas)]
            t0 = time.perf_counter()
            try:
                conn = self._conn(replica)
                conn.request("POST", "/webhooks/jira", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except ConnectionRefusedError:
                self._drop(replica)
                self._fail("refused")
                status = 0
            except TimeoutError:
                self._drop(replica)
                self._fail("timeout")
                status = 0
            except (OSError, http.client.HTTPException):
                self._drop(replica)
                self._fail("reset")
                status = 0
            if status == 202:
                with self.lock:
                    self.latencies.append(time.perf_counter() - t0)
                    self.accepted.add(identifier)
                    self.digests[identifier] = "jira:sha256:" + hashlib.sha256(body).hexdigest()
                    self.accepted_count += 1
                return True
            if status:
                self._fail(f"http_{status}")
                if status < 500:  # a 4xx is a harness or ticketpager bug, not a transient fault
                    return False
            if time.monotonic() > deadline:
                return False
            if status or attempt % len(self.replicas) == len(self.replicas) - 1:
                time.sleep(min(0.05 * 2 ** min(attempt, 5), 1.0))
        return False  # pragma: no cover - the loop returns


def send_tickets(vendor: Vendor, cfg: Config, counter: Iterator[int], counter_lock: threading.Lock,
                 sending: Callable[[], bool], base: datetime, run_id: str, worker: int, out: dict[str, Any]) -> None:
    """One sender: ticket after ticket through created → updates → done while ``sending()``."""
    rng = random.Random(cfg.seed * 1000 + worker)
    n_replicas = len(vendor.replicas)
    try:
        while sending():
            with counter_lock:
                n = next(counter)
            versions = [jira_body(n, v, cfg.updates, base) for v in range(cfg.updates + 2)]
            complete = True
            for v, body in enumerate(versions):
                ident = f"{run_id}-{n}-v{v}"
                home = rng.randrange(n_replicas)
                if not vendor.deliver(body, ident, home):
                    complete = False
                    break
                if rng.random() < cfg.duplicate_rate:  # same delivery again, to another replica
                    vendor.deliver(body, ident, home + 1)
                    out["dup"] += 1
                if v and rng.random() < cfg.out_of_order_rate:  # an older version arrives late
                    older = rng.randrange(v)
                    vendor.deliver(versions[older], f"{ident}-late-v{older}", rng.randrange(n_replicas))
                    out["ooo"] += 1
            (out["done"] if complete else out["gave_up"]).append(n)
    finally:
        vendor.close_thread()


# -- Zendesk trigger webhooks, replayed (issue 13, item 3) ---------------------------------------------------
def zendesk_body(tid: str, status: str, updated: datetime) -> bytes:
    """The README's trigger template as Zendesk renders it (``updated_at`` has minute resolution)."""
    return json.dumps({
        "source": "zendesk", "ticket_id": tid, "subject": f"Payments failing ({tid})", "status": status,
        "priority": "urgent", "tags": "gold vip", "updated_at": updated.strftime("%Y-%m-%dT%H:%M:00Z"),
    }).encode()


def zendesk_post(replicas: list[Replica], start: int, body: bytes, stamp: str, invocation: str) -> dict[str, Any]:
    """POST one signed trigger webhook (base64 HMAC of timestamp + body), retried on the next replica like a
    vendor while replicas die or the database restarts; the JSON of the 202."""
    signature = base64.b64encode(hmac.new(SECRET.encode(), stamp.encode() + body, hashlib.sha256).digest())
    headers = {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": signature.decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        "X-Zendesk-Webhook-Invocation-Id": invocation,  # not signed: a replay may carry any value
    }
    deadline = time.monotonic() + VENDOR_RETRY_SECONDS
    attempt = start
    while True:
        replica = replicas[attempt % len(replicas)]
        conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=10)
        try:
            conn.request("POST", "/webhooks/zendesk", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status == 202:
                return dict(json.loads(payload))
            if response.status < 500:
                raise RuntimeError(f"zendesk webhook refused: {response.status} {payload[:200]!r}")
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"zendesk webhook not accepted within {VENDOR_RETRY_SECONDS:.0f} s")
        attempt += 1
        time.sleep(0.2)


class ZendeskReplay(threading.Thread):
    """While the Jira load and the faults run: per ticket, a signed trigger body (new, urgent, gold), then the
    solve a minute later, then the first request again, byte for byte (same timestamp and signature, inside the
    signature window) with a new invocation id, on another replica: one incident, resolved, never reopened.
    And per ticket a pair of one minute (``updated_at`` equal) sent in order but arriving out of order: the
    solve first, then the older "new": nobody is paged."""

    def __init__(self, cfg: Config, replicas: list[Replica], start: float, report: Report) -> None:
        super().__init__(name="zendesk-replay", daemon=True)
        self.cfg, self.replicas, self.start_at, self.report = cfg, replicas, start, report
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def _run(self) -> None:
        cfg, report = self.cfg, self.report
        run_id = uuid.uuid4().hex[:6]
        base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
        gap = cfg.seconds * 0.6 / max(cfg.zendesk_replays, 1)
        for i in range(cfg.zendesk_replays):
            delay = self.start_at + cfg.seconds * 0.15 + i * gap - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            tid = str(700000 + i)
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            opened = zendesk_body(tid, "new", base)
            zendesk_post(self.replicas, i, opened, stamp, f"{run_id}-{tid}-a")
            time.sleep(1.0)
            solved_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            zendesk_post(self.replicas, i + 1, zendesk_body(tid, "solved", base + timedelta(minutes=1)), solved_at,
                         f"{run_id}-{tid}-b")
            report.zendesk_paged.append(tid)
            time.sleep(1.0)
            answer = zendesk_post(self.replicas, i + 2, opened, stamp, f"{run_id}-{tid}-replay")
            report.zendesk_replays += 1
            report.zendesk_replays_stored += int(answer.get("stored", 1))

            quiet = str(800000 + i)  # two updates of one minute, Zendesk's send order kept in the signatures
            first_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            time.sleep(1.1)
            second_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            zendesk_post(self.replicas, i, zendesk_body(quiet, "solved", base), second_at, f"{run_id}-{quiet}-2")
            zendesk_post(self.replicas, i + 1, zendesk_body(quiet, "new", base), first_at, f"{run_id}-{quiet}-1")
            report.zendesk_quiet.append(quiet)


# -- faults -------------------------------------------------------------------------------------------------
class Faults(threading.Thread):
    """Injects the faults at fixed fractions of the load window and logs what it did."""

    def __init__(self, cfg: Config, replicas: list[Replica], pd: MockPagerDuty, start: float,
                 report: Report, engine: Engine) -> None:
        super().__init__(name="faults", daemon=True)
        self.cfg, self.replicas, self.pd, self.start_at, self.report = cfg, replicas, pd, start, report
        self.engine = engine
        self.error: BaseException | None = None

    def note(self, text_: str) -> None:
        line = f"t+{time.monotonic() - self.start_at:5.1f}s {text_}"
        self.report.faults.append(line)
        self.cfg.log(f"  {line}")

    def _outage(self, status: int) -> None:
        """Keep the mock's ``status`` window open for ``outage_seconds`` and until it has answered
        :data:`OUTAGE_MIN_FAILURES` sends with it (a loaded machine may send nothing in the first seconds), at
        most :data:`OUTAGE_MAX_SECONDS`; the verdict then checks the outage really hit deliveries."""
        opened = time.monotonic()
        time.sleep(self.cfg.outage_seconds)
        while (
            self.pd.failed.get(status, 0) < OUTAGE_MIN_FAILURES and time.monotonic() - opened < OUTAGE_MAX_SECONDS
        ):
            time.sleep(0.1)

    def at(self, fraction: float) -> None:
        delay = self.start_at + self.cfg.seconds * fraction - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _kill_and_recover(self, victim: Replica) -> None:
        """SIGKILL ``victim`` mid-send, restart it, and wait until every row it had claimed is sent."""
        cfg = self.cfg
        self.pd.latency_seconds = SLOW_SEND_SECONDS  # every delivery worker is now inside a POST
        time.sleep(SLOW_SEND_SECONDS)
        pid = victim.proc.pid if victim.proc is not None else 0
        victim.kill()
        killed_at = time.monotonic()
        self.pd.latency_seconds = 0.0
        claimed = retry_db(lambda: claimed_by_pid(self.engine, pid))
        self.note(f"SIGKILL replica {victim.index} (port {victim.port}) with {len(claimed)} claimed outbox rows")
        # the restart runs beside the recovery watch: on a loaded machine a restart can take longer than the
        # takeover, and the recovery measured after it would be the restart's time, not the takeover's
        failed: list[BaseException] = []

        def restart() -> None:
            time.sleep(cfg.kill_down_seconds)
            try:
                victim.spawn()
                victim.wait_healthy()
            except BaseException as exc:  # noqa: BLE001 - raised below, in this thread
                failed.append(exc)
                return
            self.note(f"replica {victim.index} restarted and healthy")

        restarter = threading.Thread(target=restart, name="restart", daemon=True)
        restarter.start()
        try:
            self._watch_recovery(victim, claimed, killed_at)
        finally:
            restarter.join()
        if failed:
            raise failed[0]

    def _watch_recovery(self, victim: Replica, claimed: list[int], killed_at: float) -> None:
        cfg = self.cfg
        if not claimed:
            self.report.problems.append(f"replica {victim.index} held no claimed rows when killed: nothing measured")
            return
        while time.monotonic() - killed_at < cfg.recovery_timeout:
            if not retry_db(lambda: pending_among(self.engine, claimed)):
                recovery = time.monotonic() - killed_at
                self.report.recoveries.append(recovery)
                self.report.rows_in_flight_at_kill.append(len(claimed))
                self.note(f"replica {victim.index}'s {len(claimed)} claimed rows sent by others: "
                          f"recovered {recovery:.1f} s after the SIGKILL")
                return
            time.sleep(0.1)
        self.report.problems.append(f"replica {victim.index}'s claimed rows not sent {cfg.recovery_timeout:.0f} s "
                                    "after its SIGKILL")

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def _run(self) -> None:
        cfg = self.cfg
        if cfg.kill_replica:
            self.at(0.1)
            for kill in range(cfg.kills):
                self._kill_and_recover(self.replicas[len(self.replicas) - 1 - kill % len(self.replicas)])
        else:
            self.report.skipped_faults.append("SIGKILL of a replica (disabled)")
        if cfg.restart_postgres:
            self.at(0.4)
            command, why = find_cluster(cfg.postgres_url)
            if command is None:
                self.report.skipped_faults.append(f"PostgreSQL restart: {why}")
                self.cfg.log(f"  PostgreSQL restart skipped: {why}")
            else:
                t0 = time.monotonic()
                done = subprocess.run(command, capture_output=True, text=True, timeout=120)
                if done.returncode:
                    self.report.problems.append(f"{' '.join(command)} failed: {done.stderr.strip()[:300]}")
                self.note(f"PostgreSQL restarted ({' '.join(command[2:4])}) in {time.monotonic() - t0:.1f} s")
        else:
            self.report.skipped_faults.append("PostgreSQL restart (disabled)")
        if cfg.pagerduty_outage:
            self.at(0.6)
            self.pd.fail_for(OUTAGE_MAX_SECONDS, 500)
            self.note(f"mock PagerDuty answers 500 for {cfg.outage_seconds:.0f} s")
            self._outage(500)
            self.pd.fail_for(OUTAGE_MAX_SECONDS, 429, {"Retry-After": RETRY_AFTER_SECONDS})
            self.note(f"mock PagerDuty answers 429 Retry-After {RETRY_AFTER_SECONDS} for {cfg.outage_seconds:.0f} s")
            self._outage(429)
            self.pd.fail_for(0, 200)
            self.note("mock PagerDuty healthy again")
        else:
            self.report.skipped_faults.append("PagerDuty 500/429 outage (disabled)")


# -- the verdict --------------------------------------------------------------------------------------------
DEDUP_KEY = re.compile(
    r"^ticketpager/(?P<source>jira|zendesk)/(?P<ticket>[^/]+)/(?P<rule>[^/]+)/(?P<generation>\d+)$"
)


def check_events(events: list[dict[str, Any]], tickets: list[int], report: Report) -> None:
    """Per ticket: exactly trigger then resolve, one dedup key (generation 1), the rule's routing key.

    Consecutive repeats of one action on one dedup key are PagerDuty no-ops (at-least-once re-sends
    after a crash): counted as redeliveries. Anything else that differs is lost, duplicated or reordered.
    The Zendesk tickets of :class:`ZendeskReplay` count the same way; a page for one of its out-of-order
    pairs (the ticket was solved before it arrived) is a duplicate.
    """
    expected = {f"jira/{ticket_id(n)}": RULE for n in tickets}
    expected |= {f"zendesk/{tid}": ZENDESK_RULE for tid in report.zendesk_paged}
    quiet = {f"zendesk/{tid}" for tid in report.zendesk_quiet}
    per_ticket: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        match = DEDUP_KEY.match(str(event.get("dedup_key", "")))
        key = f"{match['source']}/{match['ticket']}" if match else ""
        if key in quiet:
            report.duplicates += 1
            report.examples.append(f"{key}: {event.get('event_action')} {event.get('dedup_key')} though the "
                                   "ticket was solved before its older delivery arrived")
            continue
        if key not in expected:
            report.unexpected += 1
            report.examples.append(f"unexpected event {event.get('event_action')} {event.get('dedup_key')}")
            continue
        per_ticket.setdefault(key, []).append(event)
    report.expected_events = 2 * len(expected)
    report.received_events = len(events)
    for tid, rule in sorted(expected.items()):
        got = per_ticket.get(tid, [])
        actions = [e["event_action"] for e in got]
        keys = sorted({e["dedup_key"] for e in got})
        report.unexpected += sum(1 for a in actions if a not in ("trigger", "resolve"))
        report.wrong_routing += sum(1 for e in got if e.get("routing_key") != ROUTING_KEY)
        flow = [a for a in actions if a in ("trigger", "resolve")]
        collapsed = [a for i, a in enumerate(flow) if i == 0 or flow[i - 1] != a]
        report.redeliveries += len(flow) - len(collapsed)
        missing = [a for a in ("trigger", "resolve") if a not in collapsed]
        if missing:
            report.lost += len(missing)
            report.examples.append(f"ticket {tid}: {'+'.join(missing)} lost; PagerDuty got {actions}")
            report.problem_tickets.append(tid)
        if any(not k.endswith(f"/{rule}/1") for k in keys) or len(collapsed) > 2:
            report.duplicates += max(len(collapsed) - 2, 1)
            report.examples.append(f"ticket {tid}: duplicate; PagerDuty got {actions} on {keys}")
            report.problem_tickets.append(tid)
        elif collapsed == ["resolve", "trigger"]:
            report.out_of_order += 1
            report.examples.append(f"ticket {tid}: out of order; PagerDuty got {actions}")
            report.problem_tickets.append(tid)


def check_edge(cfg: Config, edge: EdgeReport, report: Report) -> None:
    """Every flood refused, every slowloris cut off near its deadline, RSS under the bound."""
    if edge.floods.get("never refused"):
        report.problems.append(f"{edge.floods['never refused']} header flood(s) of 64 MiB were never refused")
    slack = 3.0  # the deadline is armed at connect; a loaded machine answers late
    late = [s for s in edge.slowloris_cut_seconds if s > cfg.edge_deadline_seconds + slack]
    if late:
        report.problems.append(f"{len(late)} slowloris connection(s) lasted up to {max(late):.1f} s "
                               f"(deadline {cfg.edge_deadline_seconds:.0f} s)")
    if not edge.slowloris_cut_seconds or not edge.floods:
        report.problems.append("the edge attack never got through to a replica")
    if edge.rss_peak_mb > cfg.rss_bound_mb:
        report.problems.append(f"replica RSS peaked at {edge.rss_peak_mb:.0f} MiB (bound {cfg.rss_bound_mb:.0f})")


# -- the run -------------------------------------------------------------------------------------------------
def run(cfg: Config) -> Report:
    """Start everything, load and break it, drain, check, clean up. Never leaves processes or schemas."""
    report = Report()
    log = cfg.log
    logdir = cfg.logdir or Path(tempfile.mkdtemp(prefix="tp-fault-"))
    logdir.mkdir(parents=True, exist_ok=True)
    replicas: list[Replica] = []
    try:
        with fresh_schema(cfg.postgres_url) as schema, MockPagerDuty() as pd:
            report.schema = schema
            db_url = schema_url(cfg.postgres_url, schema)
            rules = logdir / "rules.yaml"
            rules.write_text(RULES)
            env = replica_env(db_url, rules, pd.url, cfg)
            replicas = [Replica(i, env, logdir) for i in range(cfg.replicas)]
            log(f"schema {schema}; {cfg.replicas} replicas on ports {[r.port for r in replicas]}; "
                f"mock PagerDuty {pd.url}; logs {logdir}")
            for r in replicas:  # all at once: migrations must be safe when replicas start together
                r.spawn()
            for r in replicas:
                r.wait_healthy()
            engine = create_engine(db_url, poolclass=NullPool)
            try:
                _load_and_check(cfg, replicas, pd, engine, report)
            finally:
                engine.dispose()
                report.replica_exit_codes = [r.stop() for r in replicas]
    finally:
        for r in replicas:  # an exception above must not leave a replica running
            if r.alive():
                r.kill()
            r.stop()
            report.replica_pids += r.pids
        if not report.ok and replicas:
            for r in replicas:
                log(f"--- last errors of replica {r.index} ({r.logfile}) ---\n{r.tail(10, errors_only=True)}")
        if cfg.keep_logs or cfg.logdir is not None or not report.ok:
            log(f"replica logs kept in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    return report


def _load_and_check(cfg: Config, replicas: list[Replica], pd: MockPagerDuty, engine: Engine,
                    report: Report) -> None:
    vendor = Vendor(replicas, Pacer(cfg.rate))
    run_id = uuid.uuid4().hex[:8]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    counter, counter_lock = itertools.count(), threading.Lock()
    out: dict[str, Any] = {"done": [], "gave_up": [], "dup": 0, "ooo": 0}
    start = time.monotonic()
    until = start + cfg.seconds
    log = cfg.log
    offered = f"{cfg.rate:.0f} webhooks/s offered" if cfg.rate else "closed loop"
    log(f"load: {cfg.senders} senders for {cfg.seconds:.0f} s, {offered}")
    faults = Faults(cfg, replicas, pd, start, report, engine)
    faults.start()
    hard_stop = until + FAULTS_GRACE_SECONDS

    def sending() -> bool:
        """The load runs for ``cfg.seconds`` and on while the faults are not all done (a slow PostgreSQL restart
        on a loaded machine must not leave the PagerDuty outage after the last send): at most the grace longer."""
        now = time.monotonic()
        return now < until or (faults.is_alive() and now < hard_stop)

    replay = ZendeskReplay(cfg, replicas, start, report)
    replay.start()
    attack = None
    if cfg.edge_attack:
        attack = EdgeAttack(lambda: [r.port for r in replicas],
                            lambda: [r.proc.pid for r in replicas if r.proc is not None and r.alive()],
                            until, floods=cfg.attack_floods, slow=cfg.attack_slow)
        attack.start()
        log(f"edge attack: {cfg.attack_floods} header floods, {cfg.attack_slow} slowloris connections")
    else:
        report.skipped_faults.append("edge attack (disabled)")
    senders = [
        threading.Thread(target=send_tickets, name=f"sender-{i}", daemon=True,
                         args=(vendor, cfg, counter, counter_lock, sending, base, run_id, i, out))
        for i in range(cfg.senders)
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join(timeout=cfg.seconds + FAULTS_GRACE_SECONDS + VENDOR_RETRY_SECONDS * (cfg.updates + 4) + 30)
    report.load_seconds = time.monotonic() - start
    faults.join(timeout=180)
    if attack is not None:
        attack.join(timeout=30)
        report.edge = attack.report
        check_edge(cfg, attack.report, report)
    if faults.error is not None:
        report.problems.append(f"fault injection failed: {faults.error!r}")
    replay.join(timeout=180)
    if replay.error is not None or replay.is_alive():
        report.problems.append(f"zendesk replay failed: {replay.error!r}")
    if any(t.is_alive() for t in senders):
        report.problems.append("a sender did not finish")
    for r in replicas:
        if not r.alive():
            report.problems.append(f"replica {r.index} died on its own (exit {r.proc and r.proc.returncode})")

    # drain: every change processed and no outbox row pending (a crashed claim expires and is re-sent)
    drain_start = time.monotonic()
    log(f"load done after {report.load_seconds:.1f} s; draining (at most {cfg.drain_timeout:.0f} s)")
    state: dict[str, int] = {}
    next_note = drain_start
    while time.monotonic() - drain_start < cfg.drain_timeout:
        try:
            state = db_state(engine)
        except Exception:  # noqa: BLE001 - keep waiting while the database is unavailable
            state = {"changes_pending": -1}
        pending = {k: state.get(k, 0) for k in ("changes_pending", "outbox_pending")}
        if not report.backlog_at_end:
            report.backlog_at_end = pending
        if not any(pending.values()):
            report.drained = True
            break
        if time.monotonic() >= next_note:
            log(f"  draining: {pending}")
            next_note += 5
        time.sleep(0.2)
    report.drain_seconds = time.monotonic() - drain_start
    if not report.drained:
        report.problems.append(f"outbox did not drain in {cfg.drain_timeout:.0f} s: {state}")

    with vendor.lock:
        accepted = set(vendor.accepted)
        digests = dict(vendor.digests)
        report.webhooks_accepted = vendor.accepted_count
        report.latencies = list(vendor.latencies)
        report.failed_attempts = dict(vendor.failed)
    report.webhooks_duplicate_sent, report.webhooks_out_of_order_sent = out["dup"], out["ooo"]
    report.tickets, report.tickets_given_up = len(out["done"]), len(out["gave_up"])
    stored = stored_deliveries(engine)
    # stored under the unsigned identifier (trees before 8a04d9a) or the signed body's digest (since)
    missing = sorted(i for i in accepted if f"jira:{i}" not in stored and digests.get(i) not in stored)
    report.stored_missing = len(missing)
    report.examples += [f"webhook {i} answered 202 but not stored" for i in missing[:5]]
    state = db_state(engine)
    report.dead_letters = state.get("outbox_dead", 0)
    report.failed_changes = state.get("changes_failed", 0)
    report.pagerduty_failures = dict(pd.failed)
    check_events(list(pd.events), out["done"], report)
    for key in report.problem_tickets[:3]:
        source, _, tid = key.partition("/")
        report.evidence.append(f"evidence: ticket {key}, stored changes in arrival order:")
        report.evidence += change_history(engine, tid, source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="length of the load window")
    parser.add_argument("--replicas", type=int, default=defaults.replicas, choices=(1, 2, 3),
                        help="2-3 for the fault run; 1 is a control (no concurrency between replicas)")
    parser.add_argument("--senders", type=int, default=defaults.senders, help="concurrent webhook senders")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="webhooks/s offered in total (0 = closed loop, as fast as the replicas answer)")
    parser.add_argument("--updates", type=int, default=defaults.updates, help="updates per ticket")
    parser.add_argument("--postgres-url", default=defaults.postgres_url)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout)
    parser.add_argument("--no-kill", action="store_true", help="do not SIGKILL a replica")
    parser.add_argument("--kills", type=int, default=defaults.kills,
                        help="SIGKILLs (each of another replica, after the previous one recovered)")
    parser.add_argument("--no-postgres-restart", action="store_true", help="do not restart PostgreSQL")
    parser.add_argument("--no-pagerduty-outage", action="store_true", help="no 500/429 window")
    parser.add_argument("--no-edge-attack", action="store_true", help="no header floods or slowloris")
    parser.add_argument("--keep-logs", action="store_true", help="keep the replica logs even on success")
    args = parser.parse_args(argv)
    cfg = Config(
        seconds=args.seconds, replicas=args.replicas, senders=args.senders, rate=args.rate, updates=args.updates,
        postgres_url=args.postgres_url, seed=args.seed, drain_timeout=args.drain_timeout,
        kill_replica=not args.no_kill, kills=max(args.kills, 1), restart_postgres=not args.no_postgres_restart,
        pagerduty_outage=not args.no_pagerduty_outage, keep_logs=args.keep_logs,
        edge_attack=not args.no_edge_attack,
        log=lambda line: print(line, flush=True),
    )
    report = run(cfg)
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
