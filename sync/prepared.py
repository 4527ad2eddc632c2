"""SQLite's hot statements executed on the driver connection, compiled once from their SQLAlchemy Core form.

SQLAlchemy's execution machinery (an execution context, each parameter and each result value processed by its
own call chain, a result object) cost more than SQLite's own work on the engine's path: about a third of the
engine's instructions in a batch of five changes (issue 19). A :class:`Prepared` statement keeps its SQL where it
is written, in Core, in its repository. On SQLite (the ``sqlite3`` driver) it is compiled once per set of parameter
names, and its text once per length of each list parameter, to SQLite's SQL and a plan of where each ``?`` takes
its value; ``sqlite3`` then runs it in the caller's transaction. Values go through the columns' own bind processors
and results through their result processors, ``None`` included, as in Core; a driver error, also one met while
the rows are fetched, is raised as SQLAlchemy's (:class:`~sqlalchemy.exc.DBAPIError` subclasses), so the engine
still tells a database error (retry the batch) from a bad change. Listeners of the engine's
``before_cursor_execute`` are told of each statement (without a cursor or a context; they cannot rewrite it).
The webhook writer, which runs its INSERT in a transaction of its own on the driver, takes the statement's text and
parameter maker from :meth:`Prepared.driver_statement`: its SQL too is written once, in Core.

Core runs it instead: on other databases and drivers; for a write outside a transaction (Core begins one); for a
parameter whose value Core works out per execution (a Python-side column default, a ``callable_``, a tuple
``IN``, a list rendered into the text) or an empty list; for a SELECT whose columns Core would name itself (two of
one name, an unlabelled expression). ``tests/test_prepared.py`` checks each kind of statement against Core and
that the engine's and the delivery workers' statements take this path.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.types import TupleType

Processor = Callable[[Any], Any] | None
#: a row read: column name to value (Core's ``RowMapping`` is one too)
Row = Mapping[Any, Any]


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one ``?`` (or, for a list parameter, a run of them) takes its value."""

    name: str | None  # the parameter's name; None: a value of the statement itself (``constant``)
    constant: Any
    process: Processor
    expanding: bool  # a list parameter (``IN``): one ``?`` per element


@dataclass(frozen=True, slots=True)
class _Plan:
    parts: tuple[str, ...]  # the SQL text around each list parameter's placeholder (one more than the lists)
    slots: tuple[_Slot, ...]
    columns: tuple[tuple[str, Processor], ...]  # a SELECT's result columns; () for a statement that returns none
    sql: str | None  # the text when the statement has no list parameter
    lists: tuple[str, ...]  # the list parameters' names, in the order of ``parts``


#: texts kept per statement, one per combination of its lists' lengths (a batch's keys: up to 50 ids, a few systems
#: and connections)
_TEXTS_KEPT = 4096
#: how SQLAlchemy's compiler leaves a list (``expanding``) parameter in the SQL text, to be rendered per execution
_POSTCOMPILE = "__[POSTCOMPILE_{}]"


class Prepared:
    """A Core statement that SQLite runs without SQLAlchemy's per-execution work (see the module's docstring)."""

    def __init__(self, statement: Select[Any] | UpdateBase) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, ...], _Plan | None] = {}
        self._texts: dict[tuple[tuple[str, ...], tuple[int, ...]], str] = {}

    def on_driver(self, dialect: Dialect, keys: Sequence[str]) -> bool:
        """Whether ``dialect`` runs this statement with parameters named ``keys`` on the driver connection (False:
        through Core)."""
        return dialect.name == "sqlite" and self._plan(dialect, tuple(keys)) is not None

    def driver_statement(
        self, dialect: Dialect, keys: Sequence[str]
    ) -> tuple[str, Callable[[Mapping[str, Any]], list[Any]]] | None:
        """For a caller that runs this statement on the ``sqlite3`` connection itself, in a transaction of its own
        (the webhook writer's ``BEGIN IMMEDIATE``): its SQL text, and the function that makes one row's parameters
        from its values by name (the columns' bind processors applied). None where Core must run it (see the
        module's docstring) or the statement has a list parameter."""
        plan = self._plan(dialect, tuple(keys)) if dialect.name == "sqlite" else None
        if plan is None or plan.sql is None:
            return None
        return plan.sql, functools.partial(self._params, plan)

    # -- compiling -----------------------------------------------------------------------------------------
    def _plan(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan | None:
        if keys not in self._plans:
            self._plans[keys] = self._compile(dialect, keys)
        return self._plans[keys]

    def _compile(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan | None:
        """The plan for parameters named ``keys``; None: run by Core instead (see the module's docstring)."""
        if dialect.driver != "pysqlite":  # another SQLite driver raises other errors
            return None
        compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            return None
        if compiled.insert_prefetch or compiled.update_prefetch or compiled.literal_execute_params:
            return None
        constants = compiled.construct_params(_check=False)
        slots: list[_Slot] = []
        parts: list[str] = []
        rest = compiled.string
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if bind.callable is not None or isinstance(bind.type, TupleType):  # a value per execution; (a, b) IN
                return None
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            given = name in keys
            if bind.expanding:
                token = _POSTCOMPILE.format(name)
                if not given or rest.count(token) != 1:
                    return None
                before, rest = rest.split(token)
                parts.append(before)
            elif not given and bind.required:
                return None
            slots.append(_Slot(name if given else None, constants.get(name), process, bind.expanding))
        parts.append(rest)
        if any("__[POSTCOMPILE" in part for part in parts):
            return None
        columns: tuple[tuple[str, Processor], ...] = ()
        if isinstance(self.statement, Select):
            selected = list(self.statement.selected_columns)
            names = [c.key for c in selected]
            if None in names or len(set(names)) != len(names):  # Core names these itself (id_1, anon_1)
                return None
            columns = tuple(
                (str(c.key), c.type.dialect_impl(dialect).result_processor(dialect, None)) for c in selected
            )
        sql = parts[0] if len(parts) == 1 else None
        lists = tuple(s.name for s in slots if s.expanding and s.name is not None)
        return _Plan(tuple(parts), tuple(slots), columns, sql, lists)

    def _text(self, plan: _Plan, keys: tuple[str, ...], row: Mapping[str, Any]) -> str:
        """The SQL text for ``row``'s list lengths (cached per lengths)."""
        if plan.sql is not None:
            return plan.sql
        lengths = tuple(len(row[name]) for name in plan.lists)
        text = self._texts.get((keys, lengths))
        if text is None:
            pieces = [plan.parts[0]]
            for n, part in zip(lengths, plan.parts[1:], strict=True):
                pieces.append(", ".join("?" * n))
                pieces.append(part)
            if len(self._texts) >= _TEXTS_KEPT:  # lists of many lengths (many connections): start again
                self._texts.clear()
            text = self._texts[(keys, lengths)] = "".join(pieces)
        return text

    @staticmethod
    def _params(plan: _Plan, row: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = []
        for slot in plan.slots:
            value = slot.constant if slot.name is None else row[slot.name]
            process = slot.process
            if slot.expanding:
                out.extend(value if process is None else [process(v) for v in value])
            else:
                out.append(value if process is None else process(value))
        return out

    # -- running -------------------------------------------------------------------------------------------
    @staticmethod
    def _raw(conn: Connection, sql: str, params: Any, *, many: bool, fetch: bool = False) -> Any:
        """``sqlite3``'s execute(many) of ``sql`` on ``conn``'s driver connection (in its transaction). Listeners
        of the engine's ``before_cursor_execute`` see it as they see a Core execute (statement counts in tests and
        ``bench.idle_threads``; nothing in the service listens)."""
        if conn._has_events or conn.engine._has_events:  # noqa: SLF001 - as Core itself decides
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, None, sql, params, None, many)
        raw = conn.connection.driver_connection  # sqlite3.Connection
        try:
            cursor = raw.executemany(sql, params) if many else raw.execute(sql, params)  # type: ignore[union-attr]
            return cursor.fetchall() if fetch else cursor.rowcount  # rows after the first are read here
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc

    def _fast(
        self, conn: Connection, params: Mapping[str, Any], *, write: bool
    ) -> tuple[_Plan, tuple[str, ...]] | None:
        """The plan for ``params`` when SQLite runs it here (None: Core does; an empty list too, which Core renders
        as a comparison that matches nothing)."""
        if conn.dialect.name != "sqlite" or (write and not conn.in_transaction()):  # Core begins one itself
            return None
        keys = tuple(params)
        plan = self._plan(conn.dialect, keys)
        if plan is None or any(not params[name] for name in plan.lists):
            return None
        return plan, keys

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run the statement once per row (every row with the same keys) in ``conn``'s transaction; the rows it
        changed, in all."""
        if not rows:
            return 0
        fast = self._fast(conn, rows[0], write=True)
        plan = None if fast is None else fast[0]
        if plan is None or plan.sql is None:  # a list parameter: each row's own text
            return int(conn.execute(self.statement, list(rows)).rowcount)
        return int(self._raw(conn, plan.sql, [self._params(plan, row) for row in rows], many=True))

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run a write once in ``conn``'s transaction; the rows it changed."""
        fast = self._fast(conn, params, write=True)
        if fast is None:
            return int(conn.execute(self.statement, dict(params)).rowcount)
        plan, keys = fast
        return int(self._raw(conn, self._text(plan, keys, params), self._params(plan, params), many=False))

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Row]:
        """A SELECT's rows as mappings of column name to value, as Core's ``.mappings().all()``."""
        params = params or {}
        fast = self._fast(conn, params, write=False)
        if fast is None:
            return cast(list[Row], conn.execute(self.statement, dict(params)).mappings().all())
        plan, keys = fast
        sql = self._text(plan, keys, params)
        fetched = self._raw(conn, sql, self._params(plan, params), many=False, fetch=True)
        columns = plan.columns
        out: list[Row] = []  # plain dicts
        for record in fetched:
            out.append(
                {
                    name: value if process is None else process(value)
                    for (name, process), value in zip(columns, record, strict=True)
                }
            )
        return out
