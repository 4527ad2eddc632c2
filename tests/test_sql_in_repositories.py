"""SQL in one place per aggregate: only the repositories (``sync/repos/``), the schema, ``sync/db.py`` and the
migrations build SQL. Anywhere else in our packages, a SQLAlchemy ``select`` / ``insert`` / ``update`` /
``delete`` / ``text`` / ``exists`` (imported under any name, or reached through a module alias such as
``sa.update``) or a ``table.insert()``-style call on a table of ``sync.schema`` is named with its file and line,
e.g. ``sync/engine.py:42: update(...)``: move it into the repository of its aggregate.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_architecture import LAYERS, ROOT, plant

#: where SQL may be built (paths relative to the project root; a folder allows everything under it)
ALLOWED = ("sync/repos/", "sync/schema.py", "sync/db.py", "sync/migrations/")
#: the SQLAlchemy functions that build a statement or a piece of one
BUILDERS = frozenset({"select", "insert", "update", "delete", "text", "exists", "union", "union_all"})
#: the methods of a ``Table`` that build a statement
TABLE_METHODS = frozenset({"select", "insert", "update", "delete"})


def _names(tree: ast.AST) -> tuple[dict[str, str], set[str], set[str]]:
    """(local name -> SQLAlchemy builder it is, names bound to a SQLAlchemy module, names of schema tables)."""
    builders: dict[str, str] = {}
    modules: set[str] = set()
    tables: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sqlalchemy":
                    modules.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                local = alias.asname or alias.name
                if node.module.split(".")[0] == "sqlalchemy":
                    if alias.name in BUILDERS:
                        builders[local] = alias.name
                    elif alias.name.islower():  # a module (``from sqlalchemy.dialects import postgresql``)
                        modules.add(local)
                elif node.module == "sync.schema":
                    tables.add(local)
    return builders, modules, tables


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def sql_built_in(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every SQL construct built in one module."""
    builders, modules, tables = _names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in builders:
            found.append((node.lineno, f"{builders[func.id]}(...)"))
        elif isinstance(func, ast.Attribute):
            root = _root_name(func.value)
            if root in modules and func.attr in BUILDERS:
                found.append((node.lineno, f"{ast.unparse(func)}(...)"))
            elif root in tables and func.attr in TABLE_METHODS:
                found.append((node.lineno, f"{ast.unparse(func)}(...)"))
    return found


def sql_outside_repositories(root: Path) -> list[str]:
    """``file:line: construct`` for each SQL construct built outside the allowed modules."""
    problems = []
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if any(relative == allowed or relative.startswith(allowed) for allowed in ALLOWED):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            problems.extend(f"{relative}:{line}: {what}" for line, what in sql_built_in(tree))
    return sorted(problems)


def test_only_the_repositories_build_sql() -> None:
    assert sql_outside_repositories(ROOT) == []


def test_the_repositories_are_seen_building_sql() -> None:
    """The scan recognises the repositories' own statements (it would pass vacuously otherwise)."""
    found = {path.name for path in (ROOT / "sync" / "repos").glob("*.py") if sql_built_in(ast.parse(path.read_text()))}
    assert {"changes.py", "tickets.py", "outbox.py", "cursors.py", "incidents.py"} <= found


# -- the checker catches what it is for (a planted tree) ---------------------------------------------------


def test_sql_built_outside_a_repository_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "sync" / "repos").mkdir(parents=True)
    root = plant(
        tmp_path,
        {
            "sync/engine.py": (
                "from sqlalchemy import update as u, func\n"
                "from sync.schema import outbox\n"
                "def f(conn):\n"
                "    conn.execute(u(outbox).values(status='sent'))\n"
                "    return outbox.delete(), func.count()\n"
            ),
            "ticketpager/cli.py": "import sqlalchemy as sa\nQ = sa.sql.text('SELECT 1')\n",
            "connectors/jira.py": (
                "from sqlalchemy.dialects import postgresql\nfrom sqlalchemy import exists\n"
                "X = postgresql.insert(None)\nY = exists()\n"
            ),
            "sync/repos/outbox.py": (
                "from sqlalchemy import update\nfrom sync.schema import outbox\nQ = update(outbox)\n"
            ),
            "sync/db.py": "from sqlalchemy import text\nQ = text('SELECT 1')\n",
        },
    )
    assert sql_outside_repositories(root) == [
        "connectors/jira.py:3: postgresql.insert(...)",
        "connectors/jira.py:4: exists(...)",
        "sync/engine.py:4: update(...)",
        "sync/engine.py:5: outbox.delete(...)",
        "ticketpager/cli.py:2: sa.sql.text(...)",
    ]


def test_names_that_only_look_like_sql_are_not_flagged(tmp_path: Path) -> None:
    """A dict's ``update``, a set's ``update``, a list's ``insert``, a path's ``exists``: not SQL."""
    root = plant(
        tmp_path,
        {
            "connectors/zendesk.py": (
                "from pathlib import Path\n"
                "def f(d, words):\n"
                "    d.update({'a': 1}); words.insert(0, 'x')\n"
                "    return Path('x').exists()\n"
            ),
        },
    )
    assert sql_outside_repositories(root) == []
