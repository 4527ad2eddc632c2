"""Console input no handler should fail on, and what a failure looks like (Starlette's test client, SQLite and
PostgreSQL): a page number or id past the database's 64-bit range is treated as absent (the page as without it,
or 404), a silence longer than a year is refused saying so, and anything unexpected is the console's own error
page with its security headers and one log line, never a bare 500."""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.repos.silences import MAX_SILENCE_DAYS
from sync.schema import silences
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service
from tests.test_console import CONSOLE, csrf, login, seed
from tests.test_console_silences import add, break_audit_log
from ticketpager.app import build_app
from ticketpager.console.params import BIGINT_MAX, BIGINT_MIN
from ticketpager.console.web import SECURITY_HEADERS
from ticketpager.service import Service

#: numbers no SQLite INTEGER nor PostgreSQL BIGINT can hold, and the largest and smallest that fit
PAST_BIGINT = ["99999999999999999999999", str(BIGINT_MAX + 1), str(BIGINT_MIN - 1), "9" * 5000]
#: the pages that take a keyset cursor, each with its parameter
CURSOR_PAGES = ["/console/audit?before=", "/console/deadletters?after=", "/console/tickets/jira/1?before="]


@pytest.fixture
def service(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(db_url, rules_path, pd.url, clock, console=CONSOLE)
    yield svc
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    # raise_server_exceptions (the default): an exception escaping the console fails the test
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as c:
        yield c


def has_security_headers(answer: object) -> bool:
    headers = answer.headers  # type: ignore[attr-defined]
    return all(headers.get(name) == value for name, value in SECURITY_HEADERS.items())


@pytest.mark.parametrize("page", CURSOR_PAGES)
def test_a_cursor_past_the_database_range_is_the_page_without_one(
    client: TestClient, service: Service, pd: MockPagerDuty, page: str
) -> None:
    seed(service, pd)
    login(client)
    first = client.get(page.split("?")[0])
    assert first.status_code == 200 and "OPS-1" in client.get("/console/tickets/jira/1").text
    for number in PAST_BIGINT:
        answer = client.get(page + number)
        assert answer.status_code == 200 and has_security_headers(answer), number
        assert answer.text == first.text, f"{number} is read as no cursor at all"
    assert client.get(page + str(BIGINT_MAX)).status_code == 200, "the largest BIGINT is a cursor like any other"


def test_a_silence_id_past_the_database_range_is_no_silence(client: TestClient) -> None:
    login(client)
    page = client.get("/console/silences")
    for number in PAST_BIGINT[:2]:  # digits only: a minus sign is no silence route at all
        confirm = client.get(f"/console/silences/{number}/expire")
        assert confirm.status_code == 404 and f"no silence #{number}" in confirm.text
        expire = client.post(f"/console/silences/{number}/expire", data={"csrf": csrf(page.text)})
        assert expire.status_code == 404 and has_security_headers(expire)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"duration": "99999999999d"}, "duration '99999999999d' is too long"),
        ({"duration": "99999999999999999999999999999999999999999999999s"}, "is too long"),
        ({"duration": f"{MAX_SILENCE_DAYS + 1}d"}, f"a silence lasts at most {MAX_SILENCE_DAYS} days"),
        ({"ends": "9000-01-01T00:00"}, f"a silence lasts at most {MAX_SILENCE_DAYS} days"),
        ({"ends": "9999-12-31T23:59:00-01:00"}, "not a time"),
    ],
)
def test_a_silence_longer_than_the_limit_is_refused_saying_why(
    client: TestClient, service: Service, fields: dict[str, str], problem: str
) -> None:
    login(client)
    refused = add(client, matchers="project=OPS", comment="forever", **fields)
    assert refused.status_code == 400 and problem in html.unescape(refused.text)  # type: ignore[attr-defined]
    with service.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(silences)).scalar_one() == 0


def test_a_silence_of_exactly_the_limit_is_added(client: TestClient) -> None:
    login(client)
    added = add(client, matchers="project=OPS", comment="a long one", duration=f"{MAX_SILENCE_DAYS}d")
    assert added.status_code == 303  # type: ignore[attr-defined]


def test_an_unexpected_failure_is_the_console_error_page_and_one_log_line(
    client: TestClient, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A database fault the handler does not expect (the audit table gone, as a broken disk would do)."""
    login(client)
    break_audit_log(service)
    with caplog.at_level(logging.DEBUG):
        answer = client.get("/console/audit")
    assert answer.status_code == 500 and has_security_headers(answer)
    assert answer.headers["content-type"].startswith("text/html") and "something went wrong" in answer.text
    assert "Log out" in answer.text, "the console's page, its menu included"
    assert "audit_log" not in answer.text, "no database detail for the browser"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    # SQLite says OperationalError (no such table), PostgreSQL ProgrammingError (relation does not exist)
    assert (
        line.startswith(
            (
                "console: GET /console/audit failed: OperationalError",
                "console: GET /console/audit failed: ProgrammingError",
            )
        )
        and "\n" not in line
    )
    assert errors[0].exc_info is None, "one line, not a traceback"
