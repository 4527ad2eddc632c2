"""``/readyz`` and ``/admin/status`` when the database answers but is not usable as this version expects (a table
missing, a grant revoked, a role that can no longer log in): a 503 with the reason in JSON and one log line,
throttled, never a plain-text 500 with a traceback. On PostgreSQL with a role of the test's own, dropped after."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from tests.harness import make_service
from ticketpager.app import build_app
from ticketpager.service import DATABASE_LOG_EVERY_SECONDS, Service

PD_URL = "http://127.0.0.1:9/v2/enqueue"


def _lines(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(start)]


def _rename(service: Service, old: str, new: str) -> None:
    with service.store.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_a_missing_table_is_a_503_naming_it_and_one_throttled_line_without_a_traceback(
    tmp_path: Path, rules_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The cursors table renamed away (a schema a newer or older release left, or no schema at all): the probe and
    the status say so in JSON; three probes are one log line until the throttle's minute has passed, then one more
    saying how many it stands for; with the table back the replica is ready again."""
    svc = make_service(f"sqlite:///{tmp_path / 'tp.db'}", rules_path, PD_URL, clock)
    try:
        with TestClient(build_app(svc), raise_server_exceptions=False) as client:
            assert client.get("/readyz").status_code == 200
            _rename(svc, "cursors", "cursors_away")
            with caplog.at_level(logging.INFO, logger="ticketpager"):
                answers = [client.get("/readyz") for _ in range(3)]
                status = client.get("/admin/status")
            for answer in answers:
                assert answer.status_code == 503
                body = answer.json()
                assert body["ready"] is False and body["database"] == "unavailable: no such table: cursors"
            assert status.status_code == 503
            assert status.json() == {"error": "database unavailable: no such table: cursors"}

            [ready_line] = _lines(caplog, "/readyz: database unavailable (no such table: cursors) in: SELECT")
            [status_line] = _lines(caplog, "/admin/status: database unavailable (no such table: cursors)")
            for record in (ready_line, status_line):
                assert record.levelno == logging.WARNING and record.exc_info is None
                assert record.getMessage().endswith("answering 503") and "\n" not in record.getMessage()
            assert "Traceback" not in caplog.text

            caplog.clear()
            clock.advance(DATABASE_LOG_EVERY_SECONDS)
            with caplog.at_level(logging.INFO, logger="ticketpager"):
                assert client.get("/readyz").status_code == 503
            [again] = _lines(caplog, "/readyz: database unavailable")
            assert again.getMessage().endswith("answering 503 (2 more since this line was last logged)")

            _rename(svc, "cursors_away", "cursors")
            assert client.get("/readyz").status_code == 200
            assert client.get("/admin/status").status_code == 200
    finally:
        svc.store.dispose()


@pytest.fixture
def limited_role(postgres_url: str) -> Iterator[tuple[str, str, str]]:
    """(a URL of a login role of the test's own, the role's name, the test's schema, which the role may use); the
    role is dropped afterwards."""
    role = f"tp_role_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
    url = make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
    try:
        yield url, role, schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


@pytest.mark.postgres
def test_a_revoked_grant_and_a_role_that_cannot_log_in_are_503s_with_the_reason(
    postgres_url: str,
    limited_role: tuple[str, str, str],
    rules_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service's role loses SELECT on cursors (the ping still passes): 503 naming the privilege; then the role
    may no longer log in (a new connection is refused): 503 naming that, one line each, no traceback."""
    url, role, schema = limited_role
    make_service(postgres_url, rules_path, PD_URL, clock).store.dispose()  # the schema, migrated by its owner
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"'))
    svc = make_service(url, rules_path, PD_URL, clock)
    try:
        with TestClient(build_app(svc), raise_server_exceptions=False) as client:
            assert client.get("/readyz").status_code == 200
            assert client.get("/admin/status").status_code == 200
            with admin.begin() as conn:
                conn.execute(text(f'REVOKE SELECT ON cursors FROM "{role}"'))
            with caplog.at_level(logging.INFO, logger="ticketpager"):
                ready, ready_again, status = client.get("/readyz"), client.get("/readyz"), client.get("/admin/status")
            assert ready.status_code == ready_again.status_code == status.status_code == 503
            assert ready.json()["database"] == "unavailable: permission denied for table cursors"
            assert status.json() == {"error": "database unavailable: permission denied for table cursors"}
            assert len(_lines(caplog, "/readyz: database unavailable (permission denied for table cursors)")) == 1
            assert len(_lines(caplog, "/admin/status: database unavailable (permission denied")) == 1

            caplog.clear()
            with admin.begin() as conn:
                conn.execute(text(f'GRANT SELECT ON cursors TO "{role}"'))
                conn.execute(text(f'ALTER ROLE "{role}" NOLOGIN'))
            svc.store.engine.dispose()  # the pooled sessions go (a restart, a failover): the next must log in
            with caplog.at_level(logging.INFO, logger="ticketpager"):
                ready, status = client.get("/readyz"), client.get("/admin/status")
            assert ready.status_code == status.status_code == 503
            assert "not permitted to log in" in ready.json()["database"]
            assert "not permitted to log in" in status.json()["error"]
            [line] = _lines(caplog, "/readyz: database unavailable (")
            assert "not permitted to log in" in line.getMessage() and line.exc_info is None
            assert "Traceback" not in caplog.text
    finally:
        svc.store.dispose()
        admin.dispose()
