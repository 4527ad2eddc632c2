"""Cost of counting incidents as PagerDuty knows them (``ticketpager status``, ``/admin/status``).

Before: one count of unresolved links. Now: unresolved links grouped by what became of their trigger
(sent / dry run / pending / dead), one indexed EXISTS per link and outcome (``ix_outbox_dedup_key``).
Both are timed in the same run on the same data, as is the whole ``Store.status()``.

Usage: python bench/bench_status.py [--tickets 200000] [--runs 5] [--database-url postgresql://…]
(default: a SQLite file in a temporary directory)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select, text  # noqa: E402

from sync.repos.tickets import OPEN_LINKS_BY_TRIGGER as _OPEN_LINKS_BY_TRIGGER  # noqa: E402
from sync.schema import links  # noqa: E402
from sync.store import Store  # noqa: E402

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
OLD_OPEN_COUNT = select(func.count()).select_from(links).where(links.c.state != "resolved")


def populate(store: Store, n: int) -> None:
    """``n`` links, one in five unresolved; their triggers sent, except one in 50 pending and one in 50 dead."""
    series = (
        "WITH RECURSIVE series(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM series WHERE g < :n)"
        if store.dialect == "sqlite"
        else "WITH series(g) AS (SELECT generate_series(1, :n))"
    )
    with store.begin() as conn:
        conn.execute(
            text(
                f"{series} INSERT INTO links (source, connection, ticket_id, rule, generation, dedup_key, routing_key,"
                f" state, created_at, updated_at) SELECT 'jira', 'jira', CAST(g AS TEXT), 'ops', 1,"
                " 'ticketpager/jira/' || g || '/ops/1', 'rk', CASE WHEN g % 5 = 0 THEN 'triggered' ELSE 'resolved' END,"
                " :t0, :t0 FROM series"
            ),
            {"n": n, "t0": T0},
        )
        conn.execute(
            text(
                f"{series} INSERT INTO outbox (kind, source, connection, ticket_id, ticket_key, rule, action,"
                " dedup_key, generation, routing_key, body, status, attempts, next_attempt_at, created_at, dry_run)"
                " SELECT 'event', 'jira', 'jira', CAST(g AS TEXT), 'OPS-' || g, 'ops', 'trigger',"
                " 'ticketpager/jira/' || g || '/ops/1', 1, 'rk', '{}',"
                " CASE WHEN g % 250 = 0 THEN 'dead' WHEN g % 250 = 5 THEN 'pending' ELSE 'sent' END,"
                " 1, :t0, :t0, false FROM series"
            ),
            {"n": n, "t0": T0},
        )
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


def timed(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}")
        store.upgrade()
        try:
            populate(store, args.tickets)
            with store.engine.connect() as conn:
                old = timed(lambda: conn.execute(OLD_OPEN_COUNT).scalar_one(), args.runs)
                new = timed(lambda: conn.execute(_OPEN_LINKS_BY_TRIGGER).all(), args.runs)
                breakdown = dict(conn.execute(_OPEN_LINKS_BY_TRIGGER).all())
            whole = timed(store.status, args.runs)
        finally:
            store.dispose()
    print(f"{store.dialect}, {args.tickets:,} links ({args.tickets // 5:,} unresolved): {breakdown}")
    print(f"  before: count of unresolved links          {old:8.1f} ms")
    print(f"  now:    unresolved links by trigger outcome {new:8.1f} ms  ({new / old:.1f}x)")
    print(f"  whole Store.status() now                    {whole:8.1f} ms")


if __name__ == "__main__":
    main()
