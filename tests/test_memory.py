"""The process keeps no per-ticket state in memory: processing thousands of distinct tickets more leaves the
Python heap (tracemalloc) where it was. State lives in the database, caches are bounded."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

from sync.clock import FakeClock
from sync.model import StatusCategory
from tests.factories import ROUTING_KEY, RULES, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive


def test_memory_does_not_grow_with_the_number_of_tickets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    with MockPagerDuty() as pd:
        svc = make_service(f"sqlite:///{tmp_path / 'tp.db'}", rules, pd.url, FakeClock(), dry_run=True)

        def wave(start: int, count: int) -> None:
            for first in range(start, start + count, 250):
                batch = []
                for i in range(first, first + 250):
                    batch.append(change(ticket(str(i), priority="Highest" if i % 2 else "Low")))
                    batch.append(change(ticket(str(i), minutes=1, status="Done", category=StatusCategory.DONE)))
                receive(svc, batch)
                svc.process_all()

        wave(0, 500)  # warm-up: imports, compiled statements, rule caches
        gc.collect()
        tracemalloc.start()
        try:
            wave(500, 500)
            gc.collect()
            after_1k, _ = tracemalloc.get_traced_memory()
            wave(1000, 2000)
            gc.collect()
            after_3k, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert svc.store.status().tickets == 3000 and pd.requests == []
        growth = after_3k - after_1k
        assert growth < 2000 * 100, f"{growth} bytes more after 2,000 more tickets ({growth / 2000:.0f} B/ticket)"
        svc.store.dispose()
