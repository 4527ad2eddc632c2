"""docs/operations.md's metrics table lists every metric ticketpager exposes, each as a row of the one table
(a paragraph inside it cut the rows after it out of the table)."""

from __future__ import annotations

import re
from pathlib import Path

from sync.metrics import Metrics

OPERATIONS = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()


def _table_rows() -> list[str]:
    """The rows of the table whose header is `| Metric | Type / labels | Meaning |`, up to its first non-row."""
    lines = OPERATIONS.splitlines()
    start = lines.index("| Metric | Type / labels | Meaning |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_every_exposed_metric_is_a_row_of_the_metrics_table() -> None:
    documented = {m.group(1) for row in _table_rows() if (m := re.match(r"\| `([a-z_*]+)`", row))}
    exposed = {family.name for family in Metrics().registry.collect() if family.name.startswith("ticketpager_")}
    # prometheus_client names a counter family without its `_total`; an Info family without its `_info`
    names = {n + "_total" if n + "_total" in documented else n for n in exposed}
    names = {n + "_info" if n + "_info" in documented else n for n in names}
    assert names - documented == set(), "exposed but not in the metrics table"
    assert "process_*" in documented
