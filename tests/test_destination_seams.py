"""The pipeline knows destinations only through the kernel's Destination seam: the delivery worker, the engine,
the lifecycle and the model import no connector, and PagerDuty's event shape and limits live in its connector."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

#: the generic modules, by import name
GENERIC = ["sync.delivery", "sync.engine", "kernel.lifecycle", "kernel.model", "rules.evaluator"]


def _path(names: str) -> Path:
    for name in names.split("|"):
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            continue
        if spec is not None and spec.origin:
            return Path(spec.origin)
    raise AssertionError(f"none of {names} exists")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # imports inside functions count too
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", GENERIC)
def test_generic_pipeline_modules_import_no_connector(module: str) -> None:
    assert not {m for m in _imports(_path(module)) if m.split(".")[0] == "connectors"}


@pytest.mark.parametrize("module", GENERIC)
def test_pagerduty_limits_are_not_spelled_out_in_the_pipeline(module: str) -> None:
    text = _path(module).read_text()
    for limit in ("512 * 1024", "500 * 1024", "developer.pagerduty.com"):
        assert limit not in text, f"{module} knows PagerDuty's {limit}"
