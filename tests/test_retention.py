"""Retention: customer data in the decision log and in stored change payloads is pruned after N days;
what the lifecycle still needs (pending work, tickets, incident links, unsent events) is kept."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kernel.clock import FakeClock
from sync.schema import changes, decisions, links, outbox, tickets
from tests.factories import ROUTING_KEY, RULES, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive


def count(svc: object, table: object) -> int:
    with svc.store.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_prune_drops_old_payloads_and_decisions_only(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    clock = FakeClock()
    with MockPagerDuty() as pd:
        svc = make_service(db_url, rules, pd.url, clock)
        receive(svc, [change(ticket("1"))])  # processed and delivered: old news after 31 days
        svc.process_all()
        old_ticket_pending = change(ticket("2", minutes=1))
        pd.fail_next(100, 500)
        receive(svc, [old_ticket_pending])
        svc.process_all()  # its trigger is still being retried: must survive retention
        clock.advance(31 * 86400)
        receive(svc, [change(ticket("3", minutes=60 * 24 * 31))])  # fresh, not yet processed
        deleted_decisions, deleted_changes = svc.store.prune(clock.now() - timedelta(days=30), chunk=1)
        assert deleted_decisions == 2 and deleted_changes == 2
        assert count(svc, changes) == 1, "the unprocessed change is kept"
        assert count(svc, decisions) == 0
        assert count(svc, tickets) == 2 and count(svc, links) == 2
        with svc.store.engine.connect() as conn:
            statuses = sorted(conn.execute(select(outbox.c.status)).scalars())
        assert statuses == ["pending"], "sent events are pruned, pending ones never"
        svc.store.dispose()
