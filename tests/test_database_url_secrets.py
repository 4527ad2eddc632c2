"""A database URL that does not parse as meant never shows its password, or any piece of it: an unencoded '@'
used to put the rest of the password in the driver's 'failed to resolve host …', and SQLAlchemy's parse error
quoted the whole URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager import cli

#: a piece of a password this long in the output gives part of it away
FRAGMENT = 4


def _fragments(password: str) -> list[str]:
    return [password[i : i + FRAGMENT] for i in range(len(password) - FRAGMENT + 1)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


UNENCODED = [  # (URL, its password)
    ("postgresql+psycopg://u:S3cr@etPa55@127.0.0.1:5432/db", "S3cr@etPa55"),
    ("postgresql+psycopg://u:p@ss%2F/w:rd@127.0.0.1:5432/db", "p@ss%2F/w:rd"),
    ("postgres://tp:Pa55@w0rd@db.internal:5432/tp", "Pa55@w0rd"),  # the libpq spelling
]
MALFORMED = [
    ("postgresql+psycopg//u:Sup3rS3cretPw@db:5432/x", "Sup3rS3cretPw"),  # no ':' after the scheme
    ("postgresql+psycopg://u:Sup3rS3cretPw@db:notaport/x", "Sup3rS3cretPw"),  # used to be a ValueError traceback
]
COMMANDS = [
    ["status"], ["deadletters", "list"], ["db", "upgrade"], ["serve", "--dry-run"], ["poll", "--once", "--dry-run"]
]


@pytest.mark.parametrize(("url", "password"), UNENCODED)
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_unencoded_at_sign_is_refused_without_showing_the_password(
    url: str, password: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, shown = run(capsys, "--database-url", url, *command)
    assert code == 2 and "Traceback" not in shown
    last = shown.strip().splitlines()[-1]
    assert last.startswith("ticketpager: TICKETPAGER_DATABASE_URL (or --database-url): more than one '@'")
    assert "percent-encode" in last and "@ as %40, / as %2F, : as %3A" in last
    for piece in _fragments(password):
        assert piece not in shown, piece


@pytest.mark.parametrize(("url", "password"), MALFORMED)
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_url_that_does_not_parse_is_reported_without_it(
    url: str, password: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, shown = run(capsys, "--database-url", url, *command)
    assert code == 2 and "Traceback" not in shown
    last = shown.strip().splitlines()[-1]
    assert last.startswith("ticketpager: TICKETPAGER_DATABASE_URL (or --database-url) is not a database URL")
    assert "expected sqlite:///" in last
    for piece in _fragments(password):
        assert piece not in shown, piece


def test_an_at_sign_in_a_sqlite_path_is_not_a_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite URLs have no host or password: an '@' in the file's path is just a character."""
    url = f"sqlite:///{tmp_path}/ops@team/a@b.db"
    assert run(capsys, "--database-url", url, "db", "upgrade")[0] == 0
    assert run(capsys, "--database-url", url, "status")[0] == 0


@pytest.mark.postgres
def test_the_percent_encoded_password_the_message_asks_for_connects(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The advice works: '@' written as %40 reaches the server as the password (the test server trusts it)."""
    url = postgres_url.replace("://postgres@", "://postgres:S3cr%40etPa55@", 1)
    assert url != postgres_url
    code, shown = run(capsys, "--database-url", url, "db", "upgrade")
    assert code == 0 and "S3cr" not in shown and "etPa55" not in shown
    assert run(capsys, "--database-url", url, "status")[0] == 0
