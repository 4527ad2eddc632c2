"""What a newcomer sees when installing and testing from a fresh clone: an install that prints no warnings
(setuptools builds the package the way ``pip install -e .`` does) and a test run whose summary says once,
not once per test, why the PostgreSQL tests were skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.licenses import canonicalize_license_expression
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The first setuptools that reads `project.license` as an SPDX expression (PEP 639); older ones refuse the
# string, newer ones warn about the table form. https://setuptools.pypa.io/en/latest/history.html#v77-0-0
SETUPTOOLS_SPDX = "77.0.0"
WARNING_WORDS = re.compile(r"warning|deprecat|!!|InformationOnly|precedence", re.IGNORECASE)


def test_license_is_an_spdx_expression_and_its_files_exist() -> None:
    project = PYPROJECT["project"]
    license_ = project["license"]
    assert isinstance(license_, str), f"project.license must be an SPDX string, not {license_!r}"
    assert canonicalize_license_expression(license_) == license_
    for pattern in project.get("license-files", []):
        assert sorted(ROOT.glob(pattern)), f"license-files: {pattern!r} matches no file"


def test_the_build_requires_a_setuptools_that_reads_spdx_licenses() -> None:
    (setuptools,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert not setuptools.specifier.contains("76.1.0"), f"{setuptools} allows a setuptools without SPDX support"
    assert setuptools.specifier.contains(SETUPTOOLS_SPDX)


def test_building_the_editable_package_prints_no_warning(tmp_path: Path) -> None:
    """The build step of ``pip install -e '.[test]'`` (pip shows this output with -v): not one warning."""
    build = (
        "import os, sys; from setuptools import build_meta as b; out = sys.argv[1]; "
        "info = b.prepare_metadata_for_build_editable(out); b.build_editable(out, None, os.path.join(out, info))"
    )
    out = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert list(tmp_path.glob("ticketpager-*.whl")), out.stdout + out.stderr
    noisy = [line for line in (out.stdout + out.stderr).splitlines() if WARNING_WORDS.search(line)]
    assert not noisy, "\n".join(noisy)


def test_skipped_postgresql_tests_are_summarised_in_one_line() -> None:
    """Without PostgreSQL the README's test command says once why those tests skipped, with their count."""
    env = {k: v for k, v in os.environ.items() if k != "TICKETPAGER_TEST_POSTGRES_URL"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "postgres", "-p", "no:cacheprovider",
         "tests/test_replicas.py", "tests/test_retention.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    skipped = re.search(r"(\d+) skipped", out.stdout)
    assert skipped and int(skipped.group(1)) > 1, out.stdout
    reason = [line for line in out.stdout.splitlines() if "TICKETPAGER_TEST_POSTGRES_URL" in line]
    assert len(reason) == 1, out.stdout
    assert f"SKIPPED [{skipped.group(1)}]" in reason[0], out.stdout
