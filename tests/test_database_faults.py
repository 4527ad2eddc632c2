"""A database whose schema or grants are not what this version expects is the database's fault, not the data's:
the engine keeps its changes pending and the service's worker retries, as for a lost connection, instead of
marking every change it meets failed. PostgreSQL says so with a ``ProgrammingError`` (undefined table, column,
privilege revoked) where SQLite says ``OperationalError``; both behave alike. The case in the field: a replica of
the new version running before its migration did, during a rolling upgrade."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import DBAPIError

from kernel.clock import FakeClock
from kernel.model import TicketChange
from sync.db import database_fault
from sync.metrics import METRICS, WORKER_KINDS, WORKER_RESTART_REASONS
from sync.poller import poll_once
from sync.repos.cursors import load_cursor
from sync.schema import changes, outbox
from sync.store import Store
from tests.factories import change, ticket
from tests.fakes.jira_server import FakeJira, make_issue
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive, wait_until
from ticketpager.service import Service, worker_kind


def _other(db_url: str) -> Engine:
    """A connection of the operator's (or of the migration's), beside the service's."""
    return create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))


def _rename(engine: Engine, old: str, new: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


def _page_with_the_decision_log_gone(svc: Service, other: Engine, ticket_id: str) -> None:
    """The service running, its decision log's table renamed away, a paging change stored and the engine woken."""
    svc.start()
    _rename(other, "decisions", "decisions_away")
    receive(svc, [change(ticket(ticket_id))])
    svc.wake.set()


def test_a_table_missing_keeps_the_batch_pending_and_it_pages_once_the_table_is_back(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    svc = make_service(db_url, rules_path, "http://127.0.0.1:9/v2/enqueue", clock)
    other = _other(db_url)
    try:
        receive(svc, [change(ticket("31001")), change(ticket("31002"))])
        _rename(other, "decisions", "decisions_away")  # the decision log is written at the batch's end
        with pytest.raises(DBAPIError) as raised:
            svc.engine.run_once()
        assert database_fault(raised.value), raised.value
        status = svc.store.status()
        assert (status.changes_pending, status.changes_failed) == (2, 0), "nothing marked failed"
        _rename(other, "decisions_away", "decisions")
        assert svc.engine.drain() == 2
        with svc.store.engine.connect() as conn:
            assert sorted(conn.execute(select(changes.c.status)).scalars()) == ["processed", "processed"]
            assert len(conn.execute(select(outbox.c.id).where(outbox.c.kind == "event")).all()) == 2, "both page"
    finally:
        other.dispose()
        svc.store.dispose()


def test_a_change_the_database_refuses_is_still_marked_failed_and_the_rest_page(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """The other side of the line: a constraint that refuses one change's row is that change's fault (here a
    trigger on SQLite, a CHECK on PostgreSQL, refusing one ticket's row: ``IntegrityError`` on both)."""
    svc = make_service(db_url, rules_path, "http://127.0.0.1:9/v2/enqueue", clock)
    other = _other(db_url)
    try:
        if db_url.startswith("sqlite"):
            with other.begin() as conn:
                conn.execute(
                    text(
                        "CREATE TRIGGER refuse BEFORE INSERT ON tickets WHEN NEW.ticket_id = '31102'"
                        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
                    )
                )
        else:
            with other.begin() as conn:
                conn.execute(text("ALTER TABLE tickets ADD CONSTRAINT refuse CHECK (ticket_id <> '31102')"))
        receive(svc, [change(ticket("31101")), change(ticket("31102")), change(ticket("31103"))])
        assert svc.engine.drain() == 3
        status = svc.store.status()
        assert (status.changes_pending, status.changes_failed) == (0, 1)
        with svc.store.engine.connect() as conn:
            keys = conn.execute(select(outbox.c.ticket_key).where(outbox.c.kind == "event")).scalars().all()
        assert sorted(keys) == ["OPS-31101", "OPS-31103"]
    finally:
        other.dispose()
        svc.store.dispose()


def test_the_services_engine_waits_out_a_missing_table_with_one_line_and_a_metric(
    db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    svc = make_service(db_url, rules_path, pd.url, clock, engine={"write_back_workers": 0})
    other = _other(db_url)
    restarts = METRICS.worker_restarts.labels("engine", "database")
    before = restarts._value.get()
    try:
        with caplog.at_level("WARNING", logger="ticketpager"):
            _page_with_the_decision_log_gone(svc, other, "31201")
            assert wait_until(lambda: restarts._value.get() > before)
            line = next(r for r in caplog.records if r.getMessage().startswith("worker engine:"))
        message = line.getMessage()
        assert "database unavailable" in message and "decisions" in message
        assert " in: INSERT INTO decisions" in message, "the statement it stopped: a bug is told from an old replica"
        assert line.exc_info is None, "one line, not a traceback"
        assert svc.store.status().changes_failed == 0
        _rename(other, "decisions_away", "decisions")
        assert wait_until(lambda: len(pd.events) == 1), "paged once the table is back"
        assert svc.store.status().changes_failed == 0
    finally:
        svc.stop()
        other.dispose()
        svc.store.dispose()


def test_a_worker_that_keeps_failing_on_the_database_says_so_once_a_minute_not_every_second(
    tmp_path: Path, rules_path: Path, pd: MockPagerDuty, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every restart is counted; the line is logged at the first, then again a minute later (the service's clock)
    with how many restarts it stands for."""
    db_url = f"sqlite:///{tmp_path / 'tp.db'}"
    svc = make_service(db_url, rules_path, pd.url, clock, engine={"write_back_workers": 0})
    other = _other(db_url)
    restarts = METRICS.worker_restarts.labels("engine", "database")
    before = restarts._value.get()

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("worker engine:")]

    try:
        with caplog.at_level("WARNING", logger="ticketpager"):
            _page_with_the_decision_log_gone(svc, other, "31501")
            assert wait_until(lambda: restarts._value.get() >= before + 3)
            assert len(said()) == 1, said()
            clock.advance(61)
            seen = restarts._value.get()
            assert wait_until(lambda: len(said()) == 2)
            assert restarts._value.get() > seen
        first, second = said()
        assert "more restart(s)" not in first
        assert "more restart(s) since this line was last logged" in second and "decisions" in second
    finally:
        svc.stop()
        other.dispose()
        svc.store.dispose()


@pytest.mark.parametrize(
    ("thread", "kind"),
    [
        ("engine", "engine"),
        ("delivery-12", "delivery"),
        ("write-back-0", "write-back"),
        ("poll-zendesk-client-42", "poll"),
        ("idle-look", "idle-look"),
    ],
)
def test_a_workers_restarts_are_labelled_by_its_kind_whatever_the_configuration(thread: str, kind: str) -> None:
    assert worker_kind(thread) == kind


@dataclass
class _Page:
    changes: list[TicketChange]
    cursor: dict[str, str]
    malformed: int = 0


@dataclass
class _OneTicket:
    """A ticketing system with one new ticket to poll (what the poll loop reads of a connector)."""

    name: str = "jira"
    connection: str = "jira"
    settings: Any = field(default_factory=lambda: SimpleNamespace(lookback_seconds=60.0))

    def start_cursor(self, since: datetime) -> dict[str, str]:
        return {"since": since.isoformat()}

    def poll(self, cursor: Mapping[str, Any] | None) -> Iterator[_Page]:
        yield _Page([change(ticket("31301"), "poll:31301")], {"since": "later"})


def test_a_poll_that_meets_a_missing_table_is_the_databases_fault_not_the_connectors(
    db_url: str, clock: FakeClock
) -> None:
    """Raised to the poll worker (which restarts, counted as ``database``), not recorded as the connector's bug; the
    cursor stays, so the next poll reads the same window."""
    store = Store(db_url)
    store.upgrade()
    other = _other(db_url)
    bugs = METRICS.poll_errors.labels("jira", "bug")
    before = bugs._value.get()
    try:
        _rename(other, "changes", "changes_away")
        with pytest.raises(DBAPIError) as raised:
            poll_once(store, _OneTicket(), clock)
        assert database_fault(raised.value)
        assert bugs._value.get() == before, "not counted as a connector's bug"
        _rename(other, "changes_away", "changes")
        with store.engine.connect() as conn:
            assert load_cursor(conn, "jira") is None, "the cursor did not move"
        assert poll_once(store, _OneTicket(), clock).stored == 1
    finally:
        other.dispose()
        store.dispose()


def test_every_thread_the_service_starts_has_a_worker_kind_with_its_series_at_zero(
    tmp_path: Path, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """The restart alerts' ``increase()`` sees a worker's first restart only if its series exists before it."""
    svc = make_service(f"sqlite:///{tmp_path / 'tp.db'}", rules_path, pd.url, clock)
    try:
        svc.start()
        names = [t.name.removeprefix("ticketpager-") for t in threading.enumerate() if "ticketpager-" in t.name]
    finally:
        svc.stop()
        svc.store.dispose()
    kinds = {worker_kind(n) for n in names if n != "writer"}  # the webhook writer is the HTTP side's, not a worker
    assert {"engine", "delivery", "reverse", "heartbeat", "idle-look", "scheduler"} <= kinds
    assert kinds <= set(WORKER_KINDS)
    exported = {
        (s.labels["worker"], s.labels["reason"])
        for family in METRICS.registry.collect()
        if family.name == "ticketpager_worker_restarts"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert {(k, r) for k in kinds for r in WORKER_RESTART_REASONS} <= exported


def test_a_poller_that_meets_a_missing_table_polls_again_at_its_interval_not_every_second(
    tmp_path: Path, rules_path: Path, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """Each poll asks the vendor's API before it stores: a worker restarted every second would spend the API's rate
    limit (shared with the healthy replicas) on pages it cannot store."""
    db_url = f"sqlite:///{tmp_path / 'tp.db'}"
    restarts = METRICS.worker_restarts.labels("poll", "database")
    before = restarts._value.get()
    with FakeJira() as jira:
        jira.put(make_issue("31601", "OPS-31601", updated=datetime.now(UTC), base_url=jira.url))
        svc = make_service(
            db_url, rules_path, pd.url, clock,
            jira={"enabled": True, "url": jira.url, "email": "bot@example.com", "api_token": "jira-token",
                  "webhook_secrets": ["s3cret"], "poll_interval_seconds": 3600},
        )  # fmt: skip
        other = _other(db_url)
        try:
            _rename(other, "changes", "changes_away")
            svc.start()
            assert wait_until(lambda: restarts._value.get() > before), "the poll failed on the missing table"
            asked = len(jira.requests)
            assert not wait_until(lambda: len(jira.requests) > asked, seconds=2.5), "asked Jira again within seconds"
            assert restarts._value.get() == before + 1
        finally:
            svc.stop()
            other.dispose()
            svc.store.dispose()
