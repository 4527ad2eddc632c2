"""A ticketing system that hangs never holds a page up (issue 17): notes and updates to tickets have their own
delivery workers (``engine.write_back_workers``), apart from the workers that send to PagerDuty. Real threads,
a real socket that accepts and never answers (the hung Jira), the PagerDuty mock; no sleeps but bounded polls."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kernel.clock import FakeClock
from sync.delivery import INCIDENT_KINDS
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager import service as service_module
from ticketpager.service import Service

NOTE_TIMEOUT = 2.0  # the hung Jira's connector timeout: each note blocks its worker this long


class HungServer:
    """Accepts TCP connections and reads their requests, but never answers: a ticketing system that hangs.
    ``requests`` holds the request lines read so far."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.requests: list[str] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            return
        self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def hung() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


def _wait_for(predicate: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while not predicate() and time.monotonic() - started < seconds:
        time.sleep(0.01)
    return time.monotonic() - started


def _writing_back_to(
    hung: HungServer,
    tmp_path: Path,
    rules_path: Path,
    clock: FakeClock,
    pd: MockPagerDuty,
    *,
    note_timeout: float,
    idle_seconds: float,
    write_back_workers: int,
    pagerduty_workers: int | None = None,
) -> Service:
    """A service paging ``pd`` whose Jira (write-back on) is ``hung``. Threads, not the database, are under test:
    SQLite only."""
    pagerduty: dict[str, Any] = {"rate_limit_per_minute": 10_000}
    if pagerduty_workers is not None:
        pagerduty["workers"] = pagerduty_workers
    return make_service(
        f"sqlite:///{tmp_path / 'tp.db'}", rules_path, pd.url, clock,
        jira={
            "enabled": True, "url": hung.url, "deployment": "datacenter", "api_token": "pat-token",
            "webhook_secrets": ["s3cret"], "poll_interval_seconds": 3600, "timeout_seconds": note_timeout,
            "write_back": True,
        },
        engine={"idle_seconds": idle_seconds, "write_back_workers": write_back_workers},
        pagerduty=pagerduty,
    )  # fmt: skip


def _second_wave_latency(
    tmp_path: Path, rules_path: Path, clock: FakeClock, hung: HungServer, write_back_workers: int
) -> float:
    """One PagerDuty worker. Page 4 tickets (their notes to Jira then hang), then 8 more: how long until the 8
    pages are accepted."""
    with MockPagerDuty() as pd:
        service = _writing_back_to(
            hung, tmp_path, rules_path, clock, pd,
            note_timeout=NOTE_TIMEOUT, idle_seconds=0.2, write_back_workers=write_back_workers, pagerduty_workers=1,
        )  # fmt: skip
        service.start()
        try:
            receive(service, [change(ticket(str(100 + i))) for i in range(4)])
            service.wake.set()
            assert _wait_for(lambda: len(pd.events) == 4, 10) < 10
            notes = lambda: [r for r in hung.requests if "/comment" in r]  # noqa: E731
            assert _wait_for(lambda: bool(notes()), 5) < 5, "a note to the hung Jira is in flight"
            receive(service, [change(ticket(str(200 + i))) for i in range(8)])
            service.wake.set()
            return _wait_for(lambda: len(pd.events) == 12, 30)
        finally:
            service.stop()
            service.store.dispose()


def test_pages_do_not_wait_behind_notes_to_a_ticketing_system_that_hangs(
    tmp_path: Path, rules_path: Path, clock: FakeClock, hung: HungServer
) -> None:
    assert _second_wave_latency(tmp_path, rules_path, clock, hung, write_back_workers=2) < NOTE_TIMEOUT / 2


def test_with_no_ticket_workers_the_pagerduty_workers_send_notes_too_and_pages_wait(
    tmp_path: Path, rules_path: Path, clock: FakeClock, hung: HungServer
) -> None:
    """``write_back_workers: 0`` keeps one pool: the PagerDuty worker is stuck in the notes, the pages wait (the
    contrast that shows what the split buys)."""
    assert _second_wave_latency(tmp_path, rules_path, clock, hung, write_back_workers=0) >= NOTE_TIMEOUT / 2


def test_notes_due_behind_a_hung_ticketing_system_wake_only_the_ticket_workers(
    tmp_path: Path, rules_path: Path, clock: FakeClock, hung: HungServer
) -> None:
    """The idle look looks at PagerDuty's rows and the tickets' apart: notes that stay due (both ticket
    workers are stuck in the hung Jira) wake the ticket workers on every look, never PagerDuty's, which sleep
    until a page is there."""
    with MockPagerDuty() as pd:
        service = _writing_back_to(
            hung, tmp_path, rules_path, clock, pd, note_timeout=3.0, idle_seconds=0.1, write_back_workers=2
        )
        service.start()
        try:
            # more notes than the two ticket workers' claims take (up to 10 each): some stay due and unclaimed
            receive(service, [change(ticket(str(300 + i))) for i in range(24)])
            service.wake.set()
            assert _wait_for(lambda: len(pd.events) == 24, 10) < 10
            assert _wait_for(lambda: len([r for r in hung.requests if "/comment" in r]) == 2, 5) < 5
            pages, notes = service.outbox_wake.count, service.write_back_wake.count
            time.sleep(1.0)  # ten of the timer's looks, with notes due and unclaimed throughout
            assert service.write_back_wake.count >= notes + 5, "the due notes wake the ticket workers"
            assert service.outbox_wake.count == pages, "nothing of PagerDuty's is due: its workers sleep"
        finally:
            service.stop()
            service.store.dispose()


def test_a_stop_waits_for_sends_stuck_in_a_hung_system_side_by_side_within_one_bound(
    tmp_path: Path, rules_path: Path, clock: FakeClock, hung: HungServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while three ticket workers are stuck in notes to a hung Jira (each blocks until its 5 s timeout),
    and the Jira poller in its first poll: ``stop`` gives all the background threads one bound together
    (``STOP_SECONDS``, 1 s here), not one bound each one after another (4 s), and the notes in flight are not
    lost: still pending in the outbox. The replica's heartbeat is left in place, so the other replicas (or the next
    start) take over their claims once it is stale, not after the whole claim time."""
    monkeypatch.setattr(service_module, "STOP_SECONDS", 1.0)
    with MockPagerDuty() as pd:
        service = _writing_back_to(
            hung, tmp_path, rules_path, clock, pd, note_timeout=5.0, idle_seconds=0.1, write_back_workers=3
        )
        service.start()
        try:
            notes = lambda: [r for r in hung.requests if "/comment" in r]  # noqa: E731
            for i in range(3):  # one ticket at a time: each note is taken by a worker not stuck yet
                receive(service, [change(ticket(str(400 + i)))])
                service.wake.set()
                assert _wait_for(lambda i=i: len(notes()) == i + 1, 10) < 10, f"note {i + 1} in flight"
            assert len(pd.events) == 3
            started = time.monotonic()
            service.stop()
            took = time.monotonic() - started
            # the bound, then 0.1 s for each thread still stuck after it (the other two workers and the poller):
            # 1.3 s; one bound per thread would be 4 s
            assert 0.9 <= took < 2.5, took
            with service.store.engine.connect() as conn:
                queued = conn.execute(text("SELECT status FROM outbox WHERE kind = 'writeback'")).scalars().all()
            assert queued == ["pending"] * 3, "the notes in flight stay queued"
            with service.store.engine.connect() as conn:
                beats = conn.execute(text("SELECT count(*) FROM replicas")).scalar_one()
            assert beats == 1, "threads still stuck: the heartbeat stays, so the others take over in seconds"
        finally:
            hung.close()  # the stuck sends and the poll fail at once: their threads end before the database goes
            service.stop()
            for thread in service._threads:
                thread.join(10)
            assert not any(thread.is_alive() for thread in service._threads)
            service.store.dispose()


def test_the_notes_of_one_batch_wake_one_ticket_worker_per_claim(
    tmp_path: Path, rules_path: Path, clock: FakeClock, hung: HungServer
) -> None:
    """Twenty-five pages sent in one batch queue twenty-five notes (each with its page's mark, so that a note is
    queued before a person can acknowledge): three ticket workers are woken, one per claim of CLAIM_BATCH notes (the
    first at the first note, the others at the batch's end), not one per note (a worker woken for nothing takes the
    write lock to claim nothing)."""
    with MockPagerDuty() as pd:
        service = _writing_back_to(
            hung, tmp_path, rules_path, clock, pd, note_timeout=0.5, idle_seconds=30.0, write_back_workers=2
        )
        try:
            service.heartbeat.register()
            receive(service, [change(ticket(str(500 + i))) for i in range(25)])
            assert service.engine.drain() == 25
            worker = service.delivery("0", heartbeat=service.heartbeat, kinds=INCIDENT_KINDS)
            before = service.write_back_wake.count
            assert worker.run_once(25) == 25
            assert len(pd.events) == 25
            assert service.write_back_wake.count - before == 3
        finally:
            service.store.dispose()
