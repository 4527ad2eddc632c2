"""Issue 13, item 10: a dead replica's work is taken over after its heartbeat goes stale (seconds), never a
live replica's. Two replicas share one database (SQLite file and PostgreSQL), each with its own store, on
one injected clock; a replica "dies" by no longer heartbeating, as after a SIGKILL. The last test kills a
real ``serve`` process."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import responses
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import DBAPIError

from kernel.clock import FakeClock
from sync.repos.cursors import acquire_lease
from sync.schema import outbox
from sync.store import Store
from tests.factories import ROUTING_KEY, RULES, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from tests.serve_proc import Serve
from tests.test_app import jira_body, sign
from tests.test_crash_recovery import serve_env
from ticketpager.service import Service

TIMEOUT = 10.0  # engine.replica_timeout_seconds
BEAT = 2.0  # engine.heartbeat_seconds
CLAIM = 60.0  # engine.claim_seconds (the default): what recovery waited for before


@pytest.fixture
def pair(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[tuple[Service, Service]]:
    engine = {"replica_timeout_seconds": TIMEOUT, "heartbeat_seconds": BEAT, "claim_seconds": CLAIM}
    a = make_service(db_url, rules_path, pd.url, clock, engine=engine)
    b = make_service(db_url, rules_path, pd.url, clock, engine=engine)
    a.heartbeat.register()
    b.heartbeat.register()
    yield a, b
    for s in (a, b):
        s.store.dispose()


def queue_page(svc: Service, ticket_id: str = "50001") -> None:
    receive(svc, [change(ticket(ticket_id))])
    assert svc.engine.drain() == 1


def triggers(pd: MockPagerDuty) -> list[str]:
    return [e["dedup_key"] for e in pd.events if e["event_action"] == "trigger"]


def test_a_dead_replicas_claims_are_taken_over_after_the_heartbeat_timeout_not_before(
    pair: tuple[Service, Service], pd: MockPagerDuty, clock: FakeClock
) -> None:
    a, b = pair
    queue_page(a)
    assert len(a.delivery("0", heartbeat=a.heartbeat).claim()) == 1  # then A is killed: no send, no heartbeat
    worker_b = b.delivery("0", heartbeat=b.heartbeat)
    waited = 0.0
    while waited < TIMEOUT:  # A's heartbeat is younger than the timeout: A may be alive, its row is not B's
        clock.advance(BEAT)
        waited += BEAT
        b.heartbeat.beat()
        assert worker_b.run_once() == 0, f"B took a row of a replica silent for only {waited} s"
    assert pd.events == []
    clock.advance(1)  # A silent for 11 s: dead
    b.heartbeat.beat()
    assert worker_b.run_once() == 1
    assert len(triggers(pd)) == 1
    assert waited + 1 < CLAIM, "recovered long before the claim itself would have expired"


def test_a_live_replica_is_never_robbed_even_when_its_claim_is_older_than_the_timeout(
    pair: tuple[Service, Service], pd: MockPagerDuty, clock: FakeClock
) -> None:
    a, b = pair
    queue_page(a)
    worker_a = a.delivery("0", heartbeat=a.heartbeat)
    rows = worker_a.claim()
    assert len(rows) == 1
    worker_b = b.delivery("0", heartbeat=b.heartbeat)
    for _ in range(25):  # 50 s: five times the replica timeout, still inside the 60 s claim; A is alive
        clock.advance(BEAT)
        a.heartbeat.beat()
        b.heartbeat.beat()
        assert worker_b.run_once() == 0, "B took a row from a replica that heartbeats"
    worker_a.deliver(rows[0])  # A's slow batch reaches the row: it is still A's
    assert len(triggers(pd)) == 1
    clock.advance(BEAT)
    a.heartbeat.beat()
    b.heartbeat.beat()
    worker_b.run_once()
    assert len(triggers(pd)) == 1, "the page went out twice"


def test_a_replica_whose_own_heartbeat_is_overdue_sends_nothing_until_it_gets_through(
    pair: tuple[Service, Service], pd: MockPagerDuty, clock: FakeClock
) -> None:
    """A replica cut off from the database (or frozen) for the timeout may be presumed dead by the others;
    it must not send what they may be sending."""
    a, _ = pair
    queue_page(a)
    worker_a = a.delivery("0", heartbeat=a.heartbeat)
    clock.advance(TIMEOUT - BEAT)  # no heartbeat got through for 8 s
    assert worker_a.run_once() == 0
    assert pd.events == []
    a.heartbeat.beat()
    assert worker_a.run_once() == 1
    assert len(triggers(pd)) == 1


def test_a_replica_presumed_dead_does_not_send_a_row_taken_over_meanwhile(
    pair: tuple[Service, Service], pd: MockPagerDuty, clock: FakeClock
) -> None:
    """A claims a batch, its heartbeat stops for longer than the timeout (a database partition), B takes the
    row over and sends it; when A's heartbeat gets through again, A's batch goes on: A must not send it too
    (its claim is recent enough that A would otherwise skip the check that the row is still A's)."""
    a, b = pair
    queue_page(a)
    worker_a = a.delivery("0", heartbeat=a.heartbeat)
    rows = worker_a.claim()
    clock.advance(TIMEOUT + 1)
    b.heartbeat.beat()
    assert b.delivery("0", heartbeat=b.heartbeat).run_once() == 1
    a.heartbeat.beat()
    worker_a.deliver(rows[0])
    assert len(triggers(pd)) == 1, "the page went out twice"


def test_a_dead_replicas_lease_is_taken_after_the_heartbeat_timeout_a_live_ones_never(
    pair: tuple[Service, Service], clock: FakeClock
) -> None:
    """Pollers and the scheduler: a 120 s poll lease of a dead replica is taken after the timeout."""
    a, b = pair
    lease = 120.0

    def take(svc: Service) -> bool:
        now = svc.clock.now()
        with svc.store.begin() as conn:
            return acquire_lease(conn, "poll:jira", svc.instance, now, lease, now - timedelta(seconds=TIMEOUT))

    assert take(a)
    for _ in range(20):  # 40 s, A alive: its lease stays A's
        clock.advance(BEAT)
        a.heartbeat.beat()
        b.heartbeat.beat()
        assert not take(b)
    clock.advance(TIMEOUT)  # A dies: it heartbeat last exactly TIMEOUT ago, not yet stale
    b.heartbeat.beat()
    assert not take(b)
    clock.advance(1)
    b.heartbeat.beat()
    assert take(b), "the lease of a dead replica was not taken over"
    assert not take(a), "a resumed replica does not get its lease back while B holds it"


def test_a_replica_without_a_heartbeat_keeps_its_claims_until_they_expire(
    pair: tuple[Service, Service], pd: MockPagerDuty, clock: FakeClock
) -> None:
    """A one-shot CLI run or a replica of an older release writes no heartbeat: it cannot be judged dead by
    one, so its claims are left to expire as before."""
    a, b = pair
    queue_page(a)
    a.heartbeat.forget()  # as if A had never registered
    assert len(a.delivery("0").claim()) == 1
    worker_b = b.delivery("0", heartbeat=b.heartbeat)
    for _ in range(int(CLAIM / BEAT) - 1):
        clock.advance(BEAT)
        b.heartbeat.beat()
        assert worker_b.run_once() == 0
    clock.advance(BEAT + 1)
    b.heartbeat.beat()
    assert worker_b.run_once() == 1
    assert len(triggers(pd)) == 1


# -- a real SIGKILL ----------------------------------------------------------------------------------------
def claimed_rows(db_url: str) -> int:
    store = Store(db_url)
    try:
        with store.engine.connect() as conn:
            return len(conn.execute(select(outbox.c.id).where(outbox.c.claimed_by.is_not(None))).all())
    finally:
        store.dispose()


def test_sigkill_of_a_replica_mid_send_is_recovered_in_about_the_heartbeat_timeout(
    db_url: str, tmp_path: Path
) -> None:
    """Replica A claims a page and hangs in the send (a PagerDuty that accepts the connection and never
    answers), then is SIGKILLed; replica B sends the page once A's heartbeat is 1 s stale, not after the
    60 s claim."""
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    fast = {
        "TICKETPAGER_ENGINE__CLAIM_SECONDS": str(CLAIM),
        "TICKETPAGER_ENGINE__HEARTBEAT_SECONDS": "0.2",
        "TICKETPAGER_ENGINE__REPLICA_TIMEOUT_SECONDS": "1",
        "TICKETPAGER_PAGERDUTY__TIMEOUT_SECONDS": "30",
    }
    with socket.socket() as hole:  # listens, never accepts: A's POST waits for an answer
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        hole_url = f"http://127.0.0.1:{hole.getsockname()[1]}/v2/enqueue"
        a = Serve({**serve_env(db_url, rules, hole_url), **fast}).start()
        try:
            body = jira_body(status_key="new")
            status, answer = a.post("/webhooks/jira", body, {"X-Hub-Signature": sign(body),
                                                             "X-Atlassian-Webhook-Identifier": "takeover-1"})
            assert status == 202, answer
            deadline = time.monotonic() + 15
            while claimed_rows(db_url) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert claimed_rows(db_url) == 1, a.output()
        finally:
            a.kill()
        killed_at = time.monotonic()
    with MockPagerDuty() as pd:
        b = Serve({**serve_env(db_url, rules, pd.url), **fast}).start()
        try:
            while not pd.events and time.monotonic() - killed_at < 20:
                time.sleep(0.05)
            recovered = time.monotonic() - killed_at
            time.sleep(0.5)  # a second send would show by now
        finally:
            assert b.stop() == 0, b.output()
        assert [e["event_action"] for e in pd.events] == ["trigger"], b.output()
        assert pd.events[0]["routing_key"] == ROUTING_KEY
        assert recovered < 15, f"recovery took {recovered:.1f} s"
        assert "took over 1 outbox row(s)" in b.output()


def _outage_on_first_send(
    rsps: responses.RequestsMock, pd_url: str, other: Engine, *, fail_second: bool
) -> list[str]:
    """PagerDuty at ``pd_url``: the outbox table goes away (through ``other``) while the first page is being sent,
    which PagerDuty accepts; the second page gets a 500 when ``fail_second``. Returns the dedup keys sent."""
    sent: list[str] = []

    def accept(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body or b"{}")
        sent.append(body["dedup_key"])
        if len(sent) == 1:  # the outage starts while the first send is in flight
            with other.begin() as conn:
                conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
        elif len(sent) == 2 and fail_second:  # a retry that cannot be written down
            return 500, {}, json.dumps({"status": "error"})
        return 202, {}, json.dumps({"status": "success", "dedup_key": body.get("dedup_key")})

    rsps.add_callback("POST", pd_url, callback=accept)
    return sent


def test_a_page_accepted_just_before_a_database_error_is_marked_not_sent_again(
    db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """Beside other replicas (here: no heartbeat) each send is marked at once. The database fails while the first
    page is being sent, so its mark fails: the page PagerDuty accepted is marked when the database answers again,
    before the rest of the batch is handed back, and is not sent a second time."""
    pd_url = "https://events.pagerduty.test/v2/enqueue"
    svc = make_service(db_url, rules_path, pd_url, clock, engine={"claim_seconds": CLAIM})
    other = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    sent = _outage_on_first_send(rsps, pd_url, other, fail_second=False)
    try:
        receive(svc, [change(ticket("50020")), change(ticket("50021"))])
        assert svc.engine.drain() == 2
        worker = svc.delivery("0")
        with pytest.raises(DBAPIError):
            worker.run_once()
        with other.begin() as conn:  # the database is back
            conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
        assert worker.run_once() == 1, "the second page waited for its claim to expire"
        assert len(sent) == 2 and sent[0] != sent[1], "the accepted page was not sent again"
        assert svc.store.status().outbox_pending == 0
    finally:
        other.dispose()
        svc.store.dispose()


def test_a_batch_cut_short_by_a_database_error_is_sent_again_at_once(
    db_url: str, rules_path: Path, clock: FakeClock, rsps: responses.RequestsMock
) -> None:
    """The database fails right after PagerDuty accepted a page (the outbox table is gone for a moment), and
    the next page's failure cannot be recorded: the worker restarts with its batch still claimed by itself. The
    page PagerDuty accepted is marked sent once the database answers again, not sent a second time; the one whose
    failure was not recorded is handed back and sent at once, not held for the 60 s claim."""
    pd_url = "https://events.pagerduty.test/v2/enqueue"
    svc = make_service(db_url, rules_path, pd_url, clock, engine={"claim_seconds": CLAIM})
    svc.heartbeat.register()
    other = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    sent = _outage_on_first_send(rsps, pd_url, other, fail_second=True)
    try:
        receive(svc, [change(ticket("50010")), change(ticket("50011"))])
        assert svc.engine.drain() == 2
        worker = svc.delivery("0", heartbeat=svc.heartbeat)
        with pytest.raises(DBAPIError):
            worker.run_once()
        with other.begin() as conn:  # the database is back
            conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
        assert worker.run_once() == 1, "the interrupted row waited for its claim to expire"
        first, second = sent[0], sent[1]
        assert first != second and sent == [first, second, second], "the accepted page was not sent again"
        assert svc.store.status().outbox_pending == 0
        with svc.store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'sent'")).scalar() == 2
    finally:
        other.dispose()
        svc.store.dispose()


def test_a_replica_timeout_shorter_than_two_heartbeats_is_refused_at_start() -> None:
    """One late heartbeat must never make a live replica look dead."""
    from pydantic import ValidationError

    from ticketpager.settings import Settings

    with pytest.raises(ValidationError, match="at most half of engine.replica_timeout_seconds"):
        Settings(_env_file=None, engine={"heartbeat_seconds": 6, "replica_timeout_seconds": 10})  # type: ignore[call-arg]
    settings = Settings(_env_file=None, engine={"heartbeat_seconds": 1, "replica_timeout_seconds": 3})  # type: ignore[call-arg]
    assert settings.engine.replica_timeout_seconds == 3


@pytest.mark.postgres
def test_a_lost_replicas_open_transaction_is_ended_by_the_server(postgres_url: str) -> None:
    """A replica lost with its host or network (no FIN: the server's socket stays open) in the middle of an
    engine batch holds its changes' row locks; SKIP LOCKED lets the others pass them by, but not process
    them. PostgreSQL ends such an idle transaction after ``IDLE_TRANSACTION_SECONDS`` (1 s here), so the
    change is free again instead of after the server's TCP keepalive (hours)."""
    from sync.db import make_engine

    lost = make_engine(postgres_url, idle_transaction_seconds=1)
    alive = make_engine(postgres_url)
    held = lost.connect()
    try:
        with alive.begin() as conn:
            conn.execute(text("CREATE TABLE work (id int PRIMARY KEY)"))
            conn.execute(text("INSERT INTO work VALUES (1)"))
        held.begin()
        assert held.execute(text("SELECT id FROM work FOR UPDATE")).scalar_one() == 1  # then silence

        def free() -> list[int]:
            with alive.begin() as conn:
                return list(conn.execute(text("SELECT id FROM work FOR UPDATE SKIP LOCKED")).scalars())

        assert free() == [], "the lost replica's lock is held while its transaction may still go on"
        deadline = time.monotonic() + 10
        while not free() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert free() == [1]
    finally:
        held.invalidate()  # the server closed that session (or the test failed): never back to the pool
        lost.dispose()
        alive.dispose()


def test_a_clean_stop_removes_the_heartbeat_and_leaves_nothing_claimed(
    db_url: str, rules_path: Path, clock: FakeClock, pd: MockPagerDuty
) -> None:
    """Nothing stuck at the stop: the replica's heartbeat row goes (the others need not wait for it to go stale),
    and every page it was given was sent and marked, none left claimed."""
    svc = make_service(db_url, rules_path, pd.url, clock, pagerduty={"rate_limit_per_minute": 10_000})
    svc.start()
    try:
        receive(svc, [change(ticket(str(50100 + n))) for n in range(25)])
        svc.wake.set()
        deadline = time.monotonic() + 20
        while len(pd.events) < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        svc.stop()
        with svc.store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM replicas")).scalar_one() == 0
            claimed = conn.execute(text("SELECT count(*) FROM outbox WHERE claimed_until IS NOT NULL")).scalar_one()
        assert len(pd.events) == 25 and claimed == 0
        assert svc.store.status().outbox_pending == 0
    finally:
        svc.store.dispose()
