"""CPU time per engine change (issue 19, goal 2): ``svc.engine.drain()`` over N new paging tickets on SQLite,
timed with ``time.thread_time()`` (this thread's CPU only: no waiting, no other process counted).

    python -m bench.engine_cpu [--changes 2000] [--repeats 3] [--root PATH] [--batch 50] [--pipeline-rules]

``--batch``: the engine's batch size, how many changes share one transaction (its fsync, claim and reads): 50
in a backlog, 2-3 at a steady 100 webhooks/s (``ticketpager_engine_batch_changes``). ``--pipeline-rules``: the
pipeline bench's 100 rules, 1 change in 10 paging (as ``bench.pipeline`` and ``bench.idle_threads`` post),
instead of the tests' rules with every change paging.

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


def once(n: int, batch_size: int = 50, pipeline_rules: bool = False) -> float:
    """CPU seconds of one drain of ``n`` stored new-ticket changes, ``batch_size`` per engine transaction, each
    paging (one trigger), or with ``pipeline_rules`` the pipeline bench's rules and 1 in 10 paging."""
    from bench.pipeline import ROUTING_KEYS, rules_text
    from kernel.clock import FakeClock
    from tests.factories import RULES, T0, change, ticket
    from tests.harness import make_service, receive

    def new_ticket(i: int) -> object:
        if not pipeline_rules:
            return ticket(str(100000 + i))
        project = f"P{i % ROUTING_KEYS:03d}"
        return ticket(str(100000 + i), priority="Highest" if i % 10 == 0 else "Low", attributes={"project": project})

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(rules_text() if pipeline_rules else RULES)
        clock = FakeClock(T0)
        svc = make_service(f"sqlite:///{tmp}/engine.db", rules, "http://127.0.0.1:9/v2/enqueue", clock)
        svc.engine.batch_size = batch_size
        batch = [change(new_ticket(i)) for i in range(n)]  # type: ignore[arg-type]
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
    parser.add_argument("--batch", type=int, default=50, help="changes per engine transaction")
    parser.add_argument("--pipeline-rules", action="store_true", help="100 rules, 1 change in 10 paging")
    args = parser.parse_args()
    tree = measured_tree(args.root)
    ms = [1000 * once(args.changes, args.batch, args.pipeline_rules) / args.changes for _ in range(args.repeats)]
    what = f"{args.changes} changes, {args.batch} per batch" + (", pipeline rules" if args.pipeline_rules else "")
    print(f"{tree}: engine CPU {min(ms):.3f} ms/change (median {statistics.median(ms):.3f}, {what})")


if __name__ == "__main__":
    main()
