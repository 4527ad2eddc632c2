"""Adding a system is one package plus one registration line: Fakedesk (tests/fake_system/) is registered by
an entry point in the ``ticketpager.systems`` group, as a pip-installed third-party package would be, and gets
settings, the settings table, ``--source``, rule fields and signed webhooks without any file of ours edited.

The entry point lives in a throw-away ``*.dist-info`` directory put on a child process's path (entry points are
read when :mod:`connectors.registry` is first imported, before the settings tree is built from it), so the
checks in tests/fake_system/checks.py run in a child pytest; this process never sees Fakedesk.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from connectors import registry
from rules.load import load_rules
from rules.loader import RuleFileErrors
from ticketpager.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "tests" / "fake_system" / "checks.py"
REGISTRATION = "fakedesk = tests.fake_system:SYSTEM"  # the one line that adds the system


def installed(tmp_path: Path, line: str) -> dict[str, str]:
    """An environment whose path holds a distribution declaring ``line`` in the ticketpager.systems group."""
    dist = tmp_path / "site" / "fakedesk_ticketpager-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakedesk-ticketpager\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{line}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETPAGER_") or "POSTGRES" in k}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(ROOT)])
    return env


def test_a_fourth_system_registered_by_one_entry_point_works_end_to_end(tmp_path: Path) -> None:
    tests = [node.name for node in ast.parse(CHECKS.read_text()).body
             if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(CHECKS)],
        cwd=ROOT, env=installed(tmp_path, REGISTRATION), capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    passed = re.search(r"(\d+) passed", child.stdout)
    # every check ran (the webhook one also on PostgreSQL when TICKETPAGER_TEST_POSTGRES_URL is set)
    assert passed is not None and int(passed.group(1)) >= len(tests), child.stdout[-2000:]


def test_without_the_registration_line_the_system_does_not_exist(tmp_path: Path) -> None:
    assert "fakedesk" not in registry.names() and "fakedesk" not in Settings.model_fields
    rule = tmp_path / "fakedesk.yaml"
    rule.write_text(CHECKS.read_text().split('RULE = """', 1)[1].split('"""', 1)[0])
    with pytest.raises(RuleFileErrors, match="unknown source 'fakedesk'"):
        load_rules(rule)


def test_a_broken_registration_is_named(tmp_path: Path) -> None:
    env = installed(tmp_path, "fakedesk = tests.fake_system:NO_SUCH_SYSTEM")
    child = subprocess.run(
        [sys.executable, "-c", "from connectors import registry; registry.names()"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert child.returncode != 0
    assert "system plug-in 'fakedesk' (tests.fake_system:NO_SUCH_SYSTEM) does not load" in child.stderr
