"""With 1,000,000 tracked tickets and links, the queries of an engine step, a delivery claim and `status`
use indexes (checked with EXPLAIN on the statements the code really sends). PostgreSQL only."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from kernel.clock import FakeClock
from tests.factories import ROUTING_KEY, RULES, T0, change, ticket
from tests.harness import make_service, receive
from ticketpager.service import Service

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

N = 1_000_000
BIG_TABLES = ("tickets", "links", "outbox", "changes", "decisions")


def populate(service: Service) -> None:
    snapshot = json.dumps(ticket("0").to_json())
    with service.store.begin() as conn:
        conn.execute(text(
            "INSERT INTO tickets (source, connection, ticket_id, key, status_category, updated, version_hash, snapshot,"
            " open_incidents, recheck, processed_at) SELECT 'jira', 'jira', (100000000 + g)::text, 'OPS-' || g,"
            " CASE WHEN g % 5 = 0 THEN 'new' ELSE 'done' END, :t0, 'h', :snap, (g % 5 = 0)::int, false, :t0"
            " FROM generate_series(1, :n) g"), {"t0": T0, "snap": snapshot, "n": N})
        conn.execute(text(
            "INSERT INTO links (source, connection, ticket_id, rule, generation, dedup_key, routing_key, state,"
            " created_at, updated_at) SELECT 'jira', 'jira', (100000000 + g)::text, 'ops-highest', 1,"
            " 'ticketpager/jira/' || (100000000 + g) || '/ops-highest/1', :rk,"
            " CASE WHEN g % 5 = 0 THEN 'triggered' ELSE 'resolved' END, :t0, :t0 FROM generate_series(1, :n) g"),
            {"t0": T0, "rk": ROUTING_KEY, "n": N})
        conn.execute(text(
            "INSERT INTO outbox (kind, source, connection, ticket_id, ticket_key, rule, action, dedup_key, generation,"
            " routing_key, body, status, attempts, next_attempt_at, created_at) SELECT 'event', 'jira', 'jira',"
            " (100000000 + g)::text, 'OPS-' || g, 'ops-highest', 'trigger',"
            " 'ticketpager/jira/' || (100000000 + g) || '/ops-highest/1', 1, :rk, '{}', 'sent', 1, :t0, :t0"
            " FROM generate_series(1, :n / 5) g"), {"t0": T0, "rk": ROUTING_KEY, "n": N})
        conn.execute(text(
            "INSERT INTO changes (source, connection, delivery_id, ticket_id, ticket_updated, origin, received_at,"
            " payload, status) SELECT 'jira', 'jira', 'd' || g, (100000000 + g)::text, :t0, 'webhook', :t0, NULL,"
            " 'processed'"
            " FROM generate_series(1, :n / 5) g"), {"t0": T0, "n": N})
    with service.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One fresh schema with 1,000,000 tickets and links, shared by this module's tests."""
    import os
    import uuid

    from sqlalchemy import create_engine

    from tests.conftest import PG_SKIP, PG_URL, _pg_schema_url

    if not PG_URL:
        pytest.skip(PG_SKIP)
    os.environ["PD_PLATFORM_KEY"] = ROUTING_KEY
    schema = f"tp_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    rules: Path = tmp_path_factory.mktemp("rules") / "ops.yaml"
    rules.write_text(RULES)
    service = make_service(_pg_schema_url(PG_URL, schema), rules, "http://127.0.0.1:9/v2/enqueue", FakeClock())
    try:
        started = time.perf_counter()
        populate(service)
        print(f"\npopulated {N:,} tickets and links in {time.perf_counter() - started:.1f} s")
        yield service
    finally:
        service.store.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class Capture:
    """Record every statement the code sends, with its parameters."""

    def __init__(self, service: Service) -> None:
        self.engine = service.store.engine
        self.statements: list[tuple[str, Any]] = []

    def __enter__(self) -> Capture:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if not many and statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            self.statements.append((statement, params))


def seq_scans(service: Service, statements: list[tuple[str, Any]]) -> list[str]:
    """The big tables each statement reads with a sequential scan (EXPLAIN, planner's choice)."""
    found = []
    raw = service.store.engine.raw_connection()
    try:
        cur = raw.cursor()
        for statement, params in statements:
            cur.execute("EXPLAIN (FORMAT JSON) " + statement, params)
            plan = cur.fetchone()[0]
            found += [f"{table}: {statement[:160]}" for table in BIG_TABLES if _seq_on(plan, table)]
        raw.rollback()
    finally:
        raw.close()
    return found


def _seq_on(plan: Any, table: str) -> bool:
    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") == table:
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(plan)


def test_engine_step_uses_indexes(big: Service) -> None:
    updated = ticket("100000005", key="OPS-5", minutes=10)  # an existing, tracked ticket with an open link
    receive(big, [change(updated, "scale-1")])
    with Capture(big) as cap:
        assert big.engine.run_once() == 1
    assert cap.statements, "no statements captured"
    assert seq_scans(big, cap.statements) == []


def test_delivery_claim_uses_indexes(big: Service) -> None:
    with Capture(big) as cap:
        big.delivery().claim(10)
    assert seq_scans(big, cap.statements) == []


def test_the_rate_limiters_look_at_other_replicas_uses_an_index(big: Service) -> None:
    """Every send asks the outbox what the other replicas sent to its routing key in the last minute."""
    with Capture(big) as cap:
        assert big.limiter.wait_for(ROUTING_KEY) == 0
    assert cap.statements, "no statements captured"
    assert seq_scans(big, cap.statements) == []


def test_status_uses_indexes_except_the_total_count(big: Service) -> None:
    with Capture(big) as cap:
        started = time.perf_counter()
        status = big.store.status()
        elapsed = time.perf_counter() - started
    assert status.tickets >= N
    assert status.open_incidents >= N // 5
    scans = [s for s in seq_scans(big, cap.statements) if not s.startswith("tickets: SELECT count(*)")]
    assert scans == []
    print(f"status over {N:,} tickets answered in {elapsed * 1000:.0f} ms")
