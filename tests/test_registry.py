"""The registry of systems is the one list of them: no other module writes the vendors out by hand, and it
refuses registrations that could not work (a name that is no settings section, a duplicate, a late one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from connectors import registry
from connectors.settings import JiraSettings
from kernel.errors import ConfigError
from ticketpager.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = {system.name for system in registry.BUILTIN}
#: the modules that are one system's own code may name it (and the registry names them all, once)
OWN = ("connectors/jira", "connectors/zendesk", "connectors/servicenow", "connectors/registry.py")


def _vendor_lists(path: Path) -> list[str]:
    """Literal collections naming two or more built-in systems, and texts such as 'jira | zendesk'."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        items: list[ast.expr | None] = []
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            items = list(node.elts)
        elif isinstance(node, ast.Dict):
            items = list(node.keys)
        named = {
            i.value.lower() for i in items if isinstance(i, ast.Constant) and str(i.value).lower() in BUILTIN
        }
        if len(named) >= 2:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(named)}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if sum(name in node.value for name in BUILTIN) >= 2:  # prose ("Jira, Zendesk and …") may name them
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    return found


def test_no_module_lists_the_systems_by_hand() -> None:
    folders = ("kernel", "sync", "rules", "connectors", "ticketpager")
    modules = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
    found = [
        problem
        for path in modules
        if not str(path.relative_to(ROOT)).startswith(OWN)
        for problem in _vendor_lists(path)
    ]
    assert found == [], "read connectors.registry instead:\n" + "\n".join(found)


def test_the_settings_tree_has_one_section_per_registered_system() -> None:
    for system in registry.systems():
        assert Settings.model_fields[system.name].annotation is system.settings
    assert isinstance(Settings(_env_file=None).connector("jira"), JiraSettings)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", ["Jira2", "any", "acme-desk", ""])
def test_a_name_that_cannot_be_a_section_source_and_path_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not usable"):
        registry.register(registry.System(name, JiraSettings, frozenset(), "connectors.jira:JiraConnector"))


def test_a_system_registered_after_the_settings_were_built_is_refused() -> None:
    late = registry.System("latedesk", JiraSettings, frozenset(), "connectors.jira:JiraConnector")
    with pytest.raises(ConfigError, match="ticketpager.systems"):
        registry.register(late)
    assert "latedesk" not in registry.names()
