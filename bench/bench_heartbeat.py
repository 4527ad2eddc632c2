"""Idle cost of the replica heartbeat, on SQLite and (if configured) PostgreSQL.

Run from the repository root:  python -m bench.bench_heartbeat [--rounds 2000]
(PostgreSQL from ``TICKETPAGER_TEST_POSTGRES_URL``; a fresh schema is created and dropped.)

Measured in this process (CPU seconds from ``time.process_time``, so the database server's own work is
not counted; wall time per operation is shown too):

* one heartbeat (``Heartbeat.beat``: one UPDATE of one row, one commit);
* the baseline in the same run: one idle round of the loops every replica already runs when there is
  nothing to do — the engine's and one delivery worker's "anything due?" reads (every
  ``engine.idle_seconds`` = 0.2 s, by the engine and each of the 4 delivery workers);
* the delivery worker's idle read with the takeover condition (``takeover_after`` set) against the same
  read without it, so the cost the heartbeat adds to the claim query shows as a ratio. The outbox holds
  ``--in-flight`` rows claimed by another, live replica (due, but not free): the rows the takeover
  condition has to look at.

Per second of idling, a replica then spends (1 heartbeat / ``engine.heartbeat_seconds``) against
(5 engine reads + 4 × 5 delivery reads); both are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernel.clock import SystemClock  # noqa: E402
from sync.delivery import Delivery  # noqa: E402
from sync.repos.cursors import record_beat  # noqa: E402
from sync.schema import outbox  # noqa: E402
from tests.conftest import _pg_schema_url  # noqa: E402
from tests.factories import RULES  # noqa: E402
from tests.harness import make_service  # noqa: E402
from ticketpager.service import Service  # noqa: E402

HEARTBEAT_SECONDS = 2.0  # the defaults of engine.heartbeat_seconds, engine.idle_seconds, pagerduty.workers
IDLE_SECONDS = 0.2
WORKERS = 4


def cost(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call of ``fn``, after a warm-up."""
    for _ in range(20):
        fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.process_time() - cpu) / rounds, (time.perf_counter() - wall) / rounds


def interleaved(a: Callable[[], object], b: Callable[[], object], rounds: int) -> tuple[tuple[float, float], ...]:
    """Median (CPU, wall) per call of ``a`` and of ``b``, measured in 7 alternating slices (this VM's speed
    drifts; alternating keeps the comparison fair)."""
    slices: list[list[tuple[float, float]]] = [[], []]
    for _ in range(7):
        for i, fn in enumerate((a, b)):
            slices[i].append(cost(fn, max(rounds // 7, 1)))
    return tuple(
        (statistics.median(c for c, _ in s), statistics.median(w for _, w in s)) for s in slices
    )


def hold_rows(svc: Service, n: int) -> None:
    """``n`` due outbox rows claimed for the next hour by another replica that heartbeats."""
    now = svc.clock.now()
    with svc.store.begin() as conn:
        record_beat(conn, "other-replica", now + timedelta(hours=1))
        if not n:
            return
        conn.execute(insert(outbox), [
            {"kind": "event", "source": "jira", "connection": "jira",
             "ticket_id": str(i), "ticket_key": f"OPS-{i}", "rule": "r",
             "action": "trigger", "dedup_key": f"k{i}", "generation": 1, "routing_key": "r", "body": "{}",
             "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now,
             "claimed_until": now + timedelta(hours=1), "claimed_by": "other-replica/0"}
            for i in range(n)
        ])


def run(name: str, url: str, rules: Path, rounds: int, in_flight: int) -> None:
    svc = make_service(url, rules, "http://127.0.0.1:9/v2/enqueue", SystemClock())  # type: ignore[arg-type]
    svc.heartbeat.register()
    hold_rows(svc, in_flight)
    with_takeover = svc.delivery("bench")  # the takeover condition in its claim query
    without = Delivery(  # the claim query as it was before heartbeats (no takeover condition)
        svc.store, {}, svc.clock, policy=svc.policy, worker_id=f"{svc.instance}/plain"
    )
    beat_cpu, beat_wall = cost(svc.heartbeat.beat, rounds)
    engine_cpu, _ = cost(svc.engine.run_once, rounds)
    (plain_cpu, plain_wall), (takeover_cpu, takeover_wall) = interleaved(
        without.run_once, with_takeover.run_once, rounds
    )
    svc.heartbeat.forget()
    svc.store.dispose()
    idle_per_s = (engine_cpu + WORKERS * takeover_cpu) / IDLE_SECONDS
    beat_per_s = beat_cpu / HEARTBEAT_SECONDS
    print(f"{name}")
    print(f"  heartbeat          {beat_cpu * 1e6:7.0f} us CPU  {beat_wall * 1e3:6.2f} ms wall per beat")
    print(f"  idle delivery read {plain_cpu * 1e6:7.0f} us CPU  {plain_wall * 1e3:6.2f} ms wall without takeover, "
          f"{takeover_cpu * 1e6:7.0f} us CPU  {takeover_wall * 1e3:6.2f} ms wall with it "
          f"(ratio {takeover_cpu / plain_cpu:.2f} CPU, {takeover_wall / plain_wall:.2f} wall)")
    print(f"  idle engine read   {engine_cpu * 1e6:7.0f} us CPU")
    print(f"  per idle second: heartbeat {beat_per_s * 1e3:.3f} ms CPU vs the idle loops' "
          f"{idle_per_s * 1e3:.2f} ms CPU "
          f"(heartbeat = {beat_per_s / idle_per_s:.1%} of the baseline; "
          f"{3600 * beat_per_s:.2f} CPU-s and {3600 / HEARTBEAT_SECONDS:.0f} writes per hour)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=40, help="rows claimed by another live replica")
    args = parser.parse_args()
    os.environ.setdefault("PD_PLATFORM_KEY", "benchbenchbenchbenchbenchbench00")
    tmp = Path(tempfile.mkdtemp())
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    run("SQLite", f"sqlite:///{tmp / 'heartbeat.db'}", rules, args.rounds, args.in_flight)
    base = os.environ.get("TICKETPAGER_TEST_POSTGRES_URL")
    if not base:
        print("PostgreSQL: skipped (set TICKETPAGER_TEST_POSTGRES_URL)")
        return
    schema = f"tp_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        run("PostgreSQL", _pg_schema_url(base, schema), rules, args.rounds, args.in_flight)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
