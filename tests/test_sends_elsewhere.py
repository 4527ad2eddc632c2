"""The rate limiter's view of the other replicas' sends (issue 19): alone on its database, a replica reads them once
per routing key per ``ALONE_TRUST`` instead of every second; a beat that sees another replica, or a gap in its
heartbeat, makes the next send read them again, so the routing key's limit holds across the replicas. Real SQLite
and PostgreSQL, replicas known by their heartbeats on one fake clock, PagerDuty's Events API mocked at the wire,
the reads counted at the database driver's boundary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from connectors.pagerduty import ALONE_TRUST
from kernel.clock import FakeClock
from sync.delivery import CLAIM_BATCH
from tests.factories import change, ticket
from tests.harness import make_service, receive
from ticketpager.service import Service

PD_URL = "https://events.pagerduty.test/v2/enqueue"


def _replica(db_url: str, rules_path: Path, clock: FakeClock, per_minute: int) -> Service:
    svc = make_service(db_url, rules_path, PD_URL, clock, pagerduty={"rate_limit_per_minute": per_minute})
    svc.heartbeat.register()
    return svc


@pytest.fixture
def sent(rsps: responses.RequestsMock) -> list[str]:
    """The dedup keys PagerDuty accepted, in order."""
    keys: list[str] = []

    def accept(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        keys.append(json.loads(request.body or b"{}")["dedup_key"])
        return 202, {}, json.dumps({"status": "success", "dedup_key": keys[-1]})

    rsps.add_callback("POST", PD_URL, callback=accept)
    return keys


def _reads(service: Service) -> list[int]:
    """How many times the other replicas' sends are read from now on (a one-item list, counted up)."""
    counted = [0]

    def statement(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if "sent_at >" in sql and "NOT LIKE" in sql.upper():
            counted[0] += 1

    event.listen(service.store.engine, "before_cursor_execute", statement)
    return counted


def _page(service: Service, n: int) -> int:
    """One ticket pages (its change stored and planned); returns how many pages the replica then sent."""
    receive(service, [change(ticket(str(n)))])
    assert service.engine.drain() == 1
    return service.delivery("0", heartbeat=service.heartbeat).run_once(CLAIM_BATCH)


@pytest.fixture
def alone(db_url: str, rules_path: Path, clock: FakeClock) -> Iterator[Service]:
    svc = _replica(db_url, rules_path, clock, per_minute=1_000)
    assert svc.heartbeat.alone()
    yield svc
    svc.store.dispose()


def test_alone_one_read_of_the_others_sends_serves_a_key_for_a_while(
    alone: Service, clock: FakeClock, sent: list[str]
) -> None:
    """Thirty pages for one routing key over six seconds, the heartbeat beating: the other replicas' sends are read
    once (nobody else sends while this replica is alone), not once a second. Past ``ALONE_TRUST`` they are read
    again."""
    reads = _reads(alone)
    for n in range(30):
        assert _page(alone, 41001 + n) == 1
        clock.advance(0.2)
        if n % 10 == 9:
            alone.heartbeat.beat()
    assert len(sent) == 30
    assert reads[0] == 1
    streak = alone.heartbeat.alone_since()
    for _ in range(int(ALONE_TRUST.total_seconds() / alone.settings.engine.heartbeat_seconds)):
        clock.advance(alone.settings.engine.heartbeat_seconds)
        alone.heartbeat.beat()  # on time: the same streak alone
    assert alone.heartbeat.alone_since() == streak
    assert _page(alone, 41100) == 1
    assert reads[0] == 2, "a read is kept ALONE_TRUST at most, the streak alone going on"


def test_a_gap_in_the_heartbeat_makes_the_next_send_read_again(
    alone: Service, clock: FakeClock, sent: list[str]
) -> None:
    """The heartbeat was overdue (a frozen process, a database partition): other replicas may have taken over its
    rows and sent them meanwhile, so what it read before the gap is not kept."""
    reads = _reads(alone)
    assert _page(alone, 41201) == 1
    assert reads[0] == 1
    settings = alone.settings.engine
    overdue = settings.replica_timeout_seconds - settings.heartbeat_seconds
    assert overdue < ALONE_TRUST.total_seconds(), "the read is young enough to be kept, but for the gap"
    clock.advance(overdue)  # no beat: overdue
    assert alone.heartbeat.alone_since() is None
    alone.heartbeat.beat()  # back, alone again: a new streak
    assert _page(alone, 41202) == 1
    assert reads[0] == 2, "read again after the gap"
    assert _page(alone, 41203) == 1
    assert reads[0] == 2, "the new streak keeps its read"
    assert len(sent) == 3


def test_a_beat_that_fails_ends_the_streak_alone(alone: Service, clock: FakeClock, sent: list[str]) -> None:
    """The database refused the heartbeat (here: its table is away for a moment). The beat after it, on time and
    alone again, starts a new streak: what was read before is read again."""
    reads = _reads(alone)
    assert _page(alone, 41251) == 1
    assert reads[0] == 1
    with alone.store.begin() as conn:
        conn.execute(text("ALTER TABLE replicas RENAME TO replicas_away"))
    clock.advance(alone.settings.engine.heartbeat_seconds)
    with pytest.raises(DBAPIError):
        alone.heartbeat.beat()
    with alone.store.begin() as conn:
        conn.execute(text("ALTER TABLE replicas_away RENAME TO replicas"))
    clock.advance(alone.settings.engine.heartbeat_seconds)
    alone.heartbeat.beat()  # on time (no gap)
    assert alone.heartbeat.alone()
    assert _page(alone, 41252) == 1
    assert reads[0] == 2
    assert len(sent) == 2


def test_once_a_beat_sees_another_replica_its_sends_count_against_the_routing_keys_limit(
    db_url: str, rules_path: Path, clock: FakeClock, sent: list[str]
) -> None:
    """Four events a minute for the routing key. Replica A, alone, pages twice; replica B starts and pages twice
    (it reads A's two): the minute is full. A's next beat sees B, so A's next page reads B's sends and waits for
    the window, instead of a fifth event going to PagerDuty."""
    a = _replica(db_url, rules_path, clock, per_minute=4)
    b = None
    try:
        assert a.heartbeat.alone()
        assert _page(a, 41301) == 1 and _page(a, 41302) == 1
        b = _replica(db_url, rules_path, clock, per_minute=4)
        assert not b.heartbeat.alone()
        assert _page(b, 41303) == 1 and _page(b, 41304) == 1
        assert len(sent) == 4
        clock.advance(1.1)  # past the limiter's own one-second reuse of a read
        a.heartbeat.beat()
        assert not a.heartbeat.alone() and a.heartbeat.alone_since() is None
        _page(a, 41305)
        assert len(sent) == 4, "the fifth event waits: B's two sends count"
    finally:
        a.store.dispose()
        if b is not None:
            b.store.dispose()
