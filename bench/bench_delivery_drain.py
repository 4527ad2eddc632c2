"""CPU cost per outbox row of the delivery worker (claim, send through its destination, mark sent), issue 15.

N new-ticket changes are stored and processed by the engine (one trigger each), then one delivery worker
drains the outbox into the local PagerDuty fake. Reported: process CPU-milliseconds per delivered event (the
fake's server thread included, so it is a send's full cost on this machine) and wall time per event.

Run: ``python bench/bench_delivery_drain.py [--changes N] [--root TREE]``; ``--root`` measures another
checkout (e.g. the commit before a change, from ``git worktree add``) with the same script, in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--changes", type=int, default=1000)
parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()
sys.path.insert(0, str(args.root.resolve()))

from kernel.clock import FakeClock  # noqa: E402
from tests.factories import RULES, change, ticket  # noqa: E402
from tests.fakes.pagerduty_server import MockPagerDuty  # noqa: E402
from tests.harness import make_service, receive  # noqa: E402


def run(url: str, rules: Path, n: int) -> tuple[float, float]:
    with MockPagerDuty() as pd:
        svc = make_service(url, rules, pd.url, FakeClock(), pagerduty={"rate_limit_per_minute": 10**9})
        batch = [change(ticket(str(100000 + i))) for i in range(n)]
        for i in range(0, n, 50):
            receive(svc, batch[i : i + 50])
        svc.engine.drain()
        delivery = svc.delivery()
        cpu, wall = time.process_time(), time.perf_counter()
        done = delivery.drain()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        assert done == n == len(pd.events), (done, n, len(pd.events))
        svc.store.dispose()
    return cpu / n * 1e3, wall / n * 1e3


def main() -> None:
    os.environ.setdefault("PD_PLATFORM_KEY", "benchbenchbenchbenchbenchbench00")
    tmp = Path(tempfile.mkdtemp())
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    print(f"tree {args.root}: {args.changes} triggers delivered by one worker")
    for r in range(args.rounds):
        cpu, wall = run(f"sqlite:///{tmp / f'delivery{r}.db'}", rules, args.changes)
        print(f"SQLite  round {r + 1}: {cpu:.3f} CPU-ms/event   {wall:.3f} ms/event wall")


if __name__ == "__main__":
    main()
