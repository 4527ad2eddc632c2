"""CPU time per engine change (issue 19, goal 2): ``svc.engine.drain()`` over N new paging tickets on SQLite,
timed with ``time.thread_time()`` (this thread's CPU only: no waiting, no other process counted).

    python -m bench.engine_cpu [--changes 2000] [--repeats 3] [--root PATH]

``--root``: measure the code of another tree (a worktree or archive of main) for a before figure in the same
run. Each repeat is a fresh database; the lowest figure is reported (the least disturbed by this shared VM),
with the median beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def once(n: int) -> float:
    """CPU seconds of one drain of ``n`` stored new-ticket changes, each paging (one trigger)."""
    from kernel.clock import FakeClock
    from tests.factories import RULES, T0, change, ticket
    from tests.harness import make_service, receive

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(RULES)
        clock = FakeClock(T0)
        svc = make_service(f"sqlite:///{tmp}/engine.db", rules, "http://127.0.0.1:9/v2/enqueue", clock)
        batch = [change(ticket(str(100000 + i))) for i in range(n)]
        for i in range(0, n, 50):  # the writer's group commits
            receive(svc, batch[i : i + 50])
        start = time.thread_time()
        done = svc.engine.drain()
        spent = time.thread_time() - start
        svc.store.dispose()
    assert done == n, done
    return spent


def measured_tree(root: Path | None) -> Path:
    """Put ``root`` (another tree: a worktree or archive) first on the import path, set the bench rules' routing
    key, and return the tree whose code is measured."""
    if root is not None:
        sys.path.insert(0, str(root.resolve()))
    os.environ.setdefault("PD_PLATFORM_KEY", "benchbenchbenchbenchbenchbench00")
    import sync  # noqa: PLC0415 - after --root is on the path

    return Path(sync.__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=None, help="the code tree to measure (default: this one)")
    args = parser.parse_args()
    tree = measured_tree(args.root)
    ms = [1000 * once(args.changes) / args.changes for _ in range(args.repeats)]
    print(f"{tree}: engine CPU {min(ms):.3f} ms/change (median {statistics.median(ms):.3f}, {args.changes} changes)")


if __name__ == "__main__":
    main()
