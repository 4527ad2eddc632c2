"""Several replicas on one PostgreSQL: leases hand singleton jobs over, each outbox row is delivered by
exactly one replica, and two engines never race on one ticket. PostgreSQL only."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from kernel.clock import FakeClock, SystemClock
from kernel.model import StatusCategory
from sync.repos.cursors import acquire_lease, release_lease
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager.service import Service

pytestmark = pytest.mark.postgres


def replicas(postgres_url: str, rules_path: Path, pd: MockPagerDuty, n: int = 2) -> list[Service]:
    return [
        make_service(postgres_url, rules_path, pd.url, SystemClock(),  # type: ignore[arg-type]
                     pagerduty={"rate_limit_per_minute": 100_000})
        for _ in range(n)
    ]


def test_lease_is_exclusive_and_taken_over_after_expiry(postgres_url: str, rules_path: Path,
                                                        pd: MockPagerDuty) -> None:
    clock = FakeClock()
    svc = make_service(postgres_url, rules_path, pd.url, clock)
    with svc.store.begin() as conn:
        assert acquire_lease(conn, "poll:jira", "replica-a", clock.now(), 30)
        assert not acquire_lease(conn, "poll:jira", "replica-b", clock.now(), 30)
        assert acquire_lease(conn, "poll:jira", "replica-a", clock.now(), 30), "the holder renews"
    clock.advance(29)
    with svc.store.begin() as conn:
        assert not acquire_lease(conn, "poll:jira", "replica-b", clock.now(), 30)
    clock.advance(2)  # replica-a died: no renewal; its lease ran out
    with svc.store.begin() as conn:
        assert acquire_lease(conn, "poll:jira", "replica-b", clock.now(), 30)
        assert not acquire_lease(conn, "poll:jira", "replica-a", clock.now(), 30)
        release_lease(conn, "poll:jira", "replica-b")
        assert acquire_lease(conn, "poll:jira", "replica-a", clock.now(), 30), "a released lease is free"
    svc.store.dispose()


def test_concurrent_lease_attempts_have_one_winner(postgres_url: str, rules_path: Path, pd: MockPagerDuty) -> None:
    services = replicas(postgres_url, rules_path, pd, 4)
    winners: list[str] = []
    barrier = threading.Barrier(len(services))

    def contend(i: int, svc: Service) -> None:
        barrier.wait()
        with svc.store.begin() as conn:
            if acquire_lease(conn, "recheck", f"r{i}", svc.clock.now(), 30):
                winners.append(f"r{i}")

    threads = [threading.Thread(target=contend, args=(i, s)) for i, s in enumerate(services)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    for s in services:
        s.store.dispose()


def test_two_replicas_deliver_each_event_exactly_once(postgres_url: str, rules_path: Path, pd: MockPagerDuty) -> None:
    a, b = replicas(postgres_url, rules_path, pd)
    receive(a, [change(ticket(str(20000 + i))) for i in range(150)])
    a.engine.drain()
    workers = [a.delivery("w1"), a.delivery("w2"), b.delivery("w1"), b.delivery("w2")]
    threads = [threading.Thread(target=w.drain) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(e["dedup_key"] for e in pd.events)
    assert len(counts) == 150
    assert set(counts.values()) == {1}, "an outbox row was sent by two replicas"
    assert a.store.status().outbox_pending == 0
    for s in (a, b):
        s.store.dispose()


def test_two_engines_never_race_on_one_ticket(postgres_url: str, rules_path: Path, pd: MockPagerDuty) -> None:
    a, b = replicas(postgres_url, rules_path, pd)
    a.engine.batch_size = b.engine.batch_size = 3
    batch = []
    for i in range(60):
        tid = str(30000 + i)
        batch.append(change(ticket(tid, minutes=0)))
        batch.append(change(ticket(tid, minutes=1, status="Done", category=StatusCategory.DONE)))
    receive(a, batch)
    threads = [threading.Thread(target=s.engine.drain) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.process_all()
    per_ticket: dict[str, list[str]] = {}
    for event in pd.events:
        per_ticket.setdefault(event["dedup_key"].split("/")[2], []).append(event["event_action"])
    # either order of processing is fine (a "done" first makes the older "new" stale: no page at all),
    # but never a trigger without its resolve, never two triggers
    for tid, actions in per_ticket.items():
        assert actions == ["trigger", "resolve"], (tid, actions)
    assert a.store.status().open_incidents == 0
    for s in (a, b):
        s.store.dispose()


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    """Eight processes run `db upgrade` at the same moment on an empty schema (advisory lock; the migration
    commits before the lock is released, so the next one sees the new revision and creates nothing)."""
    import os
    import subprocess
    import sys

    from sync.db import current_revision, head_revision
    from sync.store import Store

    env = {**os.environ, "TICKETPAGER_DATABASE_URL": postgres_url}
    procs = [
        subprocess.Popen([sys.executable, "-m", "ticketpager.cli", "db", "upgrade"], env=env,  # noqa: S603
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outputs
    assert all("database at revision" in out for out in outputs)
    store = Store(postgres_url)
    try:
        assert current_revision(store.engine) == head_revision()
    finally:
        store.dispose()


def test_a_later_change_waits_while_an_earlier_one_is_claimed_elsewhere(
    postgres_url: str, rules_path: Path, pd: MockPagerDuty
) -> None:
    """Found by the fault harness: replica B must not process a ticket's "done" while replica A holds its
    "created" (SKIP LOCKED would hand B the later row); otherwise the created version turns stale and the
    incident never pages."""
    from sqlalchemy import select

    from sync.schema import changes

    a, b = replicas(postgres_url, rules_path, pd)
    receive(a, [change(ticket("40000", minutes=0))])
    receive(a, [change(ticket("40000", minutes=1, status="Done", category=StatusCategory.DONE))])
    with a.store.engine.connect() as held:  # replica A has claimed the first change and is still working
        first = held.execute(
            select(changes.c.id).order_by(changes.c.id).limit(1).with_for_update(skip_locked=True)
        ).scalar_one()
        assert b.engine.run_once() == 0, "replica B took a later change of a ticket still being processed"
        held.rollback()
    assert first is not None
    b.process_all()
    assert [e["event_action"] for e in pd.events] == ["trigger", "resolve"]
    for s in (a, b):
        s.store.dispose()
