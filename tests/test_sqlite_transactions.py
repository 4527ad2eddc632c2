"""SQLite transactions: a write takes the database's write lock at its BEGIN, a read never does, and a BEGIN
that cannot get the lock fails as SQLAlchemy's ``OperationalError`` (what the recovery paths catch)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool

from sync.store import Store


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
        assert conn.in_transaction()  # one snapshot for the connection's reads
        assert can_write(path)


def test_a_read_after_a_write_in_the_same_thread_is_deferred(store: Store, path: Path) -> None:
    """What makes a BEGIN immediate ends with that BEGIN: the engine's and a worker's later reads (their idle
    looks) stay deferred."""
    with store.begin() as conn:
        conn.execute(text("SELECT 1")).scalar_one()
    with store.engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
        assert can_write(path), "a read after a write transaction took the write lock"


def test_a_begin_that_cannot_get_the_write_lock_fails_as_sqlalchemys_error(path: Path) -> None:
    store = Store(f"sqlite:///{path}", poolclass=StaticPool)  # one connection: its busy timeout set below
    try:
        store.upgrade()
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout = 0")
        other = other_writer(path)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(OperationalError, match="database is locked"), store.begin():
                pytest.fail("the transaction began although another connection holds the write lock")
        finally:
            other.execute("ROLLBACK")
            other.close()
        with store.begin() as conn:  # the failed BEGIN left nothing behind
            assert conn.execute(text("SELECT count(*) FROM outbox")).scalar_one() == 0
    finally:
        store.dispose()
