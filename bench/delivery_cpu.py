"""CPU time per page delivered (issue 19, goal 2): one delivery worker's ``drain()`` of N queued triggers to the
local PagerDuty mock (tests/fakes, real HTTP on loopback), timed with ``time.thread_time()`` — the worker's
thread only: the mock answers from its own threads and is not counted. Claim, rate limiter, the POST through
``requests``, and the durable ``sent`` mark are all in it. The pages go to 100 routing keys, as in
``bench.pipeline``: with one key and a clock that does not move, the limiter's window held every page sent so
far, and scanning it made a page look 15 % dearer against the bare POST (one run).

    python -m bench.delivery_cpu [--events 1000] [--repeats 3] [--root PATH]

``--root``: measure the code of another tree (a worktree or archive of main) for a before figure in the same
run. Each repeat is a fresh database; the lowest figure is reported (the least disturbed by this shared VM),
with the median beside it. Beside it, the same number of bare ``requests`` POSTs of a stored body to the same
mock: the floor of any send through the project's HTTP stack.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bare_sends import poster
from bench.engine_cpu import measured_tree

ROOT = Path(__file__).resolve().parent.parent


def own_mock() -> Any:
    """This checkout's PagerDuty mock class, whichever tree is measured (``--root``), as in ``bench.pipeline``: both
    trees send to the same server (an older tree's own mock spoke HTTP/1.0, so each of its pages paid a TCP connect
    and close that the Events API's kept connections do not)."""
    spec = importlib.util.spec_from_file_location("bench_pagerduty_mock", ROOT / "tests/fakes/pagerduty_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MockPagerDuty


def once(n: int) -> tuple[float, float]:
    """CPU seconds of one worker delivering ``n`` stored triggers, and of ``n`` bare POSTs of one of them."""
    from bench.callgrind import _ticket
    from bench.pipeline import rules_text
    from kernel.clock import FakeClock
    from tests.factories import T0, change
    from tests.harness import make_service, receive

    with tempfile.TemporaryDirectory() as tmp, own_mock()() as pd:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(rules_text())  # 100 routing keys, as the pipeline bench: the limiter's windows stay short
        svc = make_service(
            f"sqlite:///{tmp}/delivery.db", rules, pd.url, FakeClock(T0), pagerduty={"rate_limit_per_minute": 10**6}
        )
        batch = [change(_ticket(i, True)) for i in range(n)]  # type: ignore[arg-type]
        for i in range(0, n, 50):  # the writer's group commits
            receive(svc, batch[i : i + 50])
        assert svc.engine.drain() == n
        svc.heartbeat.register()  # as serve runs it: a replica with its heartbeat, here alone on its database
        worker = svc.delivery(heartbeat=svc.heartbeat)
        start = time.thread_time()
        sent = worker.drain()
        spent = time.thread_time() - start
        assert sent == n and len(pd.events) == n, (sent, len(pd.events))
        post = poster(pd.url)
        data = json.dumps(pd.events[0], separators=(",", ":")).encode()  # one page as it was sent
        start = time.thread_time()
        for _ in range(n):
            post(data)
        bare = time.thread_time() - start
        svc.store.dispose()
    return spent, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=None, help="the code tree to measure (default: this one)")
    args = parser.parse_args()
    tree = measured_tree(args.root)
    runs = [once(args.events) for _ in range(args.repeats)]
    ms = [1000 * s / args.events for s, _ in runs]
    bare = [1000 * b / args.events for _, b in runs]
    print(
        f"{tree}: delivery CPU {min(ms):.3f} ms/event (median {statistics.median(ms):.3f}); bare requests POST"
        f" {min(bare):.3f} ms (median {statistics.median(bare):.3f}); {args.events} events"
    )


if __name__ == "__main__":
    main()
