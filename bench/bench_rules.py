"""Rule evaluation speed: our compiled, indexed engine vs a naive interpreter of the same 50 rules.

50 rules × 3 conditions (equals, in over 5 values, regex), spread over jira/zendesk/servicenow/any,
evaluated against 300 realistic tickets (titles, priorities and statuses as each vendor has them).
One "evaluation" = one ticket against the whole rule set, producing a verdict and its explanation for every
rule. Both engines are checked to agree on every verdict first. Rendering a matched rule's trigger is not
part of an evaluation in either engine (ticketpager renders lazily, only when an incident is actually
triggered); its cost is measured on its own line.

Usage: python bench/bench_rules.py [--seconds 1.0] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors import registry  # noqa: E402, F401  (declares the systems' rule fields, as the application does)
from kernel.model import StatusCategory, Ticket  # noqa: E402
from rules import EvalContext, load_rules  # noqa: E402
from rules.templates import compile_template, template_context  # noqa: E402

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
PRIORITIES = {
    "jira": ["Highest", "High", "Medium", "Low", "Lowest", "P1", "P2", "P3"],
    "zendesk": ["urgent", "high", "normal", "low"],
    "servicenow": ["1 - Critical", "2 - High", "3 - Moderate", "4 - Low", "5 - Planning"],
}
STATUSES = {
    "jira": ["To Do", "In Progress", "In Review", "Blocked", "Done", "Reopened"],
    "zendesk": ["new", "open", "pending", "hold", "solved", "closed"],
    "servicenow": ["New", "In Progress", "On Hold", "Resolved", "Closed", "Canceled"],
}
GROUPS = ["Network", "Database", "Service Desk", "Platform", "Payments", "Identity", "EU Support", "US Support"]
ORGS = ["Globex", "Initech", "Umbrella", "Hooli", "Acme", "Stark", "Wayne", None]
WORDS = [
    "checkout",
    "payment",
    "login",
    "database",
    "502",
    "timeout",
    "EU-West",
    "EU-East",
    "latency",
    "error rate 5%",
    "disk full",
    "certificate",
    "DNS",
    "outage",
    "slow",
    "export",
    "invoice",
]
PATTERNS = [
    r"\b502\b",
    r"(?i)checkout|payment",
    r"EU-(West|East)",
    r"error rate .*%",
    r"(?i)\bdatabase\b",
    r"(?i)outage|down",
    r"timeout",
    r"(?i)certificate|tls",
]


def make_tickets(rng: random.Random, n: int) -> list[Ticket]:
    out = []
    for i in range(n):
        source = rng.choice(list(PRIORITIES))
        status = rng.choice(STATUSES[source])
        category = {0: StatusCategory.NEW, 1: StatusCategory.IN_PROGRESS}.get(
            STATUSES[source].index(status) // 2, StatusCategory.DONE
        )
        title = " ".join(rng.sample(WORDS, 4)) + f" #{i}"
        out.append(
            Ticket(
                source=source,
                id=str(i),
                key=f"T-{i}",
                title=title,
                status=status,
                status_category=category,
                updated=NOW - timedelta(minutes=rng.randint(0, 600)),
                created=NOW - timedelta(hours=rng.randint(1, 48)),
                url=f"https://example.test/{i}",
                description=" ".join(rng.choices(WORDS, k=150)),
                priority=rng.choice(PRIORITIES[source]),
                assignee=rng.choice([None, "al", "bo"]),
                assignment_group=rng.choice(GROUPS),
                organization=rng.choice(ORGS),
                labels=tuple(rng.sample(["vip", "customer-impact", "infra", "billing"], rng.randint(0, 2))),
            )
        )
    return out


def make_rules(rng: random.Random) -> list[dict[str, Any]]:
    rules = []
    for i in range(50):
        source = rng.choice(["jira", "jira", "zendesk", "servicenow", "any"])
        prio_source = source if source != "any" else rng.choice(list(PRIORITIES))
        eq_field, eq_value = rng.choice(
            [
                ("priority", rng.choice(PRIORITIES[prio_source])),
                ("assignment_group", rng.choice(GROUPS)),
                ("status_category", rng.choice(["new", "in_progress"])),
            ]
        )
        in_field, in_values = rng.choice(
            [
                ("status", rng.sample(STATUSES[prio_source], 5)),
                ("organization", rng.sample([o for o in ORGS if o], 5)),
                ("assignment_group", rng.sample(GROUPS, 5)),
            ]
        )
        if in_field == eq_field:
            in_field, in_values = "status", rng.sample(STATUSES[prio_source], 5)
        rules.append(
            {
                "name": f"rule-{i:02d}",
                "source": source,
                "when": {
                    eq_field: eq_value,
                    in_field: {"in": in_values},
                    rng.choice(["title", "title", "title", "description"]): {"regex": rng.choice(PATTERNS)},
                },
                "trigger": {
                    "routing_key": f"key-{i:02d}-0123456789abcdef",
                    "severity": "error",
                    "summary": "[{{ ticket.key }}] {{ ticket.title }}",
                },
            }
        )
    return rules


class Naive:
    """Walks the rule dicts for every ticket: ``if op == ... elif``, lists scanned, ``re.search`` by string."""

    def __init__(self, rules: list[dict[str, Any]]) -> None:
        self.rules = rules
        self.summary = {r["name"]: compile_template(r["trigger"]["summary"]) for r in rules}

    @staticmethod
    def value(ticket: Ticket, name: str) -> Any:
        value = getattr(ticket, name)
        return value.value if isinstance(value, StatusCategory) else value

    def evaluate(self, ticket: Ticket) -> list[tuple[str, bool, bool, str, str | None]]:
        out: list[tuple[str, bool, bool, str, str | None]] = []
        shadow = False
        for rule in self.rules:
            if rule["source"] not in ("any", ticket.source):
                out.append(
                    (rule["name"], False, False, f"source is {ticket.source}, rule wants {rule['source']}", None)
                )
                continue
            why = ""
            for name, cond in rule["when"].items():
                value = self.value(ticket, name)
                if not isinstance(cond, dict):
                    ok = value == cond
                elif "in" in cond:
                    ok = value in cond["in"]
                elif "regex" in cond:
                    ok = isinstance(value, str) and re.search(cond["regex"], value) is not None
                else:
                    ok = False
                if not ok:
                    why = f"{name}: {value!r} fails {cond!r}"
                    break
            matched = not why and not shadow
            if matched:
                shadow = True
            out.append((rule["name"], True, matched, why, None))
        return out

    def render(self, ticket: Ticket, name: str) -> str:
        return self.summary[name].render(template_context(ticket, name, "", (), NOW))


_TMP = tempfile.TemporaryDirectory()


def path_text_rules(rules: list[dict[str, Any]]) -> Path:
    path = Path(_TMP.name) / "bench.yaml"
    path.write_text(json.dumps({"version": 1, "rules": rules}))
    return path


def measure(fn: Any, tickets: list[Ticket], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while True:
        for t in tickets:
            fn(t)
        count += len(tickets)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(42)
    rules = make_rules(rng)
    tickets = make_tickets(rng, 5000)
    ruleset = load_rules(path_text_rules(rules), env={})
    naive = Naive(rules)

    def ours(ticket: Ticket) -> Any:
        return ruleset.evaluate(EvalContext(ticket, None, (), NOW))

    matched = 0
    for t in tickets:  # both must agree on every verdict before any timing counts
        a = [(r.rule, r.applies, r.matched) for r in ours(t)]
        b = [(n, applies, m) for n, applies, m, _, _ in naive.evaluate(t)]
        assert a == b, (t.key, [x for x in zip(a, b, strict=True) if x[0] != x[1]])
        matched += sum(1 for r in a if r[2])
    naive_runs, ours_runs = [], []
    for _ in range(args.runs):  # interleaved so drift hits both alike
        naive_runs.append(measure(naive.evaluate, tickets, args.seconds))
        ours_runs.append(measure(ours, tickets, args.seconds))
    n, o = statistics.median(naive_runs), statistics.median(ours_runs)
    print(
        f"python {sys.version.split()[0]}, 50 rules x 3 conditions, {len(tickets)} tickets, "
        f"{matched} matches ({matched / len(tickets):.2f} per ticket), median of {args.runs} x {args.seconds:.1f}s"
    )
    for label, value, runs in (("naive interpreter", n, naive_runs), ("ticketpager rules", o, ours_runs)):
        print(
            f"{label} : {value:>10,.0f} evaluations/s ({1e6 / value:6.1f} us), "
            f"{value * 50:>12,.0f} rule verdicts/s, range {min(runs):,.0f}-{max(runs):,.0f}"
        )
    print(f"ratio             : {o / n:.2f}x   (goal >= 100,000/s and >= 1.5x)")
    keys = sum(len(plan.cache) for plan in ruleset._plans.values())
    cold = load_rules(path_text_rules(rules), env={})
    start = time.perf_counter()
    for t in tickets:  # every ticket once, starting from an empty cache
        cold.evaluate(EvalContext(t, None, (), NOW))
    cold_rate = len(tickets) / (time.perf_counter() - start)
    print(
        f"index-layout cache: {keys} distinct keys (indexed field values) for {len(tickets)} tickets; "
        f"one cold pass over all tickets: {cold_rate:,.0f} evaluations/s"
    )
    matched_results = [r for t in tickets for r in ours(t) if r.matched]

    def render_all() -> None:
        for t in tickets:
            for r in ours(t):
                if r.matched:
                    r.trigger  # noqa: B018 - force the lazy render

    start = time.perf_counter()
    render_all()
    with_render = time.perf_counter() - start
    start = time.perf_counter()
    for t in tickets:
        ours(t)
    without = time.perf_counter() - start
    per_render = (with_render - without) / max(len(matched_results), 1)
    print(f"rendering a matched trigger (paid only when an incident is triggered): {per_render * 1e6:.1f} us each")


if __name__ == "__main__":
    main()
