"""Where an idle ``serve`` spends its CPU, per thread (issue 19, goal 1): py-spy is not available here, so
each thread's utime + stime is read from ``/proc/<pid>/task/<tid>/stat`` before and after an idle window.

    python -m bench.idle_threads [--seconds 20] [--root TREE] [--rate 100 [--page-every 10]] [--statements]

``serve`` runs from ``TREE`` (default: this checkout) on a fresh SQLite file with the pipeline bench's 100
paging rules, its Python threads named at the OS level (``prctl``, a start-up shim in this process only) so
``/proc/…/comm`` tells them apart. /proc counts in 10 ms ticks: use a window of 20 s or more.

``--page-every N``: under ``--rate``, 1 webhook in N pages (1: every one, as goal 2's keep-up). ``--statements``:
also count each thread's SQL statements by their first word, and its commits, at the database driver's boundary
(SQLAlchemy's ``before_cursor_execute`` and ``commit`` events; an ``executemany`` is one): how many write
transactions a page costs. The counting costs CPU itself: compare CPU figures from runs without it.

``serve`` is a dry run (pages marked sent, not posted) unless told otherwise: ``--set DRY_RUN=false --set
PAGERDUTY__EVENTS_URL=<a mock's URL>`` posts them (``--set`` adds the ``TICKETPAGER_`` prefix where missing).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import loadgen
from bench.bench_ingest import SECRET, free_port, stop, wait_ready
from bench.pipeline import CLK_TCK, ROOT, rules_text, webhook

# run as ``python -c SHIM`` in the tree: every Python thread sets its OS name (15 bytes) as it starts
SHIM = """
import ctypes, sys, threading
libc = ctypes.CDLL(None)
_run = threading.Thread.run
def run(self):
    libc.prctl(15, self.name.replace("ticketpager-", "")[:15].encode(), 0, 0, 0)
    _run(self)
threading.Thread.run = run
from ticketpager.cli import main
sys.exit(main(["serve"]))
"""

# with --statements, run before SHIM: SQL statements and commits per thread, written to $IDLE_COUNTS on SIGUSR1
COUNTS_SHIM = """
import collections, json, os, signal, threading
from sqlalchemy import event
from sqlalchemy.engine import Engine
_counts = collections.Counter()
@event.listens_for(Engine, "commit")
def _commit(conn):
    _counts[threading.current_thread().name + " COMMIT"] += 1
@event.listens_for(Engine, "before_cursor_execute")
def _statement(conn, cursor, statement, parameters, context, executemany):
    _counts[threading.current_thread().name + " " + statement.split(None, 1)[0].upper()] += 1
def _dump(*_):
    with open(os.environ["IDLE_COUNTS"], "w") as f:
        json.dump(_counts, f)
signal.signal(signal.SIGUSR1, _dump)
"""


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def thread_sleeps(pid: int) -> dict[str, int]:
    """Voluntary context switches per thread name (``/proc/…/status``): each is a sleep the thread later wakes
    from, its own timed waits and its waits for the interpreter lock alike. /proc counts CPU time in 10 ms ticks;
    this counts each wake-up. Both move with this VM's phase (up to 2× between runs): compare trees interleaved."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out[name] = out.get(name, 0) + int(line.split()[1])
    return out


def measure(
    tree: Path,
    seconds: float,
    settle: float = 3.0,
    extra: dict[str, str] | None = None,
    rate: float = 0.0,
    page_every: int = 10,
    statements: dict[str, int] | None = None,
) -> tuple[dict[str, float], float, dict[str, int]]:
    """CPU seconds per thread over ``seconds`` of idleness, or (``rate``) of an open-loop load of new Jira
    tickets at ``rate``/s, 1 in ``page_every`` paging (dry run: pages are marked sent, not posted). Given a
    ``statements`` dict, it is filled with the window's SQL statements and commits per "thread WORD"."""
    with tempfile.TemporaryDirectory(prefix="tp-idle-") as tmp:
        port = free_port()
        (Path(tmp) / "rules.yaml").write_text(rules_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETPAGER_")}
        env.update(
            {
                "TICKETPAGER_DATABASE_URL": f"sqlite:///{tmp}/idle.db",
                "TICKETPAGER_RULES_PATH": f"{tmp}/rules.yaml",
                "TICKETPAGER_JIRA__WEBHOOK_SECRETS": SECRET,
                "TICKETPAGER_PORT": str(port),
                "TICKETPAGER_LOG_LEVEL": "WARNING",
                "TICKETPAGER_DRY_RUN": "true",
                **(extra or {}),
            }
        )
        log = (Path(tmp) / "serve.log").open("wb")
        counts = Path(tmp) / "counts.json"
        env["IDLE_COUNTS"] = str(counts)
        shim = (COUNTS_SHIM if statements is not None else "") + SHIM
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", shim], env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            try:
                wait_ready(port)
            except RuntimeError:
                raise RuntimeError((Path(tmp) / "serve.log").read_text()[-3000:]) from None
            time.sleep(settle)
            counted = _statements(proc, counts) if statements is not None else {}
            before, slept, t0 = thread_cpu(proc.pid), thread_sleeps(proc.pid), time.perf_counter()
            if rate > 0:
                load = int(rate * seconds)
                loadgen.open_loop("127.0.0.1", port, lambda i: webhook(port, i, i % page_every == 0), rate, load)
                time.sleep(1.0)  # the last changes and pages
            else:
                time.sleep(seconds)
            after, woke, wall = thread_cpu(proc.pid), thread_sleeps(proc.pid), time.perf_counter() - t0
            if statements is not None:
                for key, n in _statements(proc, counts).items():
                    if n > counted.get(key, 0):
                        statements[key.replace("ticketpager-", "")] = n - counted.get(key, 0)
            for name, mean in histogram_means(port).items():
                print(f"  mean {name}: {mean:.2f}")
        finally:
            stop(proc)
            log.close()
    wakeups = {name: woke[name] - slept.get(name, 0) for name in woke}
    return {name: after[name] - before.get(name, 0.0) for name in after}, wall, wakeups


def _statements(proc: subprocess.Popen[bytes], counts: Path) -> dict[str, int]:
    """The server's statement and commit counts so far (COUNTS_SHIM writes them on SIGUSR1)."""
    counts.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return dict(json.loads(counts.read_text()))
        except (OSError, ValueError):  # not written yet, or half written
            time.sleep(0.05)
    raise RuntimeError("serve did not write its statement counts")


#: the histograms whose mean per observation tells how the fixed costs are shared (absent in older trees)
BATCH_HISTOGRAMS = ("ticketpager_engine_batch_changes", "ticketpager_webhook_commit_requests")


def histogram_means(port: int) -> dict[str, float]:
    """The mean of each of :data:`BATCH_HISTOGRAMS` that the server exports, from its ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310 - local
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in BATCH_HISTOGRAMS:
            values[name] = float(value)
    return {
        name: values[f"{name}_sum"] / values[f"{name}_count"]
        for name in BATCH_HISTOGRAMS
        if values.get(f"{name}_count")
    }


def _setting(item: str) -> tuple[str, str]:
    """``NAME=VALUE`` as the environment variable ``serve`` reads: ``TICKETPAGER_`` is added where missing (a
    ``DRY_RUN=false`` without it set nothing, so the measured ``serve`` stayed a dry run)."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"--set {item!r}: expected NAME=VALUE, e.g. DRY_RUN=false")
    name = name.upper()
    return (name if name.startswith("TICKETPAGER_") else f"TICKETPAGER_{name}"), value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--root", type=Path, default=ROOT, help="the code tree to run serve from")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a setting, with or without TICKETPAGER_"
    )
    parser.add_argument("--rate", type=float, default=0.0, help="webhooks/s during the window (0: idle)")
    parser.add_argument("--page-every", type=int, default=10, help="under --rate: 1 webhook in N pages")
    parser.add_argument("--statements", action="store_true", help="count SQL statements and commits per thread")
    args = parser.parse_args(argv)
    extra = dict(_setting(item) for item in args.set)
    statements: dict[str, int] | None = {} if args.statements else None
    used, wall, wakeups = measure(
        args.root, args.seconds, extra=extra, rate=args.rate, page_every=args.page_every, statements=statements
    )
    total = sum(used.values())
    what = f"serve at {args.rate:g} webhooks/s" if args.rate else "idle serve"
    print(
        f"{what}, {wall:.1f} s: {total / wall:.4f} cores ({total * 1000 / wall:.2f} CPU-ms/s),"
        f" {sum(wakeups.values()) / wall:.1f} wake-ups/s"
    )
    for name, cpu in sorted(used.items(), key=lambda kv: -kv[1]):
        print(f"  {name:16}{cpu * 1000 / wall:8.2f} CPU-ms/s{wakeups.get(name, 0) / wall:8.1f} wake-ups/s")
    if statements is not None:
        print("SQL statements (an executemany is one) and commits in the window, per thread (delivery workers summed):")
        summed: dict[str, int] = {}
        for key, n in statements.items():
            name, word = key.rsplit(" ", 1)
            name = "delivery" if name.startswith("delivery-") else name
            summed[f"{name} {word}"] = summed.get(f"{name} {word}", 0) + n
        for key, n in sorted(summed.items()):
            print(f"  {key:32}{n:8d}")


if __name__ == "__main__":
    main()
