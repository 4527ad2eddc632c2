"""The operator's commands: status, dead letters listed and re-driven, database upgrade."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kernel.clock import FakeClock
from tests.factories import ROUTING_KEY, RULES, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager import cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dead_letter_shown_by_status_and_redriven_by_cli(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PD_PLATFORM_KEY", ROUTING_KEY)
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    with MockPagerDuty() as pd:
        clock = FakeClock()
        svc = make_service(db_url, rules, pd.url, clock)
        pd.fail_next(1, 400)
        receive(svc, [change(ticket())])
        svc.process_all()
        assert pd.events == []

        code, out, _ = run(capsys, "--database-url", db_url, "status", "--json")
        status = json.loads(out)
        assert code == 0 and status["dead_letters"] == 1 and status["tickets_tracked"] == 1

        code, out, _ = run(capsys, "--database-url", db_url, "deadletters", "list", "--json")
        [dead] = json.loads(out)
        assert dead["action"] == "trigger" and dead["ticket"] == "OPS-10001"
        assert "scripted 400" in dead["error"]
        assert dead["routing_key"] == "****" + ROUTING_KEY[-4:]
        assert ROUTING_KEY not in out

        code, out, _ = run(capsys, "--database-url", db_url, "deadletters", "list")
        assert code == 0 and "OPS-10001" in out and ROUTING_KEY not in out

        code, _, err = run(capsys, "--database-url", db_url, "deadletters", "retry")
        assert code == 2 and "--all" in err
        code, out, _ = run(capsys, "--database-url", db_url, "deadletters", "retry", str(dead["id"]))
        assert code == 0 and out.startswith("1 dead letter(s) queued again")

        # the CLI re-drives at wall-clock "now"; the service here runs on a fake clock: bring it there
        clock.advance(max((datetime.now(UTC) - clock.now()).total_seconds(), 0.0) + 1)
        svc.process_all()
        assert [e["event_action"] for e in pd.events] == ["trigger"]
        code, out, _ = run(capsys, "--database-url", db_url, "status")
        assert "dead letters      0" in out and "open incidents    1" in out
        svc.store.dispose()


def test_db_upgrade_reports_the_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, out, _ = run(capsys, "--database-url", url, "db", "upgrade")
    from sync.db import head_revision

    assert code == 0 and f"database at revision {head_revision()}" in out


def test_poll_without_any_source_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    code, _, err = run(capsys, "--database-url", url, "poll", "--once", "--dry-run")
    assert code == 2 and "TICKETPAGER_<SOURCE>__ENABLED" in err


def test_rule_errors_stop_serve_with_the_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("priority: [Highest, P1]", "priorty: [Highest, P1]"))
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--database-url", url, "--rules", str(bad), "serve", "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "priorty" in err and "did you mean 'priority'" in err


def test_bad_settings_name_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKETPAGER_PAGERDUTY__REGION", "mars")
    code, _, err = run(capsys, "--database-url", f"sqlite:///{tmp_path / 'x.db'}", "db", "upgrade")
    assert code == 2
    assert "TICKETPAGER_PAGERDUTY__REGION" in err and "'us' or 'eu'" in err and "Traceback" not in err


def test_lists_and_region_are_forgiving(monkeypatch: pytest.MonkeyPatch) -> None:
    from ticketpager.settings import Settings

    monkeypatch.setenv("TICKETPAGER_PAGERDUTY__REGION", "EU")
    monkeypatch.setenv("TICKETPAGER_ZENDESK__GROUP_IDS", "11, 12")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.pagerduty.region == "eu" and settings.zendesk.group_ids == [11, 12]


def test_misspelled_setting_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TICKETPAGER_PAGERDUTY__REGON", "eu")
    run(capsys, "db", "upgrade", "--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert "unknown setting TICKETPAGER_PAGERDUTY__REGON" in caplog.text
    assert "did you mean TICKETPAGER_PAGERDUTY__REGION" in caplog.text


def test_a_misspelled_setting_in_the_env_file_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The same warning as for the environment: a .env line the settings ignore silently is as easy to misspell."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TICKETPAGER_PAGERDUTY__REGON=eu\nTICKETPAGER_LOG_LEVEL=INFO\n")
    assert run(capsys, "db", "upgrade", "--database-url", f"sqlite:///{tmp_path / 'x.db'}")[0] == 0
    assert "unknown setting in .env: TICKETPAGER_PAGERDUTY__REGON is ignored" in caplog.text
    assert "did you mean TICKETPAGER_PAGERDUTY__REGION" in caplog.text
    assert "TICKETPAGER_LOG_LEVEL" not in caplog.text


@pytest.mark.parametrize("command", [["status"], ["db", "upgrade"], ["poll", "--once", "--dry-run"]], ids=" ".join)
def test_an_empty_database_url_option_is_an_error_not_the_default_file(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "--database-url", "", *command)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "ticketpager: --database-url is empty: give a database URL, or leave the option out"
    )
    assert list(tmp_path.iterdir()) == [], "the default sqlite:///ticketpager.db was used instead"


def test_read_commands_never_create_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "tp.db"
    for argv in (["status"], ["deadletters", "list"]):
        code, _, err = run(capsys, *argv, "--database-url", f"sqlite:///{missing}")
        assert code == 2 and "no database at" in err
    assert not missing.parent.exists()


def test_retry_of_an_unknown_dead_letter_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    run(capsys, "--database-url", url, "db", "upgrade")
    code, out, err = run(capsys, "deadletters", "retry", "999", "--database-url", url)
    assert code == 1 and "no dead letter with id 999" in err and out == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("ticketpager ")


def test_a_mistyped_secret_list_is_explained_without_showing_the_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Single quotes are the classic rotation typo; the error must not print the secrets back."""
    monkeypatch.setenv("TICKETPAGER_JIRA__WEBHOOK_SECRETS", "['oldSecretValue9f3','newSecretValue77a']")
    monkeypatch.setenv("TICKETPAGER_SERVICENOW__BEARER_TOKENS", '["tokenAAA7c1", ')
    code, out, err = run(capsys, "--database-url", f"sqlite:///{tmp_path / 'x.db'}", "db", "upgrade")
    assert code == 2
    assert "TICKETPAGER_JIRA__WEBHOOK_SECRETS" in err and "double quotes" in err
    assert "TICKETPAGER_SERVICENOW__BEARER_TOKENS" in err
    for secret in ("oldSecretValue9f3", "newSecretValue77a", "tokenAAA7c1"):
        assert secret not in err + out


def test_an_unknown_log_level_is_a_settings_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKETPAGER_LOG_LEVEL", "verbose")
    code, _, err = run(capsys, "--database-url", f"sqlite:///{tmp_path / 'x.db'}", "db", "upgrade")
    assert code == 2 and "TICKETPAGER_LOG_LEVEL" in err and "'DEBUG'" in err and "Traceback" not in err
    monkeypatch.setenv("TICKETPAGER_LOG_LEVEL", "warning")  # any case, as before
    assert run(capsys, "--database-url", f"sqlite:///{tmp_path / 'x.db'}", "db", "upgrade")[0] == 0


@pytest.mark.parametrize(
    ("url", "code", "expected"),
    [
        ("postgresql://postgres:hunter2@127.0.0.1:1/test", 1, "cannot use the database"),  # nothing listens
        ("mysql://user@db.example/tickets", 2, "SQLite or PostgreSQL"),
        ("not a url", 2, "expected sqlite:///"),
    ],
)
def test_database_problems_are_one_line_not_a_traceback(
    url: str, code: int, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, out, err = run(capsys, "--database-url", url, "db", "upgrade")
    assert got == code
    last = err.strip().splitlines()[-1]  # after the progress line of `db upgrade`, if any
    assert last.startswith("ticketpager: ") and expected in last and "Traceback" not in err
    assert "hunter2" not in err + out


@pytest.mark.postgres
def test_a_database_that_refuses_a_table_is_one_line_not_a_traceback(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL's ProgrammingError for a table gone (or a grant revoked) reads like a database that refuses us."""
    assert run(capsys, "--database-url", postgres_url, "db", "upgrade")[0] == 0
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
    finally:
        engine.dispose()
    code, _, err = run(capsys, "status", "--database-url", postgres_url)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("ticketpager: cannot use the database:") and "outbox" in err


@pytest.mark.postgres
def test_status_on_a_database_without_ticketpager_tables_says_so(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped schema or database must not be filled with empty tables and reported as '0 tickets'."""
    code, _, err = run(capsys, "status", "--database-url", postgres_url)
    assert code == 2 and "no ticketpager tables" in err and "db upgrade" in err
    assert run(capsys, "--database-url", postgres_url, "db", "upgrade")[0] == 0
    assert run(capsys, "status", "--database-url", postgres_url)[0] == 0


def test_the_libpq_spelling_of_a_postgresql_url_is_accepted() -> None:
    from sync.db import make_engine

    engine = make_engine("postgres://user@127.0.0.1:5432/tickets")
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    engine.dispose()


def test_an_older_version_runs_against_a_schema_a_newer_release_migrated(
    db_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A rollback (or an old pod restarting mid-rollout) meets a schema at a revision it does not know: it
    must start with a warning, not crash-loop on Alembic's "Can't locate revision"."""
    from sqlalchemy import create_engine, text

    assert run(capsys, "--database-url", db_url, "db", "upgrade")[0] == 0
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    engine.dispose()
    code, out, err = run(capsys, "status", "--database-url", db_url)
    assert code == 0 and "Traceback" not in err and "tickets tracked" in out
    assert "newer than this version knows" in caplog.text
    code, out, _ = run(capsys, "--database-url", db_url, "db", "upgrade")
    assert code == 0 and "0099_from_the_future (newer than this version: left as it is)" in out


def test_the_migrations_build_exactly_the_schema_the_code_declares(db_url: str) -> None:
    """A column or index added to sync/schema.py without a migration (or the reverse) shows up here."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from sync.schema import metadata
    from sync.store import Store

    store = Store(db_url)
    try:
        store.upgrade()
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        store.dispose()
