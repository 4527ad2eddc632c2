"""A dry run marks every page it claims sent without sending it. On a database holding a live instance's work it took
that instance's pages, and they never reached PagerDuty: a dry run refuses such a database, and a live ``serve``
refuses to start beside a dry-run replica (exit 2, one line each). A dry run's own rows, and an idle database, do not
keep it from starting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select

from kernel.clock import FakeClock
from kernel.errors import ConfigError
from sync.schema import outbox, replicas
from tests.factories import RULES, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive, wait_until
from tests.serve_proc import Serve, cli_env, free_port, run_cli
from tests.test_app import jira_body, sign
from tests.test_crash_recovery import serve_env

DEAD_PD = "http://127.0.0.1:9/v2/enqueue"  # nothing listens: PagerDuty takes nothing


def _env(tmp_path: Path, db_url: str, rules: Path, pd_url: str = DEAD_PD) -> dict[str, str]:
    """A ``ticketpager`` child's whole environment: this checkout, none of the caller's settings, the serve tests'."""
    return cli_env(tmp_path, rules=rules, pagerduty_url=pd_url, **serve_env(db_url, rules, pd_url))


def _outbox(db_url: str) -> list[tuple[str, bool, int]]:
    """(status, dry_run, attempts) of every outbox row, in id order, as the database has them."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(outbox.c.status, outbox.c.dry_run, outbox.c.attempts).order_by(outbox.c.id))
            return [(r.status, bool(r.dry_run), int(r.attempts)) for r in rows]
    finally:
        engine.dispose()


def _status(env: dict[str, str], cwd: Path) -> dict[str, object]:
    done = run_cli("status", "--json", env=env, cwd=cwd, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _refused(done: object) -> str:
    """The one line a refused command printed (its exit code 2 checked)."""
    assert getattr(done, "returncode", None) == 2, (getattr(done, "stdout", ""), getattr(done, "stderr", ""))
    lines = [line for line in str(getattr(done, "stderr", "")).splitlines() if line.startswith("ticketpager: ")]
    assert len(lines) == 1, getattr(done, "stderr", "")
    return lines[0]


def test_a_dry_run_refuses_a_database_where_a_live_serve_left_pages_pending(tmp_path: Path) -> None:
    """The reviewer's case: a live ``serve`` queued 3 triggers PagerDuty did not take and stopped; ``serve --dry-run``
    (and ``TICKETPAGER_DRY_RUN=true``, and ``poll --once --dry-run``) on the same database exits 2 saying why, and
    leaves the 3 pending; a live ``serve`` then delivers them to PagerDuty."""
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    db_url = f"sqlite:///{tmp_path / 'tp.db'}"
    env = _env(tmp_path, db_url, rules)
    live = Serve(env).start()
    try:
        for n in range(3):
            body = jira_body(f"5200{n}", status_key="new")
            headers = {"X-Hub-Signature": sign(body), "X-Atlassian-Webhook-Identifier": f"live-{n}"}
            assert live.post("/webhooks/jira", body, headers)[0] == 202
        tried = lambda: [(s, a > 0) for s, _, a in _outbox(db_url)] == [("pending", True)] * 3  # noqa: E731
        assert wait_until(tried), _outbox(db_url)
    finally:
        assert live.stop() == 0, live.output()

    for args, extra in (
        (("serve", "--dry-run"), {}),
        (("serve",), {"TICKETPAGER_DRY_RUN": "true"}),
        (("poll", "--once", "--dry-run"), {}),
    ):
        started = time.monotonic()
        done = run_cli(*args, env={**env, **extra, "TICKETPAGER_PORT": str(free_port())}, cwd=tmp_path, timeout=60)
        line = _refused(done)
        assert time.monotonic() - started < 30
        assert line.startswith(
            "ticketpager: dry run refused: this database holds a live instance's work (3 outbox "
            "row(s) pending that were not queued in dry run)"
        ), line
        assert "a database of its own (TICKETPAGER_DATABASE_URL" in line and "Traceback" not in done.stderr

    status = _status(env, tmp_path)
    assert (status["outbox_pending"], status["incidents_pending"], status["incidents_dry_run"]) == (3, 3, 0)
    assert [(s, d) for s, d, _ in _outbox(db_url)] == [("pending", False)] * 3, "nothing marked sent"

    with MockPagerDuty() as pd:
        again = Serve(_env(tmp_path, db_url, rules, pd.url)).start()
        try:
            assert wait_until(lambda: len(pd.events) == 3), again.output()
        finally:
            assert again.stop() == 0
    assert sorted(e["event_action"] for e in pd.events) == ["trigger"] * 3
    assert [(s, d) for s, d, _ in _outbox(db_url)] == [("sent", False)] * 3


def test_a_live_serve_refuses_a_running_dry_run_and_a_dry_run_refuses_a_running_live_serve(tmp_path: Path) -> None:
    """Both at once: the dry run first, then a live ``serve`` refuses naming it; the live one first, then a dry run
    refuses naming it. A refused process leaves no heartbeat behind: the other starts afterwards."""
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    db_url = f"sqlite:///{tmp_path / 'tp.db'}"
    env = _env(tmp_path, db_url, rules)

    dry = Serve(env, args=("--dry-run",)).start()
    try:
        line = _refused(run_cli("serve", env={**env, "TICKETPAGER_PORT": str(free_port())}, cwd=tmp_path, timeout=60))
        assert line.startswith("ticketpager: refusing to start: replica "), line
        assert "runs in dry run on this database" in line and "give it a database of its own" in line
        line = _refused(run_cli("poll", "--once", env=env, cwd=tmp_path, timeout=60))
        assert "runs in dry run on this database" in line
    finally:
        assert dry.stop() == 0, dry.output()

    live = Serve(env).start()
    try:
        line = _refused(
            run_cli("serve", "--dry-run", env={**env, "TICKETPAGER_PORT": str(free_port())}, cwd=tmp_path, timeout=60)
        )
        assert "dry run refused: this database holds a live instance's work (live replica " in line, line
        engine = create_engine(db_url)
        try:
            with engine.connect() as conn:
                assert len(conn.execute(select(replicas.c.instance)).all()) == 1, "the refused one left no heartbeat"
        finally:
            engine.dispose()
    finally:
        assert live.stop() == 0, live.output()


def test_a_dry_runs_own_pending_rows_and_other_dry_runs_do_not_keep_it_from_starting(
    db_url: str, rules_path: Path, clock: FakeClock
) -> None:
    """Rows a dry run queued and had not yet logged when it stopped say so (``outbox.dry_run``), so the next dry run on
    its database starts; a second dry-run replica beside it starts too; a live instance's row does not let it."""
    first = make_service(db_url, rules_path, DEAD_PD, clock, dry_run=True)
    second = make_service(db_url, rules_path, DEAD_PD, clock, dry_run=True)
    try:
        receive(first, [change(ticket("53001"))])
        assert first.engine.drain() == 1  # queued; the process stops before a delivery worker logged it
        assert [(s, d) for s, d, _ in _outbox(db_url)] == [("pending", True)]
        first.refuse_to_share(register=True)
        second.refuse_to_share(register=True)  # beside the first one's heartbeat
        live = make_service(db_url, rules_path, DEAD_PD, clock)
        try:
            receive(live, [change(ticket("53002"))])
            assert live.engine.drain() == 1
            with pytest.raises(ConfigError, match=r"1 outbox row\(s\) pending that were not queued in dry run"):
                second.refuse_to_share(register=False)
        finally:
            live.store.dispose()
    finally:
        first.store.dispose()
        second.store.dispose()


def test_an_older_releases_heartbeat_counts_as_a_live_replica(db_url: str, rules_path: Path, clock: FakeClock) -> None:
    """A replica of a release before migration 0014 writes its heartbeat without ``dry_run``: a dry run refuses to
    start beside it, naming it, and removes the heartbeat it wrote to look."""
    dry = make_service(db_url, rules_path, DEAD_PD, clock, dry_run=True)
    try:
        with dry.store.begin() as conn:
            conn.execute(
                insert(replicas).values(instance="old-host-7-abcdef", started_at=clock.now(), heartbeat_at=clock.now())
            )
        clock.advance(2)
        with pytest.raises(ConfigError, match=r"live replica old-host-7-abcdef \(heartbeat 2 s ago\)"):
            dry.refuse_to_share(register=True)
        with dry.store.engine.connect() as conn:
            assert list(conn.execute(select(replicas.c.instance)).scalars()) == ["old-host-7-abcdef"]
    finally:
        dry.store.dispose()
