"""CPU seconds per simulated minute of a backlog held by PagerDuty's rate limit (issue 19, goal 5).

``--rows`` (14,000) triggers for one routing key are queued at once; one delivery worker sends them at 120 a
minute into the local PagerDuty fake, which spends ~100 ms of latency per request on the service's fake clock.
Whenever nothing is due the clock jumps to the next due row (what the service's idle look sleeps until),
so the simulated minutes take no wall time: what is left is the CPU the worker spends (the fake's server
thread included). Measured over ``--minutes`` (3) simulated minutes after the first (its 120 sends go at
once). SQLite, a temporary file.

Run: ``python bench/bench_rate_backlog.py [--rows N] [--minutes M] [--root TREE]``: with ``--root`` the same
workload runs on that checkout too (e.g. a clone of the commit before the change) and the ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
KEY = "benchbenchbenchbenchbenchbench00"


def child(tree: Path, rows: int, minutes: int) -> dict[str, float]:
    sys.path.insert(0, str(tree))
    from kernel.clock import FakeClock
    from sync.repos import outbox
    from tests.factories import RULES
    from tests.fakes.pagerduty_server import MockPagerDuty
    from tests.harness import make_service

    os.environ["PD_PLATFORM_KEY"] = KEY
    tmp = Path(tempfile.mkdtemp())
    (tmp / "rules").mkdir()
    (tmp / "rules" / "ops.yaml").write_text(RULES)
    clock = FakeClock()
    with MockPagerDuty(clock=clock, latency=lambda n: 0.1) as pd:
        svc = make_service(f"sqlite:///{tmp / 'bench.db'}", tmp / "rules", pd.url, clock)
        body = json.dumps({"routing_key": KEY, "event_action": "trigger", "dedup_key": "x",
                           "payload": {"summary": "s", "source": "bench", "severity": "critical"}})  # fmt: skip
        with svc.store.begin() as conn:
            for n in range(rows):
                outbox.enqueue(
                    conn, kind="event", destination="pagerduty", source="jira", connection="jira",
                    ticket_id=str(n), ticket_key=f"OPS-{n}", rule="ops-highest", action="trigger",
                    dedup_key=f"bench-{n}", generation=1, limit_key=KEY, body=body.replace('"x"', f'"bench-{n}"'),
                    change_id=None, now=clock.now(),
                )  # fmt: skip
        worker = svc.delivery()
        statement = outbox.next_due_statement(takeover=True)
        start = clock.now()

        def until(end: object) -> None:
            while clock.now() < end:  # type: ignore[operator]
                if worker.run_once():
                    continue
                with svc.store.engine.connect() as conn:
                    due = outbox.next_due(conn, statement, clock.now(), 60.0)
                if due is None:
                    return
                clock.advance(max((min(due, end) - clock.now()).total_seconds(), 0.001))  # type: ignore[type-var]

        until(start + timedelta(minutes=1))
        sent = len(pd.events)
        cpu = time.process_time()
        until(start + timedelta(minutes=1 + minutes))
        cpu = time.process_time() - cpu
        sent = len(pd.events) - sent
        svc.store.dispose()
    return {"cpu_per_minute": cpu / minutes, "sent_per_minute": sent / minutes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=14_000)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--root", type=Path, help="another checkout to measure too (the 'before')")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.rows, args.minutes)))
        return
    trees = [("after", HERE)] + ([("before", args.root.resolve())] if args.root else [])
    results = {}
    for name, tree in trees:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(tree), "--rows", str(args.rows), "--minutes", str(args.minutes)],
            check=True, capture_output=True, text=True, cwd=tree,
        ).stdout  # fmt: skip
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        print(
            f"{name:6} {tree}: {r['cpu_per_minute']:.3f} CPU-s per simulated minute, "
            f"{r['sent_per_minute']:.0f} sends/min, backlog {args.rows} rows for one key"
        )
    if "before" in results:
        ratio = results["before"]["cpu_per_minute"] / max(results["after"]["cpu_per_minute"], 1e-9)
        print(f"before/after: {ratio:.1f}x")


if __name__ == "__main__":
    main()
