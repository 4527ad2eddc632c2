"""Database engines and migrations: SQLite (WAL, one writer) by default, PostgreSQL for replicas."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, RootTransaction, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from kernel.errors import ConfigError

log = logging.getLogger("ticketpager.db")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_ID = 0x7469636B  # "tick": the pg_advisory_lock key every replica's migration (migrations/env.py) takes
#: logged once when another process holds that lock, so a start waiting behind its migration is not a silent hang
MIGRATION_LOCK_WAIT = "waiting for the migration lock held by another process"
# PostgreSQL ends a transaction of ours left idle this long. Ours never wait between statements (no network
# call inside a transaction), so only a replica lost with its host or network leaves one: without this its
# row locks (claimed changes, tickets) would last until the server's TCP keepalive notices, hours by default.
# https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-IDLE-IN-TRANSACTION-SESSION-TIMEOUT
IDLE_TRANSACTION_SECONDS = 60.0
# libpq's connection parameters ticketpager sets on every PostgreSQL connection unless the URL's query sets them
# (``?connect_timeout=30``). Without them a database host that drops packets (gone, or behind a firewall) holds a
# worker: psycopg waits 130 s per address for a connection (and tries each address a name resolves to), and a
# statement sent to a host that vanished waits for the kernel's retransmissions, about 15 minutes, or, once sent,
# forever. With them a connection attempt fails in 10 s, a dead peer is noticed within about a minute (30 s idle, then
# 3 probes 10 s apart; unacknowledged data 60 s), and the worker retries as for any database fault.
# https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS
PG_CONNECTION_PARAMETERS: dict[str, int] = {
    "connect_timeout": 10,  # seconds, per address tried (libpq and psycopg round values below 2 up to 2)
    "keepalives": 1,
    "keepalives_idle": 30,  # seconds of silence before the first TCP keepalive probe
    "keepalives_interval": 10,  # seconds between probes
    "keepalives_count": 3,  # probes unanswered before the connection counts as dead
    "tcp_user_timeout": 60_000,  # milliseconds data sent may stay unacknowledged before the connection is dropped
}
# PostgreSQL's SQLSTATEs saying the schema or the grants are not what this code expects: a table or column gone (an
# older replica still running on a schema a newer release migrated, mid-rollout), a schema missing, a privilege
# revoked. They come from the database's state, not from the row at hand, so they count as the database's fault, as a
# lost connection does: what a worker holds stays pending, for this replica once the schema is right or for a
# replica whose code matches it. The price: were one of them ever caused by a single row (a row-level security
# policy, a trigger raising 42501: ticketpager sets neither up), that row would hold its worker up until fixed, loudly
# (``ticketpager_worker_restarts_total``), where marking every row failed would lose them quietly. psycopg raises
# these as ``ProgrammingError``; SQLite says the same as ``OperationalError`` ("no such table"). Not 42883 (undefined
# function): an operator missing for one value's type could be the data's.
# https://www.postgresql.org/docs/current/errcodes-appendix.html
SCHEMA_SQLSTATES = frozenset(
    {
        "3F000",  # invalid_schema_name
        "42501",  # insufficient_privilege
        "42703",  # undefined_column
        "42704",  # undefined_object
        "42P01",  # undefined_table
    }
)


#: what the database URL is called where people set it (every message about it names both)
URL_SETTING = "TICKETPAGER_DATABASE_URL (or --database-url)"
#: how each character that breaks a URL is written inside a password
PERCENT_ENCODING = "@ as %40, / as %2F, : as %3A, ? as %3F, # as %23, % as %25"
EXPECTED_URLS = "sqlite:///path/to/ticketpager.db or postgresql://user:password@host:5432/db"


def parse_url(url: str) -> URL:
    """``url`` parsed, or a :class:`ConfigError` that shows none of it.

    A password with an unencoded ``@`` splits at it: the driver then reports the rest of the password as the host
    it failed to resolve (``failed to resolve host 'etPa55@127.0.0.1'``). So a server URL with more than one ``@``
    is refused before anything connects, and SQLAlchemy's own parse errors (``Could not parse SQLAlchemy URL from
    string '…'``, which quotes the whole URL in some versions, or a bare ``int()`` error for a bad port) are
    replaced by a message without the URL."""
    scheme, separator, rest = url.partition("://")
    if separator and not scheme.startswith("sqlite") and rest.count("@") > 1:
        raise ConfigError(
            f"{URL_SETTING}: more than one '@' before the host, so the password is not percent-encoded and would "
            f"be cut at its '@' (part of it then shown as a host name): percent-encode the user name and password "
            f"({PERCENT_ENCODING})"
        )
    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # never str(exc): it may quote the URL, password and all
        raise ConfigError(
            f"{URL_SETTING} is not a database URL (not shown: it may hold a password); expected {EXPECTED_URLS}, "
            f"the password percent-encoded ({PERCENT_ENCODING})"
        ) from None


def masked_url(url: str) -> str:
    """``url`` as it may be shown (``repr``, logs): the password as ``***``; one that does not parse, not at all."""
    try:
        return parse_url(url).render_as_string(hide_password=True)
    except ConfigError:
        return "(not shown: not a database URL)"


def make_engine(
    url: str, *, idle_transaction_seconds: float | None = IDLE_TRANSACTION_SECONDS, **kwargs: Any
) -> Engine:
    """An engine with the settings ticketpager relies on.

    SQLite: WAL (readers never block the writer), ``synchronous=FULL`` (a change answered 202 survives a
    power cut; group commit keeps that cheap), a busy timeout, foreign keys. PostgreSQL: ``psycopg`` 3,
    pre-ping so a restarted server costs one failed checkout, not an error, connection and keepalive timeouts
    (:data:`PG_CONNECTION_PARAMETERS`, each unless the URL sets it), and ``idle_in_transaction_session_timeout``
    (:data:`IDLE_TRANSACTION_SECONDS`) on every session.
    """
    if url.startswith("postgres://"):  # the Heroku / libpq spelling, which SQLAlchemy does not know
        url = "postgresql+psycopg://" + url[len("postgres://") :]
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below be the only transaction control
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        # SQLAlchemy's BEGIN (its dialect's ``do_begin``, a no-op for pysqlite) issued on the driver: writers
        # (:func:`begin_write`) take the write lock up front, so no lock-upgrade deadlocks; reads stay deferred,
        # so a health probe or a status query never holds the write lock in WAL mode. Not a "begin" event, as
        # SQLAlchemy's recipe has it: any connection event makes every statement of the engine look for
        # listeners, and the event's BEGIN ran as a statement of its own — 12–33 µs of a 170 µs write
        # transaction (docs/performance.md, the twelfth session). Inside ``do_begin`` a driver error is still
        # raised as SQLAlchemy's (``OperationalError``), as every recovery path expects.
        engine.dialect.do_begin = _sqlite_begin  # type: ignore[method-assign]
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        # the URL object, not ``str()`` of it, which masks the password as ``***``
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    # SQLAlchemy lets ``connect_args`` override the URL's query: only what neither the URL nor the caller sets
    connect_args = dict(kwargs.pop("connect_args", {}))
    for name, value in PG_CONNECTION_PARAMETERS.items():
        if name not in parsed.query:
            connect_args.setdefault(name, value)
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    if idle_transaction_seconds:
        milliseconds = int(idle_transaction_seconds * 1000)

        @event.listens_for(engine, "connect")
        def _idle_timeout(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"SET idle_in_transaction_session_timeout = {milliseconds}")
            cur.close()
            dbapi_conn.commit()  # a SET inside a transaction rolled back later would be undone

    return engine


_writing = threading.local()  # set by begin_write around its BEGIN, in its own thread


def _sqlite_begin(dbapi_connection: Any) -> None:
    """SQLite's BEGIN: ``IMMEDIATE`` inside :func:`begin_write`, deferred otherwise (the connection is in
    the driver's autocommit mode, so this is the only transaction control)."""
    dbapi_connection.driver_connection.execute("BEGIN IMMEDIATE" if getattr(_writing, "now", False) else "BEGIN")


def begin_write(conn: Connection) -> RootTransaction:
    """``conn.begin()`` for a write transaction: on SQLite ``BEGIN IMMEDIATE``, which takes the database's
    write lock at once (a deferred transaction upgrading its read lock later can deadlock with another
    writer); elsewhere a plain ``BEGIN``."""
    _writing.now = True
    try:
        return conn.begin()
    finally:
        _writing.now = False


#: every exception type :func:`database_fault` may say yes to: ``except DATABASE_ERRORS`` then asks it which
DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout)


def database_fault(exc: BaseException) -> bool:
    """The database failed, not the data at hand: it is unreachable, restarting or refusing (``OperationalError``,
    ``InterfaceError``), no connection was free in time (the pool's ``TimeoutError``), or its schema or grants are
    not what this code expects (:data:`SCHEMA_SQLSTATES`). Workers retry such an error later with everything they
    held still pending; anything else is the one row's fault, marked failed so the rest go on."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in SCHEMA_SQLSTATES


def failure_reason(exc: BaseException) -> str:
    """A database error in one line: the driver's own message (``exc.orig``), first line only, no
    SQLAlchemy background link or statement."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def failed_statement(exc: BaseException, limit: int = 120) -> str:
    """The start of the SQL a database error met (its text, never its parameters): which of our statements a
    missing column or privilege stopped, so a bug can be told from an older replica or a revoked grant."""
    statement = " ".join(str(getattr(exc, "statement", "") or "").split())
    return statement if len(statement) <= limit else statement[: limit - 1] + "…"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> bool:
    """Bring the schema to ``revision`` (safe to run from several replicas at once on PostgreSQL).

    A schema at a revision this version does not know was migrated by a newer release (a rollback, an old
    pod restarting during a rolling update): it is left as it is, with a warning, instead of failing every
    start — the release notes say when a migration is not compatible with the previous version. Returns
    whether the schema is at a revision this version knows."""
    from alembic.runtime.migration import MigrationContext

    cfg = alembic_config(engine)
    with engine.connect() as probe:  # its own connection: the migration's must start clean (env.py locks first)
        current = MigrationContext.configure(probe).get_current_revision()
    if current is not None and not known_revision(engine, current):
        log.warning(
            "the database schema is at revision %s, newer than this version knows (%s): it was migrated "
            "by a newer release; running without migrating (see its release notes for compatibility)",
            current,
            head_revision(),
        )
        return False
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    return True


def known_revision(engine: Engine, revision: str) -> bool:
    """Whether ``revision`` is one of this version's migrations (else a newer release wrote it)."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util.exc import CommandError

    try:
        ScriptDirectory.from_config(alembic_config(engine)).get_revision(revision)
    except (RevisionError, CommandError):
        return False
    return True


class SchemaBehind(ConfigError):
    """The schema is older than this version's: a command that does not migrate (``status``, ``deadletters``,
    ``silence``) refuses it instead of upgrading behind the operator's back."""


def require_current(engine: Engine) -> bool:
    """Raise :class:`SchemaBehind` unless the schema is at this version's head, without migrating or taking the
    migration lock: a read such as the monitoring cron's ``status --check`` must neither apply a migration (one the
    release notes call incompatible with the version still running, mid-rollout) nor wait behind another process's
    migration. A revision this version does not know (a newer release migrated it) is accepted with the warning
    :func:`upgrade` gives; returns whether the revision is known."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return True
    if current is not None and not known_revision(engine, current):
        log.warning(
            "the database schema is at revision %s, newer than this version knows (%s): it was migrated by a "
            "newer release; reading it without migrating (see its release notes for compatibility)",
            current,
            head,
        )
        return False
    raise SchemaBehind(
        f"the database is at revision {current or 'none'}, this version needs {head}: run 'ticketpager db upgrade' "
        "(or start serve)"
    )


def head_revision() -> str:
    """The newest migration shipped with this version."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(make_engine("sqlite://"))).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def insert_ignore(conn: Connection, table: Any) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
