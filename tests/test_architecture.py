"""The layers of docs/architecture.md hold: every import between our top-level packages points down.

``kernel`` (ground floor) imports nothing of ours; ``sync`` (pipeline), ``rules`` and ``connectors`` import only
``kernel``; ``ticketpager`` (application) may import all of them. Every import counts — at module level, inside a
function, under ``TYPE_CHECKING`` — because an import moved into a function to dodge a cycle is still an arrow.
Inside one package, the runtime imports between modules form no cycle either. A failure names the file and
line of the import to remove, e.g. ``connectors/jira.py:12: connectors -> sync (sideways)``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: package -> floor; an import may only point at the same package or a lower floor
LAYERS: dict[str, int] = {"kernel": 0, "sync": 1, "rules": 1, "connectors": 1, "ticketpager": 2}


@dataclass(frozen=True)
class Arrow:
    path: Path  # relative to the checked root
    line: int
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    runtime: bool  # False: only under ``if TYPE_CHECKING:``


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def arrows(root: Path) -> Iterator[Arrow]:
    """Every import of one of our packages, from every module of every package under ``root``."""
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            source = module_name(root, path)
            is_package = path.name == "__init__.py"
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                targets: list[str] = []
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:  # relative: resolved against the importing module's package
                        anchor = source.split(".")[: len(source.split(".")) - node.level + (1 if is_package else 0)]
                        base = ".".join([*anchor, *([base] if base else [])])
                    # `from pkg import submodule` is an arrow to the submodule, `from pkg.mod import name` to mod
                    targets = [
                        f"{base}.{alias.name}" if _is_module(root, f"{base}.{alias.name}") else base
                        for alias in node.names
                    ]
                for target in targets:
                    if target.split(".")[0] in LAYERS:
                        runtime = not _type_checking_only(node, parents)
                        yield Arrow(path.relative_to(root), node.lineno, source, target, runtime)


def _is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_violations(root: Path) -> list[str]:
    """``file:line: from -> to (upward|sideways)`` for each import that does not point down."""
    problems = []
    for arrow in arrows(root):
        here, there = arrow.source.split(".")[0], arrow.target.split(".")[0]
        if here == there:
            continue
        if LAYERS[there] > LAYERS[here]:
            problems.append(f"{arrow.path}:{arrow.line}: {here} -> {there} (upward: import {arrow.target})")
        elif LAYERS[there] == LAYERS[here]:
            problems.append(f"{arrow.path}:{arrow.line}: {here} -> {there} (sideways: import {arrow.target})")
    return sorted(set(problems))  # `from m import a, b` is one arrow


def cycles(root: Path) -> list[str]:
    """Import cycles: between top-level packages, and between the modules of one package (runtime imports;
    an ``__init__`` re-exporting its own modules is not an arrow back from them)."""
    package_edges: dict[str, dict[str, Arrow]] = {}
    module_edges: dict[str, dict[str, Arrow]] = {}
    for arrow in arrows(root):
        here, there = arrow.source.split(".")[0], arrow.target.split(".")[0]
        if here != there:
            package_edges.setdefault(here, {}).setdefault(there, arrow)
        elif arrow.runtime and arrow.target != here and arrow.source != here:
            module_edges.setdefault(arrow.source, {}).setdefault(arrow.target, arrow)
    return _find_cycles(package_edges) + _find_cycles(module_edges)


def _find_cycles(edges: dict[str, dict[str, Arrow]]) -> list[str]:
    found: list[str] = []
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            loop = [*trail[trail.index(node) :], node]
            where = ", ".join(
                f"{edges[a][b].path}:{edges[a][b].line}" for a, b in zip(loop, loop[1:], strict=False)
            )
            found.append(f"cycle {' -> '.join(loop)} ({where})")
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, {})):
            visit(nxt, [*trail, node])
        done.add(node)

    for start in sorted(edges):
        visit(start, [])
    return found


# -- the project ------------------------------------------------------------------------------------------


def test_every_import_between_our_packages_points_down() -> None:
    problems = layer_violations(ROOT)
    assert not problems, "imports against the layers (docs/architecture.md):\n" + "\n".join(problems)


def test_no_import_cycle_between_packages_or_inside_one() -> None:
    found = cycles(ROOT)
    assert not found, "\n".join(found)


def test_the_checker_sees_every_package() -> None:
    """A renamed or new top-level package must be placed on a floor, or the checks above skip it."""
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert ours == set(LAYERS), f"packages without a floor in LAYERS: {sorted(ours - set(LAYERS))}"


def test_python_dash_m_ticketpager_is_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ticketpager", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "usage: ticketpager" in out.stdout
    assert "serve" in out.stdout


# -- the checker catches what it is for (a planted tree) ---------------------------------------------------


def plant(root: Path, files: dict[str, str]) -> Path:
    for package in LAYERS:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_an_upward_import_inside_a_function_is_named_with_its_line(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "kernel/model.py": "X = 1\n",
            "sync/engine.py": "from kernel.model import X\n\n\ndef run():\n    from ticketpager.cli import main\n",
        },
    )
    assert layer_violations(root) == ["sync/engine.py:5: sync -> ticketpager (upward: import ticketpager.cli)"]


def test_a_sideways_import_is_named_even_when_only_for_typing(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "connectors/jira.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sync.store\n",
            "rules/evaluator.py": "from connectors import jira\n",
        },
    )
    assert layer_violations(root) == [
        "connectors/jira.py:3: connectors -> sync (sideways: import sync.store)",
        "rules/evaluator.py:1: rules -> connectors (sideways: import connectors.jira)",
    ]


def test_a_cycle_between_packages_and_one_inside_a_package_are_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "kernel/clock.py": "import rules.spec\n",
            "rules/spec.py": "from kernel import clock\n",
            "sync/store.py": "from sync.heartbeat import beat\n",
            "sync/heartbeat.py": "def beat():\n    from sync.store import Store\n",
        },
    )
    assert cycles(root) == [
        "cycle kernel -> rules -> kernel (kernel/clock.py:1, rules/spec.py:1)",
        "cycle sync.heartbeat -> sync.store -> sync.heartbeat (sync/heartbeat.py:2, sync/store.py:1)",
    ]


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    root = plant(tmp_path, {"kernel/errors.py": "from ..sync import store\n", "sync/store.py": ""})
    assert layer_violations(root) == ["kernel/errors.py:1: kernel -> sync (upward: import sync.store)"]
