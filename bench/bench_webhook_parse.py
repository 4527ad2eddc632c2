"""CPU per webhook of the parse path alone (verify, parse, normalize, serialize the row to store), no HTTP.

Run from the repository root:  python -m bench.bench_webhook_parse [--n 20000] [--baseline DIR]

``--baseline DIR`` runs the same loop on another checkout of ticketpager (e.g. ``git archive`` of the
commit before a change) in a subprocess, alternating runs, and prints the ratio: the cost of checks added
to the hot path (issue 13: the range check of every ticket's timestamps, the stricter JSON) measured in
one run on one machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-webhook-secret"

LOOP = r"""
import hashlib, hmac, json, sys, time
from pathlib import Path
from connectors.jira import JiraConnector
from ticketpager.settings import JiraSettings
from sync.store import Store
n, secret = int(sys.argv[1]), sys.argv[2]
doc = json.loads((Path("tests/fixtures/jira/webhook_issue_updated_done.json")).read_text())
bodies = []
for i in range(n):
    doc["issue"]["id"] = str(100000 + i)
    bodies.append(json.dumps(doc).encode())
conn = JiraConnector(JiraSettings(enabled=True, webhook_secrets=[secret]))
store = Store("sqlite://")
headers = [{"x-hub-signature": "sha256=" + hmac.new(secret.encode(), b, hashlib.sha256).hexdigest(),
            "x-atlassian-webhook-identifier": str(i)} for i, b in enumerate(bodies)]
start = time.process_time()
for h, b in zip(headers, bodies):
    conn.verify_webhook(h, b)
    store.webhook_rows(conn.parse_webhook(h, b).changes)
print(time.process_time() - start)
"""


def run(tree: Path, n: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", LOOP, str(n), SECRET], cwd=tree, env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    ours: list[float] = []
    base: list[float] = []
    for _ in range(args.rounds):
        ours.append(run(ROOT, args.n))
        if args.baseline:
            base.append(run(args.baseline, args.n))
    per = min(ours) / args.n * 1e6
    print(f"this tree: {per:.1f} µs CPU per webhook (best of {args.rounds} x {args.n})")
    if base:
        per_base = min(base) / args.n * 1e6
        print(f"baseline:  {per_base:.1f} µs CPU per webhook; ratio {per / per_base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
