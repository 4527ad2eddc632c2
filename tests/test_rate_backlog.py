"""Issue 19 goal 5: a backlog for one routing key costs no CPU while it waits.

A held event used to be released alone (one write transaction) to when the next slot freed: every held event of
the key got the same time, so once a minute the whole backlog came due, was claimed and released again row by
row for the 120 events that could go. Now a hold reschedules the key's backlog to the limiter's slots in one
transaction. Real SQLite/PostgreSQL, the PagerDuty fake spending its latency on the service's fake clock (so
arrival times are exact), the clock jumped to when the next row comes due."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from connectors.pagerduty import WINDOW_MARGIN, RateLimiter
from kernel.clock import FakeClock
from kernel.model import StatusCategory
from sync.delivery import Delivery
from sync.repos import outbox
from sync.schema import outbox as outbox_table
from tests.factories import ROUTING_KEY, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty, most_in_any_minute
from tests.harness import make_service, receive
from ticketpager.service import Service

LIMIT = 120
WINDOW = timedelta(seconds=60)
OTHER_KEY = "R0UT1NGKEY000000000000000000000web"
WEB_RULE = """
version: 1
rules:
  - name: web-highest
    source: jira
    when: {project: WEB, priority: Highest}
    trigger: {routing_key: "${PD_WEB_KEY}", severity: critical, summary: "{{ ticket.key }}"}
    resolve_when: {status_category: done}
"""


@pytest.fixture
def pd(clock: FakeClock) -> Iterator[MockPagerDuty]:
    with MockPagerDuty(clock=clock, latency=lambda n: 0.05 + (n % 7) * 0.02) as mock:  # 50-170 ms
        yield mock


@pytest.fixture
def two_keys(rules_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PD_WEB_KEY", OTHER_KEY)
    (rules_path / "web.yaml").write_text(WEB_RULE)
    return rules_path



class Writes:
    """Write transactions (commits) and statements on a real engine."""

    def __init__(self, engine: Any) -> None:
        self.commits = 0
        self.statements = 0
        self.rows_rescheduled = 0
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._statement)

    def _commit(self, conn: Any) -> None:
        self.commits += 1

    def _statement(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        self.statements += 1


def run(services: list[Service], workers: list[Delivery], clock: FakeClock, pd: MockPagerDuty, total: int) -> None:
    """Every worker in turn until ``total`` events went out; when nothing is due the clock jumps to the next
    due row (what the service's idle look sleeps until)."""
    statement = outbox.next_due_statement(takeover=True)
    for _ in range(20_000):
        if len(pd.events) >= total:
            return
        if sum(worker.run_once() for worker in workers):
            continue
        with services[0].store.engine.connect() as conn:
            due = outbox.next_due(conn, statement, clock.now(), 60.0)
        assert due is not None, "nothing pending, yet not everything was sent"
        clock.advance(max((due - clock.now()).total_seconds(), 0.001))
    raise AssertionError(f"{len(pd.events)} of {total} sent")


def backlog(svc: Service, triggers: int, resolves: int) -> None:
    """``triggers`` pages for one routing key, the first ``resolves`` of them resolved too (queued after)."""
    receive(svc, [change(ticket(str(10_000 + n))) for n in range(triggers)])
    svc.engine.drain()
    done = {"status": "Done", "category": StatusCategory.DONE, "minutes": 1}
    receive(svc, [change(ticket(str(10_000 + n), **done)) for n in range(resolves)])  # type: ignore[arg-type]
    svc.engine.drain()


def test_a_waiting_backlog_costs_writes_per_send_not_per_event_waiting(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """1,500 triggers for one key at 120 a minute, three simulated minutes (360 sends): the write transactions
    are about two per send (its claim — the rows come due one by one, at their slots — and the send) plus one
    per hold. Before, every minute cost a claim and a release for each of the ~1,400 events still waiting
    (~1,700 write transactions for 550 sends of a 550-event backlog, ~4,500 here)."""
    svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": LIMIT})
    try:
        backlog(svc, 1500, 0)
        writes = Writes(svc.store.engine)
        run([svc], [svc.delivery()], clock, pd, 3 * LIMIT)
    finally:
        svc.store.dispose()
    assert len(pd.events) == 3 * LIMIT
    assert writes.commits <= 2.2 * len(pd.events) + 20, f"{writes.commits} write transactions for 360 sends"


@pytest.mark.parametrize("replicas", [1, 2])
def test_every_event_of_a_backlog_goes_once_in_order_within_the_limit(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, replicas: int
) -> None:
    """500 triggers and 50 resolves for one key at 120 a minute, one replica or two sharing the database: every
    event sent once, a resolve after its trigger, never more than 120 arriving in any 60 s, and no slot left
    unused for long (the schedule does not slow the key down)."""
    services = [
        make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": LIMIT})
        for _ in range(replicas)
    ]
    try:
        backlog(services[0], 500, 50)
        writes = [Writes(svc.store.engine) for svc in services]
        started = clock.now()
        run(services, [svc.delivery() for svc in services], clock, pd, 550)
        minutes = (clock.now() - started) / WINDOW
    finally:
        for svc in services:
            svc.store.dispose()
    assert len(pd.events) == 550 and {e["routing_key"] for e in pd.events} == {ROUTING_KEY}
    sent = Counter((e["dedup_key"], e["event_action"]) for e in pd.events)
    assert set(sent.values()) == {1}, "each event once"
    order: dict[str, list[str]] = {}
    for e in pd.events:
        order.setdefault(e["dedup_key"], []).append(e["event_action"])
    assert sorted(order.values()) == sorted([["trigger", "resolve"]] * 50 + [["trigger"]] * 450)
    assert most_in_any_minute(pd.arrived_at) <= LIMIT
    assert minutes < 550 / LIMIT * (61 / 60), "the limit is used, not wasted by the schedule (as fast as before: 4.2)"
    commits = sum(w.commits for w in writes)
    assert commits <= 2.2 * 550 + 20, f"{commits} write transactions for 550 sends"


def test_other_keys_are_not_delayed_by_a_held_backlog(
    db_url: str, two_keys: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    svc = make_service(db_url, two_keys, pd.url, clock, pagerduty={"rate_limit_per_minute": LIMIT})
    try:
        backlog(svc, 300, 0)
        worker = svc.delivery()
        run([svc], [worker], clock, pd, LIMIT)  # the first minute's worth went; the rest is held
        worker.drain()
        assert len(pd.events) == LIMIT
        receive(svc, [change(ticket("20001", attributes={"project": "WEB"}))])
        svc.engine.drain()
        before = clock.now()
        assert worker.run_once() == 1, "the other key's event, and no row of the held backlog, is claimed"
        assert pd.events[-1]["routing_key"] == OTHER_KEY
        assert clock.now() - before < timedelta(seconds=1)
    finally:
        svc.store.dispose()


def test_a_hold_reschedules_the_free_backlog_only_and_ends_our_claims(db_url: str, clock: FakeClock) -> None:
    """The repository function: rows another live worker holds are not touched; ours, unclaimed and expired
    ones get the slots in claim order and are unclaimed; past the bound the rest is moved after the last slot;
    other keys and destinations are left alone."""
    from sync.store import Store

    store = Store(db_url)
    try:
        store.upgrade()
        now = clock.now()
        with store.begin() as conn:
            for n in range(8):
                outbox.enqueue(
                    conn, kind="event", destination="pagerduty" if n != 7 else "opsgenie", source="jira",
                    connection="jira", ticket_id=str(n), ticket_key=f"OPS-{n}", rule="r", action="trigger",
                    dedup_key=f"dk-{n}", generation=1, limit_key="K" if n != 6 else "other", body="{}",
                    change_id=None, now=now,
                )  # fmt: skip
            claims = outbox.Claims(takeover=False)
            until = now + timedelta(seconds=60)
            mine = claims.claim(conn, 2, now, now, worker="me/0", until=until)  # rows 1, 2
            theirs = claims.claim(conn, 1, now, now, worker="them/0", until=until)  # row 3
            expired = claims.claim(conn, 1, now, now, worker="gone/0", until=now - timedelta(seconds=1))  # row 4
        ids = [r["id"] for r in mine + theirs + expired]
        slot = [now + timedelta(seconds=10 * (k + 1)) for k in range(3)]
        with store.begin() as conn:
            rows = outbox.reschedule(
                conn, destination="pagerduty", kind="event", limit_key="K", worker="me/0", now=now, times=slot
            )
        assert [r["id"] for r in rows] == [ids[0], ids[1], ids[3]]
        with store.engine.connect() as conn:
            got = {r["id"]: r for r in conn.execute(outbox_table.select().order_by(outbox_table.c.id)).mappings()}
        first = min(got)
        assert [got[i]["next_attempt_at"] for i in (ids[0], ids[1], ids[3])] == slot
        assert all(got[i]["claimed_until"] is None for i in (ids[0], ids[1], ids[3]))
        assert got[ids[2]]["claimed_until"] == until and got[ids[2]]["next_attempt_at"] == now, "theirs: untouched"
        assert got[first + 4]["next_attempt_at"] == slot[-1] + (slot[-1] - slot[0]), "past the bound: after it"
        assert got[first + 5]["next_attempt_at"] == slot[-1] + (slot[-1] - slot[0])
        assert got[first + 6]["next_attempt_at"] == now and got[first + 7]["next_attempt_at"] == now
    finally:
        store.dispose()


def test_slots_start_where_reserve_says_and_follow_the_window(clock: FakeClock) -> None:
    limiter = RateLimiter(3, clock)
    span = (WINDOW + WINDOW_MARGIN).total_seconds()
    for _ in range(3):
        wait, sending = limiter.reserve("k")
        assert sending is not None
        clock.advance(2)
        sending.finished()  # ends at 2, 4, 6
    wait, sending = limiter.reserve("k")
    assert sending is None
    start = clock.now() - timedelta(seconds=6)
    slots = [(t - start).total_seconds() for t in limiter.slots("k", 7)]
    assert slots[0] == pytest.approx(6 + wait)
    assert slots == pytest.approx(
        [2 + span, 4 + span, 6 + span, 2 + 2 * span, 4 + 2 * span, 6 + 2 * span, 2 + 3 * span]
    )
    assert RateLimiter(3, clock).slots("free", 4) == [clock.now()] * 3 + [clock.now() + WINDOW + WINDOW_MARGIN]


def test_a_new_event_for_a_held_key_waits_behind_the_backlog_and_moves_nothing(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Events keep arriving for a key whose backlog is held (what makes a backlog): a new one goes after the
    events already waiting, in arrival order, and its hold rewrites few rows, not the whole backlog."""
    svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": LIMIT})
    try:
        backlog(svc, 300, 0)
        worker = svc.delivery()
        run([svc], [worker], clock, pd, LIMIT)  # the first minute's worth went
        worker.run_once()  # claims the next rows: held, the 180 left now wait at their slots
        receive(svc, [change(ticket("20002"))])
        svc.engine.drain()
        writes = Writes(svc.store.engine)
        updates: list[int] = []
        event.listen(
            svc.store.engine, "before_cursor_execute",
            lambda conn, cur, stmt, params, ctx, many: updates.append(len(params) if many else 1)
            if stmt.lstrip().upper().startswith("UPDATE OUTBOX") else None,
        )  # fmt: skip
        clock.advance(0.001)
        worker.run_once()  # claims the new event (due now), holds it: its hold reschedules
        assert sum(updates) <= 5, f"{sum(updates)} outbox rows rewritten for one new event"
        assert writes.commits <= 3
        run([svc], [worker], clock, pd, 301)
    finally:
        svc.store.dispose()
    tickets = [int(e["dedup_key"].split("/")[2]) for e in pd.events if e["event_action"] == "trigger"]
    assert tickets[-1] == 20002, "the newest event went last"
    assert tickets == sorted(tickets), "in arrival order"


def test_a_hold_never_brings_a_retry_forward(db_url: str, clock: FakeClock) -> None:
    """A row waiting for its retry (a backoff, PagerDuty's Retry-After) keeps its time when a hold of its key
    reschedules the backlog: only rows due earlier than their slot are moved, and only later."""
    from sync.store import Store

    store = Store(db_url)
    try:
        store.upgrade()
        now = clock.now()
        with store.begin() as conn:
            for n in range(3):
                outbox.enqueue(
                    conn, kind="event", destination="pagerduty", source="jira", connection="jira",
                    ticket_id=str(n), ticket_key=f"OPS-{n}", rule="r", action="trigger", dedup_key=f"dk-{n}",
                    generation=1, limit_key="K", body="{}", change_id=None, now=now,
                )  # fmt: skip
        retry_at = now + timedelta(minutes=10)
        with store.begin() as conn:
            first = min(r["id"] for r in conn.execute(outbox_table.select()).mappings())
            conn.execute(outbox_table.update().where(outbox_table.c.id == first).values(next_attempt_at=retry_at))
            slot = [now + timedelta(seconds=k + 1) for k in range(3)]
            outbox.reschedule(
                conn, destination="pagerduty", kind="event", limit_key="K", worker="me/0", now=now, times=slot
            )
        with store.engine.connect() as conn:
            got = [r["next_attempt_at"] for r in conn.execute(outbox_table.select().order_by(outbox_table.c.id))
                   .mappings()]  # fmt: skip
        assert got == [retry_at, slot[1], slot[2]]
    finally:
        store.dispose()
