"""SQLite transactions: a write takes the database's write lock at its BEGIN, a read never does, and a BEGIN
that cannot get the lock fails as SQLAlchemy's ``OperationalError`` (what the recovery paths catch). The write
transactions share one kept connection: a failed one leaves nothing behind, a broken connection is replaced, and
concurrent writers take turns."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import StaticPool

from sync.repos import outbox
from sync.store import Store
from tests.factories import T0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "t.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    yield store
    store.dispose()


def other_writer(path: Path) -> sqlite3.Connection:
    """Another process's connection to the same file: no busy wait, autocommit mode."""
    return sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)


def can_write(path: Path) -> bool:
    """Whether another connection gets the database's write lock now (SQLite's ``BEGIN IMMEDIATE``)."""
    other = other_writer(path)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


def test_a_write_transaction_holds_the_write_lock_from_its_begin(store: Store, path: Path) -> None:
    """Before its first statement: a transaction that upgraded a read lock later could deadlock with another
    writer (SQLITE_BUSY at once, no busy wait), so writers take the lock up front."""
    assert can_write(path)
    with store.begin():
        assert not can_write(path), "the write transaction did not take the write lock at BEGIN"
    assert can_write(path), "the lock outlived the transaction"


def test_a_read_takes_no_write_lock(store: Store, path: Path) -> None:
    """A status query or a health probe reads in a deferred transaction: the webhook writer never waits for it."""
    with store.engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
        assert conn.connection.driver_connection.in_transaction  # one snapshot for the connection's reads
        assert can_write(path)


def test_a_read_after_a_write_in_the_same_thread_is_deferred(store: Store, path: Path) -> None:
    """What makes a BEGIN immediate ends with that BEGIN: the engine's and a worker's later reads (their idle
    looks) stay deferred."""
    with store.begin() as conn:
        conn.execute(text("SELECT 1")).scalar_one()
    with store.engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
        assert conn.connection.driver_connection.in_transaction
        assert can_write(path), "a read after a write transaction took the write lock"


def test_a_begin_that_cannot_get_the_write_lock_fails_as_sqlalchemys_error(path: Path) -> None:
    store = Store(f"sqlite:///{path}", poolclass=StaticPool)  # one connection: its busy timeout set below
    try:
        store.upgrade()
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout = 0")
        other = other_writer(path)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(OperationalError, match="database is locked"), store.begin():
                pytest.fail("the transaction began although another connection holds the write lock")
            other.execute("ROLLBACK")
        finally:
            other.close()
        with store.engine.connect() as conn:  # the failed BEGIN left no write flag behind: a read is deferred
            conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
            assert can_write(path)
        with store.begin() as conn:  # nor a transaction: the next write begins
            assert conn.execute(text("SELECT count(*) FROM outbox")).scalar_one() == 0
    finally:
        store.dispose()


def outbox_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM outbox")).scalar_one())


def add_row(conn: Connection, n: int) -> None:
    """Queue one page (the outbox's own repository)."""
    outbox.enqueue(
        conn, kind="event", destination="pagerduty", source="jira", connection="jira", ticket_id=str(n),
        ticket_key=f"OPS-{n}", rule="r", action="trigger", dedup_key=f"dk-{n}", generation=1, limit_key="k",
        body="{}", change_id=None, now=T0,
    )  # fmt: skip


def test_a_failed_write_transaction_is_rolled_back_and_the_next_one_writes(store: Store) -> None:
    """The write transactions share one kept connection on SQLite: one that fails leaves nothing behind."""
    with pytest.raises(ValueError, match="mid-transaction"), store.begin() as conn:
        add_row(conn, 1)
        raise ValueError("mid-transaction")
    assert outbox_rows(store) == 0
    with store.begin() as conn:
        add_row(conn, 2)
    assert outbox_rows(store) == 1


def test_a_broken_connection_fails_one_transaction_and_the_next_gets_a_fresh_one(store: Store) -> None:
    with store.begin() as conn:
        add_row(conn, 1)
        driver = conn.connection.driver_connection
    assert driver is not None
    driver.close()  # the kept connection is gone underneath (what a dropped connection looks like)
    with pytest.raises(DBAPIError), store.begin() as conn:
        add_row(conn, 2)
    with store.begin() as conn:
        add_row(conn, 3)
    assert outbox_rows(store) == 2


def test_concurrent_writers_take_turns_on_the_kept_connection(store: Store) -> None:
    """Four threads, 50 transactions each, every one reading then writing: none lost, none interleaved."""
    with store.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE counter (n INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO counter VALUES (0)")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                with store.begin() as conn:
                    n = conn.exec_driver_sql("SELECT n FROM counter").scalar_one()
                    conn.exec_driver_sql(f"UPDATE counter SET n = {n + 1}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 200


def test_a_disposed_store_holds_no_connection_and_still_writes(path: Path) -> None:
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    with store.begin() as conn:
        add_row(conn, 1)
        driver = conn.connection.driver_connection
    assert driver is not None
    store.dispose()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):  # no database handle left open
        driver.execute("SELECT 1")
    with store.begin() as conn:  # a CLI command after the service stopped: per transaction, as before
        add_row(conn, 2)
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert outbox_rows(store) == 2
    store.dispose()


def test_write_transactions_reuse_one_connection_and_leave_no_transaction_open(store: Store, path: Path) -> None:
    """No pool checkout per write transaction (the point of keeping it), and between transactions the kept
    connection holds no read snapshot: another connection can checkpoint the whole WAL."""
    checkouts: list[object] = []
    event.listen(store.engine, "checkout", lambda *_: checkouts.append(1))
    for n in range(5):
        with store.begin() as conn:
            add_row(conn, n)
            driver = conn.connection.driver_connection
    assert len(checkouts) <= 1, f"{len(checkouts)} checkouts for 5 write transactions"
    assert driver is not None and not driver.in_transaction
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        busy, _log, _checkpointed = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        other.close()
    assert busy == 0, "a connection's open read transaction blocks the checkpoint"
