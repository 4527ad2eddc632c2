"""50 named connections in one ``serve`` process (issue 17, item 6): 30 Zendesk, 15 ServiceNow and 5 Jira
connections, each against its own local fake (tests/fakes), one of them hanging (every request held 30 s:
the connector's 10 s timeout fires) and one slow (every answer after ``--slow-seconds``).

Run from the repository root:  python -m bench.connections [--seconds 90] [--interval 60] [--rounds 1]

Three ``serve`` runs per round, each on a fresh SQLite file, the same connections file shape, the same
webhook load (signed Jira ``issue_created`` webhooks to the 4 healthy Jira connections' own paths at
``--rate``/s, every one paging), the same duration:

* ``bad``: all 50 poll, one hanging and one slow;
* ``healthy``: all 50 poll, none bad (the baseline for page latency);
* ``no-poll``: the same 50 connections without API credentials (webhooks only: nothing polls; the
  baseline for threads, RSS and CPU).

Printed per run: requests to the fakes per 1 s bucket (max vs mean over the run, after the first
``--interval`` too), webhook → page latency (post to the PagerDuty mock's arrival) p50/p99/max, the
process's threads and RSS (``/proc/<pid>/status``), its CPU (utime + stime), poll cycles, and the CPU per
poll cycle above the no-poll run. The fakes, the load and the mock run in this process and are not counted.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_ingest import free_port, jira_payload, stop, wait_ready
from bench.pipeline import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
ZENDESK, SERVICENOW, JIRA = 30, 15, 5
HANGING = "zd-00"  # every request held 30 s (the connector's timeout_seconds is 10)
SLOW = "sn-00"  # every answer after --slow-seconds
HANG_SECONDS = 30.0
KEYS = 10  # pages spread over 10 routing keys: each stays under PagerDuty's 120 events/minute per key


def routing_key(k: int) -> str:
    return f"benchconnections{k:02d}".ljust(32, "0")


RULES = "version: 1\nrules:\n" + "".join(
    f"""  - name: bench-p{k:02d}
    source: jira
    when: {{project: P{k:02d}, priority: Highest}}
    trigger:
      routing_key: {routing_key(k)}
      severity: critical
      summary: "[{{{{ ticket.key }}}}] {{{{ ticket.title }}}}"
"""
    for k in range(KEYS)
)
GOOD = {f"zd-{i:02d}" for i in range(1, ZENDESK)} | {f"sn-{i:02d}" for i in range(1, SERVICENOW)}
GOOD |= {f"jira-{i:02d}" for i in range(JIRA)}
_TICKET_ID = re.compile(r"\b1\d{5,}\b")  # jira_payload: issue id 100000 + n


def secret(name: str) -> str:
    return f"bench-secret-{name}"


@dataclass
class Fakes:
    """The 50 fake vendor instances, each on its own local socket, with a timestamp per request."""

    urls: dict[str, str] = field(default_factory=dict)
    hits: dict[str, list[float]] = field(default_factory=dict)
    creds: dict[str, dict[str, str]] = field(default_factory=dict)
    ca_bundle: str = ""
    bad: set[str] = field(default_factory=set)
    slow_seconds: float = 3.0

    def _timed(self, name: str, handle: Callable[..., Any]) -> Callable[..., Any]:
        stamps = self.hits.setdefault(name, [])

        def run(*args: Any, **kwargs: Any) -> Any:
            stamps.append(time.monotonic())
            if name in self.bad and name == HANGING:
                time.sleep(HANG_SECONDS)  # the client gave up long ago: answer nothing
                return (503, {}, b"") if name.startswith("sn-") else (503, {"error": "hung"})
            if name in self.bad and name == SLOW:
                time.sleep(self.slow_seconds)
            return handle(*args, **kwargs)

        return run

    def _timed_zendesk(self, name: str, handle: Callable[..., Any]) -> Callable[..., Any]:
        stamps = self.hits.setdefault(name, [])

        def run(request: Any, method: str) -> None:
            stamps.append(time.monotonic())
            if name in self.bad and name == HANGING:
                time.sleep(HANG_SECONDS)
                return
            if name in self.bad and name == SLOW:
                time.sleep(self.slow_seconds)
            try:
                handle(request, method)
            except OSError:  # the client timed out and closed
                pass

        return run

    def reset(self) -> None:
        for stamps in self.hits.values():
            stamps.clear()


@contextmanager
def running_fakes(tmp: Path) -> Iterator[Fakes]:
    sys.path.insert(0, str(ROOT))
    from tests.fakes.jira_server import FakeJira
    from tests.fakes.servicenow_server import FakeInstance, FakeServiceNowServer
    from tests.fakes.zendesk_server import FakeZendesk

    fakes = Fakes()
    with ExitStack() as stack:
        for i in range(ZENDESK):
            name = f"zd-{i:02d}"
            zd = stack.enter_context(FakeZendesk(email=f"api@{name}.example", token=f"tok-{name}"))
            zd._handle = fakes._timed_zendesk(name, zd._handle)  # type: ignore[method-assign]
            fakes.urls[name] = zd.url
            fakes.creds[name] = {"system": "zendesk", "url": zd.url, "email": zd.email, "api_token": zd.token}
        pems = []
        for i in range(SERVICENOW):
            name = f"sn-{i:02d}"
            inst = FakeInstance(username=f"user-{name}", password=f"pw-{name}")
            inst.handle = fakes._timed(name, inst.handle)  # type: ignore[method-assign]
            (tmp / name).mkdir()
            sn = stack.enter_context(FakeServiceNowServer(inst, str(tmp / name)))
            pems.append(Path(sn.ca_pem).read_text())
            fakes.urls[name] = sn.url
            fakes.creds[name] = {
                "system": "servicenow",
                "instance_url": sn.url,
                "username": inst.username,
                "password": inst.password,
            }
        bundle = tmp / "ca-bundle.pem"
        bundle.write_text("".join(pems))
        fakes.ca_bundle = str(bundle)
        for i in range(JIRA):
            name = f"jira-{i:02d}"
            jira = stack.enter_context(FakeJira())
            jira._route = fakes._timed(name, jira._route)  # type: ignore[method-assign]
            fakes.urls[name] = jira.url
            fakes.creds[name] = {
                "system": "jira",
                "url": jira.url,
                "email": "bot@example.com",
                "api_token": f"tok-{name}",
                "jql": "project = OPS",
            }
        yield fakes


def connections_yaml(fakes: Fakes, *, poll: bool, interval: float) -> str:
    lines = ["version: 1", "connections:"]
    for name, creds in fakes.creds.items():
        lines += [f"  - name: {name}", f"    system: {creds['system']}"]
        for key, value in creds.items():
            if key == "system":
                continue
            if not poll and key in ("api_token", "password", "username", "email"):
                continue  # webhooks only: nothing polls
            lines.append(f'    {key}: "{value}"')
        lines += [f"    poll_interval_seconds: {interval}", "    webhook_secrets:", f'      - "{secret(name)}"']
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    label: str
    seconds: float
    requests: dict[str, list[float]]
    latencies_ms: list[float]
    sent: int
    paged: int
    threads: int
    rss_mib: float
    hwm_mib: float
    cpu: float
    interval: float

    def buckets(self, skip: float = 0.0) -> tuple[int, float]:
        """(max, mean) requests to all fakes per 1 s bucket, from ``skip`` s after the start to the end."""
        counts = [0] * int(self.seconds)
        for stamps in self.requests.values():
            for at in stamps:
                if skip <= at < self.seconds:
                    counts[int(at)] += 1
        counts = counts[int(skip) :]
        return (max(counts), statistics.fmean(counts)) if counts else (0, 0.0)

    def cycles(self, names: set[str] | None = None) -> int:
        """Poll cycles (of ``names``, default all): runs of requests to one fake separated by more than 5 s."""
        total = 0
        for name, stamps in self.requests.items():
            if names is not None and name not in names:
                continue
            last = None
            for at in sorted(stamps):
                if last is None or at - last > 5.0:
                    total += 1
                last = at
        return total

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(int(p * len(xs)), len(xs) - 1)] if xs else float("nan")


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def one_run(label: str, fakes: Fakes, *, poll: bool, bad: bool, args: argparse.Namespace) -> Run:
    sys.path.insert(0, str(ROOT))
    from tests.fakes.pagerduty_server import MockPagerDuty

    fakes.bad = {HANGING, SLOW} if bad else set()
    fakes.slow_seconds = args.slow_seconds
    with tempfile.TemporaryDirectory(prefix="bench-connections-") as tmpdir, MockPagerDuty() as pd:
        tmp = Path(tmpdir)
        (tmp / "rules.yaml").write_text(RULES)
        (tmp / "connections.yaml").write_text(connections_yaml(fakes, poll=poll, interval=args.interval))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETPAGER_")}
        env.update(
            {
                "TICKETPAGER_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
                "TICKETPAGER_RULES_PATH": str(tmp / "rules.yaml"),
                "TICKETPAGER_CONNECTIONS_FILE": str(tmp / "connections.yaml"),
                "TICKETPAGER_PORT": str(port),
                "TICKETPAGER_LOG_LEVEL": "CRITICAL",
                "TICKETPAGER_PAGERDUTY__EVENTS_URL": pd.url,
                "REQUESTS_CA_BUNDLE": fakes.ca_bundle,
            }
        )
        log = (tmp / "serve.log").open("wb")
        started = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "ticketpager.cli", "serve"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            try:
                wait_ready(port, timeout=180)
                print(f"  {label}: serve ready after {time.monotonic() - started:.1f} s", flush=True)
            except RuntimeError:
                log.flush()
                raise RuntimeError(f"serve did not start:\n{(tmp / 'serve.log').read_text()[-3000:]}") from None
            fakes.reset()
            t0 = time.monotonic()
            cpu0 = cpu_seconds(proc.pid)
            posted: dict[int, float] = {}
            healthy_jira = [f"jira-{i:02d}" for i in range(1, JIRA)]
            n = 0
            while (now := time.monotonic()) < t0 + args.seconds:
                due = t0 + n / args.rate
                if due > now:
                    time.sleep(due - now)
                name = healthy_jira[n % len(healthy_jira)]
                body = jira_payload(args.id_base + n, project=f"P{n % KEYS:02d}", priority="Highest")
                sig = hmac.new(secret(name).encode(), body, hashlib.sha256).hexdigest()
                request = urllib.request.Request(  # noqa: S310 - loopback
                    f"http://127.0.0.1:{port}/webhooks/jira/{name}",
                    data=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-Hub-Signature": f"sha256={sig}",
                        "X-Atlassian-Webhook-Identifier": f"bench-{label}-{n}",
                    },
                )
                posted[100000 + args.id_base + n] = time.perf_counter()
                with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                    answer.read()
                n += 1
            status = proc_status(proc.pid)
            cpu = cpu_seconds(proc.pid) - cpu0
            deadline = time.monotonic() + 30
            while len(pd.events) < len(posted) and time.monotonic() < deadline:
                time.sleep(0.1)
            latencies = []
            for event, arrived in zip(list(pd.events), list(pd.arrivals), strict=False):
                found = _TICKET_ID.search(str(event.get("dedup_key", "")))
                if found and int(found.group()) in posted:
                    latencies.append((arrived - posted[int(found.group())]) * 1000)
        finally:
            stop(proc)
            if os.environ.get("BENCH_KEEP_LOG"):
                print((tmp / "serve.log").read_text()[-6000:])
            log.close()
        requests = {name: [at - t0 for at in stamps] for name, stamps in fakes.hits.items()}
        return Run(
            label,
            args.seconds,
            requests,
            latencies,
            len(posted),
            len(latencies),
            status.get("Threads", 0),
            status.get("VmRSS", 0) / 1024,
            status.get("VmHWM", 0) / 1024,
            cpu,
            args.interval,
        )


def report(runs: list[Run], print_: Callable[[str], None] = print) -> dict[str, Any]:
    print_(
        "| run | threads | RSS MiB (peak) | CPU s | poll cycles (48 good ones) "
        "| requests per 1 s: max · mean (after the 1st interval) | webhook→page p50 / p99 / max ms | paged/sent |"
    )
    print_("|---|---|---|---|---|---|---|---|")
    for r in runs:
        mx, mean = r.buckets()
        mx2, mean2 = r.buckets(skip=r.interval)
        print_(
            f"| {r.label} | {r.threads} | {r.rss_mib:.1f} ({r.hwm_mib:.1f}) | {r.cpu:.2f} "
            f"| {r.cycles()} ({r.cycles(GOOD)}) "
            f"| {mx} · {mean:.2f} ({mx2} · {mean2:.2f}) | {r.pct(0.5):.1f} / {r.pct(0.99):.1f} / "
            f"{max(r.latencies_ms, default=float('nan')):.1f} | {r.paged}/{r.sent} |"
        )
    out: dict[str, Any] = {}
    rounds = sorted({r.label.split("#")[1] for r in runs if "#" in r.label})
    for rnd in rounds:
        by = {r.label.split("#")[0]: r for r in runs if r.label.endswith(f"#{rnd}")}
        if not {"bad", "healthy", "no-poll"} <= set(by):
            continue
        bad, ok, base = by["bad"], by["healthy"], by["no-poll"]
        out[rnd] = figures = {
            "p50_ratio": bad.pct(0.5) / ok.pct(0.5),
            "p99_ratio": bad.pct(0.99) / ok.pct(0.99),
            "threads_added": ok.threads - base.threads,
            "rss_added_mib": ok.rss_mib - base.rss_mib,
            "cpu_ms_per_cycle": (ok.cpu - base.cpu) / max(ok.cycles(), 1) * 1000,
        }
        print_(
            f"round {rnd}: bad/healthy webhook→page p50 {figures['p50_ratio']:.2f}×, p99 {figures['p99_ratio']:.2f}× · "
            f"polling adds {figures['threads_added']} threads, {figures['rss_added_mib']:.1f} MiB RSS over no-poll · "
            f"{figures['cpu_ms_per_cycle']:.1f} CPU-ms per poll cycle (healthy − no-poll)"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="length of each run")
    parser.add_argument("--interval", type=float, default=60.0, help="every connection's poll interval")
    parser.add_argument("--rate", type=float, default=5.0, help="paging webhooks per second")
    parser.add_argument("--slow-seconds", type=float, default=3.0, help="the slow instance's answer delay")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-fakes-") as tmp, running_fakes(Path(tmp)) as fakes:
        for rnd in range(args.rounds):
            order = [("bad", True, True), ("healthy", True, False), ("no-poll", False, False)]
            if rnd % 2:
                order.reverse()
            for label, poll, bad in order:
                args.id_base = len(runs) * 10_000
                runs.append(one_run(f"{label}#{rnd}", fakes, poll=poll, bad=bad, args=args))
                print(f"… {runs[-1].label} done", flush=True)
    report(runs)


if __name__ == "__main__":
    main()
