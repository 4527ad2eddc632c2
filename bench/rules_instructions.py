"""Instructions per rule evaluation, counted by callgrind: an A/B between two commits that this VM's noise
cannot blur (its CPU speed swings by ±40 % between runs; instruction counts do not move).

    for n in 0 2; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/rules_instructions.py $n 2>&1 | grep Collected; done

(second count − first) / (2 × 5,000) = instructions per evaluation of the bench_rules.py workload, the set-up
(imports, rule loading, one warm pass) cancelled out. ``python bench/rules_instructions.py N naive`` counts
the naive interpreter of bench_rules.py the same way: the ratio of the two is the speed-up on any machine.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_rules import NOW, Naive, make_rules, make_tickets, path_text_rules  # noqa: E402
from rules import EvalContext, load_rules  # noqa: E402


def main() -> None:
    passes = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rng = random.Random(42)
    rules = make_rules(rng)
    tickets = make_tickets(rng, 5000)
    ruleset = load_rules(path_text_rules(rules), env={})
    if sys.argv[2:] == ["naive"]:
        naive = Naive(rules)
        for _ in range(passes + 1):  # the same number of passes as below, the warm one included
            for t in tickets:
                naive.evaluate(t)
        return
    for t in tickets:  # warm: every layout made
        ruleset.evaluate(EvalContext(t, None, (), NOW))
    for _ in range(passes):
        for t in tickets:
            ruleset.evaluate(EvalContext(t, None, (), NOW))


if __name__ == "__main__":
    main()
