"""Engine throughput: stored changes → rules → outbox, on SQLite and (if configured) PostgreSQL.

Run from the repository root:  python -m bench.bench_engine [--changes 2000]
(PostgreSQL from ``TICKETPAGER_TEST_POSTGRES_URL``; a fresh schema is created and dropped.)

Baseline in the same run: the raw insert rate of the same changes into the same store (what the webhook
writer does), so the figure reads as "processing costs N× storing".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernel.clock import SystemClock  # noqa: E402
from tests.conftest import _pg_schema_url  # noqa: E402
from tests.factories import RULES, change, ticket  # noqa: E402
from tests.harness import make_service, receive  # noqa: E402


def run(url: str, rules: Path, n: int) -> tuple[float, float]:
    svc = make_service(url, rules, "http://127.0.0.1:9/v2/enqueue", SystemClock())  # type: ignore[arg-type]
    batch = [change(ticket(str(100000 + i))) for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 50):  # the writer's group commits
        receive(svc, batch[i : i + 50])
    stored = n / (time.perf_counter() - start)
    start = time.perf_counter()
    done = svc.engine.drain()
    processed = done / (time.perf_counter() - start)
    svc.store.dispose()
    return stored, processed


def report(name: str, stored: float, processed: float) -> None:
    print(f"{name:<11} store {stored:8,.0f}/s   engine {processed:8,.0f} changes/s   ratio {processed / stored:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("PD_PLATFORM_KEY", "benchbenchbenchbenchbenchbench00")
    tmp = Path(tempfile.mkdtemp())
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    print(f"{args.changes} new-ticket changes, each matching one rule (one trigger each)")
    report("SQLite", *run(f"sqlite:///{tmp / 'engine.db'}", rules, args.changes))
    base = os.environ.get("TICKETPAGER_TEST_POSTGRES_URL")
    if not base:
        print("PostgreSQL  skipped: set TICKETPAGER_TEST_POSTGRES_URL")
        return
    schema = f"tp_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        report("PostgreSQL", *run(_pg_schema_url(base, schema), rules, args.changes))
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
