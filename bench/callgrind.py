"""Instruction counts of the pure CPU parts, by callgrind (issue 19, goal 6): figures this shared VM's noise
cannot blur (its CPU speed swings ±40 % between runs; the number of instructions executed does not move).

    python -m bench.callgrind [--tickets 1000] [--changes 200] [--events 200] [--only rules|engine|delivery|post]

* **rules**: one evaluation of the pipeline bench's rule set (100 rules, one per routing key: project and
  priority, a templated summary) against a new Jira ticket, every other one matching — instructions per
  evaluation;
* **engine**: one engine step on an in-memory SQLite database: a stored new-ticket change claimed, its
  ticket locked and read, the rules evaluated, one trigger rendered and queued in the outbox (every other
  change pages), the ticket, link and decision written, the change marked done — instructions per change;
* **delivery**: one page sent by one delivery worker to the local PagerDuty mock (in a process of its own, not
  counted): its share of the claim, the rate limiter, the POST through ``requests``, its share of the durable
  ``sent`` marks — instructions per page;
* **post**: delivery's floor, one bare ``requests`` POST of a page of the same shape to the same mock, the way
  ``bench.bare_sends`` (and the events sink) post — instructions per POST.

Each workload runs twice under ``valgrind --tool=callgrind`` in a child process, with 1 and with 3 passes
of its units after the same set-up (imports, migrations, rule loading, one warm pass);
(count₃ − count₁) / (2 × units) is the cost of one unit, the set-up cancelled out. The counts include the
Python interpreter's own work (they are what the CPU executes), so compare them between commits on the same
Python build. Skipped with a note when valgrind is not installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the code tree measured: this checkout, or (``--root``, the pipeline bench's ``--baseline``) another one
TREE = Path(os.environ.get("BENCH_TREE", ROOT))
if str(TREE) not in sys.path:
    sys.path.insert(0, str(TREE))

COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
PASSES = (1, 3)


@dataclass
class Count:
    name: str
    unit: str
    units: int  # per pass
    per_unit: float  # instructions


def _ticket(n: int, page: bool) -> object:
    from bench.pipeline import ROUTING_KEYS
    from tests.factories import ticket

    k = n % ROUTING_KEYS
    return ticket(str(100000 + n), priority="Highest" if page else "Low", attributes={"project": f"P{k:03d}"})


def inner_rules(units: int, passes: int) -> None:
    """Set-up, one warm pass, then ``passes`` passes of ``units`` evaluations."""
    import connectors  # noqa: F401 - the sources (and their fields) the rules name are registered on import
    from bench.pipeline import rules_text
    from kernel.ports import EvalContext
    from rules import load_rules
    from tests.factories import T0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(rules_text())
        ruleset = load_rules(path, env={})
    tickets = [_ticket(n, n % 2 == 0) for n in range(units)]
    for _ in range(1 + passes):
        for t in tickets:
            ruleset.evaluate(EvalContext(t, None, (), T0))  # type: ignore[arg-type]


def inner_engine(units: int, passes: int) -> None:
    """An in-memory database holding ``3 × units`` pending changes (the same for every ``passes``), one
    warm pass, then ``passes`` passes of ``units`` changes through the engine."""
    from bench.pipeline import rules_text
    from kernel.clock import FakeClock
    from tests.factories import T0, change
    from tests.harness import make_service, receive

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(rules_text())
        clock = FakeClock(T0 + timedelta(hours=1))
        svc = make_service("sqlite://", path, "http://127.0.0.1:9/v2/enqueue", clock, dry_run=True)
        total = (1 + max(PASSES)) * units
        batch = [change(_ticket(n, n % 2 == 0)) for n in range(total)]  # type: ignore[arg-type]
        for i in range(0, total, 50):  # the writer's group commits
            receive(svc, batch[i : i + 50])
        for _ in range(1 + passes):
            done = svc.engine.drain(limit=units)
            assert done == units, done
        svc.store.dispose()


_MOCK = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.fakes.pagerduty_server import MockPagerDuty
with MockPagerDuty() as pd:
    print(pd.url, flush=True)
    sys.stdin.read()  # until the parent closes it
"""


def inner_delivery(units: int, passes: int) -> None:
    """``(1 + 3) × units`` queued triggers (100 routing keys; the same queue for 1 and 3 passes, so the engine's
    work cancels out), one warm pass, then ``passes`` passes of ``units`` sends by one delivery worker: claim,
    rate limiter, the POST through ``requests`` to the local PagerDuty mock, its share of the durable ``sent``
    marks (a batch's are one transaction, as in ``serve`` alone on its database). The mock runs in a process of its
    own (valgrind does not follow it), so only the sender's instructions are counted."""
    with _mock() as url:
        _deliver(url, units, passes)


@contextmanager
def _mock() -> Iterator[str]:
    """The PagerDuty mock in a process of its own (valgrind does not follow it): its URL. It is this checkout's
    mock whichever tree is measured (``--root``), as in ``bench.pipeline``: both trees send to the same server."""
    with subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", _MOCK, str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as mock:
        assert mock.stdout is not None and mock.stdin is not None
        try:
            yield mock.stdout.readline().strip()
        finally:
            mock.stdin.close()  # the mock stops when its stdin ends


def _deliver(url: str, units: int, passes: int) -> None:
    from bench.pipeline import rules_text
    from kernel.clock import FakeClock
    from sync.delivery import INCIDENT_KINDS
    from tests.factories import T0, change
    from tests.harness import make_service, receive

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(rules_text())
        clock = FakeClock(T0 + timedelta(hours=1))
        svc = make_service(f"sqlite:///{tmp}/d.db", path, url, clock, pagerduty={"rate_limit_per_minute": 10**6})
        # the same queue for every ``passes`` (like the engine's): only the sends differ between the two counts
        total = (1 + max(PASSES)) * units
        batch = [change(_ticket(n, True)) for n in range(total)]  # type: ignore[arg-type]
        for i in range(0, total, 50):  # the writer's group commits
            receive(svc, batch[i : i + 50])
        assert svc.engine.drain() == total
        svc.heartbeat.register()  # as serve runs it: a replica with its heartbeat, here alone on its database
        # and as serve's PagerDuty workers claim: PagerDuty's kinds only (the tickets' have workers of their own)
        worker = svc.delivery(heartbeat=svc.heartbeat, kinds=INCIDENT_KINDS)
        for _ in range(1 + passes):
            sent = 0
            while sent < units:
                sent += worker.run_once(min(10, units - sent))
        if passes == max(PASSES):
            assert worker.run_once() == 0, "every page was sent"
        svc.store.dispose()


def inner_post(units: int, passes: int) -> None:
    """Delivery's floor: ``units`` bare ``requests`` POSTs per pass of one page's body to the same mock, the way
    ``bench.bare_sends`` and the events sink post (one session, the request prepared once)."""
    from bench.bare_sends import body, poster

    with _mock() as url:
        post = poster(url)
        bodies = [body(n) for n in range((1 + max(PASSES)) * units)]  # the same for 1 and 3 passes
        for p in range(1 + passes):
            for data in bodies[p * units : (p + 1) * units]:
                post(data).raise_for_status()


WORKLOADS = {
    "rules": (inner_rules, "evaluation"),
    "engine": (inner_engine, "change"),
    "delivery": (inner_delivery, "page sent"),
    "post": (inner_post, "bare POST"),
}


def collected(workload: str, units: int, passes: int, tree: Path = ROOT) -> int:
    """Instructions counted by callgrind for one child run (this script, the code imported from ``tree``)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PD_PLATFORM_KEY": "benchbenchbenchbenchbenchbench00"}
    env["BENCH_TREE"] = str(tree)
    # the set-up must cost the same in both runs: no run compiles what the other loads from __pycache__
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(Path(__file__).resolve()), "--inner", workload, str(units), str(passes),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return int(found.group(1))


def warm(workload: str, tree: Path) -> None:
    """One small run without valgrind first, so ``tree``'s bytecode is compiled and cached (a fresh checkout
    compiled it in the first counted run only, which skewed one comparison by 15 %)."""
    env = {**os.environ, "BENCH_TREE": str(tree), "PD_PLATFORM_KEY": "benchbenchbenchbenchbenchbench00"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inner", workload, "50", "0"]
    subprocess.run(cmd, cwd=tree, env=env, capture_output=True, check=True)  # noqa: S603


def measure(workload: str, units: int, tree: Path = ROOT) -> Count:
    warm(workload, tree)
    low, high = (collected(workload, units, passes, tree) for passes in PASSES)
    return Count(workload, WORKLOADS[workload][1], units, (high - low) / ((PASSES[1] - PASSES[0]) * units))


def available() -> bool:
    return shutil.which("valgrind") is not None


def run(
    tickets: int = 1000, changes: int = 200, only: str | None = None, tree: Path = ROOT, events: int = 200
) -> list[Count]:
    """Count each workload (or ``only`` one) for the code in ``tree``; [] if valgrind is absent."""
    if not available():
        return []
    sizes = {"rules": tickets, "engine": changes, "delivery": events, "post": events}
    return [measure(name, sizes[name], tree) for name in WORKLOADS if only in (None, name)]


def lines(counts: list[Count], before: list[Count] | None = None) -> list[str]:
    """One line per workload; with ``before`` (the same workloads of another tree) its count and the ratio; with
    both send workloads, a page sent against its floor, a bare POST."""
    if not counts:
        return ["6. instruction counts: skipped (valgrind is not installed)"]
    old = {c.name: c.per_unit for c in before or []}
    out = []
    for c in counts:
        line = f"6. instructions per {c.unit} ({c.name}, callgrind, {c.units} per pass): {c.per_unit:,.0f}"
        if c.name in old:
            line += f"; before {old[c.name]:,.0f}, after / before {c.per_unit / old[c.name]:.3f}"
        out.append(line)
    by_name = {c.name: c.per_unit for c in counts}
    if by_name.get("delivery") and by_name.get("post"):  # delivery against its floor, in the same run
        out.append(f"   a page sent / a bare POST of it: {by_name['delivery'] / by_name['post']:.2f}x")
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--inner"]:  # the child under valgrind
        WORKLOADS[argv[1]][0](int(argv[2]), int(argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=1000, help="rule evaluations per pass")
    parser.add_argument("--changes", type=int, default=200, help="engine changes per pass (a multiple of 50)")
    parser.add_argument("--events", type=int, default=200, help="pages sent per pass by one delivery worker")
    parser.add_argument("--only", choices=tuple(WORKLOADS))
    parser.add_argument("--root", type=Path, default=ROOT, help="the code tree to measure (default: this one)")
    args = parser.parse_args(argv)
    for line in lines(run(args.tickets, args.changes, args.only, args.root.resolve(), args.events)):
        print(line)


if __name__ == "__main__":
    main()
