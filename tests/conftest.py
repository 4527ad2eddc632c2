"""Shared fixtures: one parametrized database fixture runs every store test on SQLite and PostgreSQL.

PostgreSQL tests need ``TICKETPAGER_TEST_POSTGRES_URL`` (``.ci/run`` sets it to the local server); each
test gets its own schema, dropped afterwards. Without the variable they skip, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
from sqlalchemy import create_engine, text

from connectors import registry  # noqa: F401  (declares the systems' rule fields, as the application does)
from kernel.clock import FakeClock
from tests.fakes.pagerduty_server import MockPagerDuty

PG_URL = os.environ.get("TICKETPAGER_TEST_POSTGRES_URL", "")
PG_SKIP = "PostgreSQL tests need TICKETPAGER_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)"


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    url = base.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema."""
    if not PG_URL:
        pytest.skip(PG_SKIP)
    schema = f"tp_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(PG_URL, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ticketpager.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pd() -> Iterator[MockPagerDuty]:
    """A local PagerDuty Events API (a module may define its own ``pd``: a slow one, one on the fake clock)."""
    with MockPagerDuty() as mock:
        yield mock


@pytest.fixture
def rules_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A rules directory with the OPS rule of tests.factories, its routing key set in the environment."""
    from tests.factories import ROUTING_KEY, RULES

    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    path = tmp_path / "rules"
    path.mkdir()
    (path / "ops.yaml").write_text(RULES)
    return path


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """HTTP mocked at the wire for the vendors' client libraries (requests); unused mocks are allowed."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Skipped tests, one line per reason with its count (``-rs`` / ``-ra`` still list every test): without
    PostgreSQL the README's test command would otherwise print the same reason once per skipped test."""
    if "s" in terminalreporter.reportchars:
        return
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.write_sep("=", "skipped, by reason")
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"SKIPPED [{count}] {reason}")
