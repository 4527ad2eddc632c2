"""Silences (issue 18): a matching active silence holds a new incident's trigger ("silenced by #id" in the
decision log) while acknowledge / resolve still go out; when it ends (its end passes, or `silence expire`)
the tickets it held that still match page once. Stored in the database and honoured by every replica; each
add / expire is in the audit log. On SQLite and PostgreSQL, time from the injected clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kernel import redact
from kernel.clock import FakeClock
from kernel.model import StatusCategory
from rules.silence_match import MatcherErrors, compile_matchers, load_match_file, parse_match
from sync.repos import audit
from sync.repos.silences import (
    MAX_SILENCE,
    MAX_SILENCE_DAYS,
    Silence,
    SilenceError,
    add_silence,
    expire_silence,
    list_silences,
)
from sync.store import Store
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager import cli, silence_cli
from ticketpager.exitcodes import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from ticketpager.service import Service

OPS = {"project": {"equals": "OPS"}}


@pytest.fixture
def service(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(db_url, rules_path, pd.url, clock)
    yield svc
    svc.store.dispose()


def actions(pd: MockPagerDuty) -> list[str]:
    return [e["event_action"] for e in pd.events]


def silence(svc: Service, clock: FakeClock, matchers: dict[str, Any] = OPS, hours: float = 2, **kw: Any) -> Silence:
    now = clock.now()
    starts = kw.pop("starts", now)
    with svc.store.begin() as conn:
        return add_silence(conn, matchers, starts, starts + timedelta(hours=hours), "ACME migration", "alice", now)


def last_decision(svc: Service, ticket_id: str = "10001") -> tuple[str, dict[str, Any]]:
    row = svc.store.decisions_for("jira", ticket_id)[0]
    return row["outcome"], json.loads(row["detail"])


# ------------------------------------------------------------------------------------------- the engine


def test_an_active_silence_holds_the_trigger_and_says_so(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    muted = silence(service, clock)
    receive(service, [change(ticket())])
    service.process_all()
    assert pd.events == []
    outcome, detail = last_decision(service)
    assert outcome == "silenced"
    assert detail["silenced"][0]["rule"] == "ops-highest"
    assert detail["silenced"][0]["why"].startswith(f"silenced by #{muted.id} until ")
    assert detail["events"] == []
    # another project is not muted
    receive(service, [change(ticket("20002", key="WEB-1", attributes={"project": "WEB"}, priority="Highest"))])
    service.process_all()
    assert actions(pd) == []  # (no rule for WEB either: the silence is not what stops it)
    receive(service, [change(ticket("30003", attributes={"project": "OPS"}, priority="Low"))])
    service.process_all()
    assert actions(pd) == []


def test_a_ticket_outside_the_matchers_still_pages(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    silence(service, clock, {"priority": {"equals": "P1"}})
    receive(service, [change(ticket(priority="Highest"))])
    service.process_all()
    assert actions(pd) == ["trigger"]


def test_a_pending_silence_does_not_mute_yet(service: Service, pd: MockPagerDuty, clock: FakeClock) -> None:
    silence(service, clock, starts=clock.now() + timedelta(hours=1))
    receive(service, [change(ticket())])
    service.process_all()
    assert actions(pd) == ["trigger"]


def test_acknowledge_and_resolve_of_an_open_incident_still_go_out(
    service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    receive(service, [change(ticket())])
    service.process_all()
    silence(service, clock)
    receive(service, [change(ticket(minutes=1, status="In Progress", category=StatusCategory.IN_PROGRESS))])
    receive(service, [change(ticket(minutes=2, status="Done", category=StatusCategory.DONE))])
    service.process_all()
    assert actions(pd) == ["trigger", "acknowledge", "resolve"]
    assert pd.events[0]["dedup_key"] == pd.events[2]["dedup_key"]


def test_when_the_silence_ends_a_ticket_that_still_matches_pages_once(
    service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    muted = silence(service, clock, hours=2)
    receive(service, [change(ticket())])
    receive(service, [change(ticket(minutes=5, title="Checkout still down"))])  # held again: still one ticket
    service.process_all()
    clock.advance(3600)
    service.process_all()
    assert pd.events == [], "the silence still runs"
    clock.advance(3601)
    service.process_all()
    service.process_all()
    assert actions(pd) == ["trigger"]
    assert pd.events[0]["payload"]["summary"] == "[OPS-10001] Checkout still down"
    outcome, detail = last_decision(service)
    assert outcome == "paged" and detail["why"] == f"silence #{muted.id} ended"
    # a later change of the ticket does not page it again
    receive(service, [change(ticket(minutes=90, title="Checkout down again"))])
    service.process_all()
    assert actions(pd) == ["trigger"]


def test_a_ticket_done_while_silenced_does_not_page_when_it_ends(
    service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    silence(service, clock, hours=1)
    receive(service, [change(ticket())])
    receive(service, [change(ticket(minutes=10, status="Done", category=StatusCategory.DONE))])
    service.process_all()
    clock.advance(7200)
    service.process_all()
    assert pd.events == []
    outcome, detail = last_decision(service)
    assert outcome == "no_action" and detail["why"].endswith("ended")


def test_a_silence_created_by_another_replica_is_honoured(
    service: Service, pd: MockPagerDuty, clock: FakeClock, db_url: str
) -> None:
    receive(service, [change(ticket("1"))])
    service.process_all()  # this replica has run a batch (and found no silence) already
    other = Store(db_url)  # another replica's store, its own connections
    try:
        with other.begin() as conn:
            add_silence(conn, OPS, clock.now(), clock.now() + timedelta(hours=1), "maintenance", "bob", clock.now())
    finally:
        other.dispose()
    receive(service, [change(ticket("2"))])
    service.process_all()
    assert [e["dedup_key"].split("/")[2] for e in pd.events] == ["1"]
    assert last_decision(service, "2")[0] == "silenced"


def test_an_overlapping_silence_keeps_holding_after_the_first_ends(
    service: Service, pd: MockPagerDuty, clock: FakeClock
) -> None:
    silence(service, clock, hours=1)
    longer = silence(service, clock, {"priority": {"in": ["Highest"]}}, hours=3)
    receive(service, [change(ticket())])
    service.process_all()
    clock.advance(2 * 3600)
    service.process_all()
    assert pd.events == []
    assert f"#{longer.id}" in last_decision(service)[1]["silenced"][0]["why"]
    clock.advance(2 * 3600)
    service.process_all()
    assert actions(pd) == ["trigger"]


def test_time_rules_are_silenced_too(db_url: str, tmp_path: Path, pd: MockPagerDuty, clock: FakeClock) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - name: stale\n    when: {project: OPS, created: {older_than: 1h}}\n"
        "    trigger: {routing_key: R0UT1NGKEY00000000000000000platform, severity: error, summary: stale}\n"
    )
    svc = make_service(db_url, rules, pd.url, clock)
    try:
        silence(svc, clock, hours=3)
        receive(svc, [change(ticket())])
        svc.process_all()
        clock.advance(2 * 3600)
        assert svc.engine.recheck() == 0
        assert svc.engine.recheck() == 0
        assert [row["outcome"] for row in svc.store.decisions_for("jira", "10001")][:2] == ["silenced", "no_action"]
        clock.advance(2 * 3600)
        svc.process_all()
        assert actions(pd) == ["trigger"]
    finally:
        svc.store.dispose()


# ---------------------------------------------------------------------------------- store and audit


def test_list_expire_and_their_errors(service: Service, clock: FakeClock) -> None:
    first = silence(service, clock)
    second = silence(service, clock, hours=5)
    now = clock.now()
    with service.store.begin() as conn:
        expired = expire_silence(conn, first.id, now, "carol")
        assert expired.expired_by == "carol" and expired.state(now) == "expired"
        assert [s.id for s in list_silences(conn, now)] == [second.id]
        assert [s.id for s in list_silences(conn, now, include_expired=True)] == [second.id, first.id]
        with pytest.raises(SilenceError, match="already ended"):
            expire_silence(conn, first.id, now, "carol")
        with pytest.raises(SilenceError, match="no silence #999"):
            expire_silence(conn, 999, now, "carol")
        with pytest.raises(SilenceError, match="before it starts"):
            add_silence(conn, OPS, now, now - timedelta(minutes=1), "x", "alice", now)
        with pytest.raises(SilenceError, match="needs a comment"):
            add_silence(conn, OPS, now, now + timedelta(hours=1), "  ", "alice", now)
        too_long = f"a silence lasts at most {MAX_SILENCE_DAYS} days, not 365 days, 0:00:01"
        with pytest.raises(SilenceError, match=too_long):
            add_silence(conn, OPS, now, now + MAX_SILENCE + timedelta(seconds=1), "x", "alice", now)


def test_audit_entries_page_newest_first(service: Service, clock: FakeClock) -> None:
    with service.store.begin() as conn:
        for n in range(5):
            audit.record(conn, "alice", "silence.add", f"silence:{n}", {"n": n}, clock.now())
    with service.store.engine.connect() as conn:
        page = audit.list_entries(conn, 3)
        assert [e.detail["n"] for e in page] == [4, 3, 2]
        rest = audit.list_entries(conn, 3, before_id=page[-1].id)
        assert [e.target for e in rest] == ["silence:1", "silence:0"]


def test_a_secret_pasted_into_a_comment_is_stored_redacted(service: Service, clock: FakeClock) -> None:
    secret = "sil3nce-T0ken-9f8e7d6c5b4a"
    redact.SECRETS.add([secret])
    with service.store.begin() as conn:
        added = add_silence(
            conn, OPS, clock.now(), clock.now() + timedelta(hours=1), f"token {secret}", "a", clock.now()
        )
        audit.record(conn, "alice", "silence.add", f"silence:{added.id}", added.to_json(clock.now()), clock.now())
    with service.store.engine.connect() as conn:
        stored = list_silences(conn, clock.now())[0]
        entry = audit.list_entries(conn, 1)[0]
    assert secret not in stored.comment and "[redacted]" in stored.comment
    assert secret not in json.dumps(entry.detail)


# -------------------------------------------------------------------------------------------- the CLI


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_add_list_expire_with_audit_and_the_held_ticket_pages_once(
    service: Service,
    pd: MockPagerDuty,
    clock: FakeClock,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(silence_cli, "CLOCK", clock)
    db = ("--database-url", db_url)
    code, out, err = run(
        capsys, "silence", "add", "--match", "project=OPS", "--match", "priority in [P1, Highest]",
        "--duration", "2h", "--comment", "ACME migration", "--author", "alice", "--json", *db,
    )  # fmt: skip
    assert code == EXIT_OK, err
    added = json.loads(out)
    assert added["state"] == "active" and added["matchers"]["priority"] == {"in": ["P1", "Highest"]}
    receive(service, [change(ticket())])
    service.process_all()
    assert pd.events == []
    code, out, _ = run(capsys, "silence", "list", *db)
    assert code == EXIT_OK and f"#{added['id']} active" in out and "by alice: ACME migration" in out
    clock.advance(600)
    code, out, _ = run(capsys, "silence", "expire", str(added["id"]), "--author", "bob", *db)
    assert code == EXIT_OK and "expired" in out
    service.process_all()
    assert actions(pd) == ["trigger"]
    code, _, err = run(capsys, "silence", "expire", str(added["id"]), *db)
    assert code == EXIT_PROBLEM and "already ended" in err
    code, _, err = run(capsys, "silence", "expire", "4242", *db)
    assert code == EXIT_PROBLEM and "no silence #4242" in err
    code, out, _ = run(capsys, "silence", "list", *db)
    assert "no active or pending silences" in out
    with service.store.engine.connect() as conn:
        entries = audit.list_entries(conn, 10)
    assert [(e.action, e.actor, e.target) for e in entries] == [
        ("silence.expire", "bob", f"silence:{added['id']}"),
        ("silence.add", "alice", f"silence:{added['id']}"),
    ]
    assert entries[1].detail["comment"] == "ACME migration"
    assert entries[0].at == clock.now()


def test_cli_refuses_an_invalid_matcher_saying_why(
    service: Service, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--database-url", db_url)
    base = ("silence", "add", "--duration", "1h", "--comment", "c", "--author", "a", *db)
    code, _, err = run(capsys, *base, "--match", "projct=OPS", "--match", "priority: {equal: P1}")
    assert code == EXIT_USAGE
    assert "--match 'projct=OPS': projct: unknown field 'projct' (did you mean 'project'?)" in err
    assert "--match 'priority: {equal: P1}': priority: unknown operator 'equal' (did you mean 'equals'?)" in err
    code, _, err = run(capsys, *base)
    assert code == EXIT_USAGE and "give --match" in err
    with pytest.raises(SystemExit) as usage:  # argparse's own usage error
        cli.main(["silence", "add", "--match", "project=OPS", "--duration", "1x", "--comment", "c", *db])
    assert usage.value.code == EXIT_USAGE and "bad duration '1x'" in capsys.readouterr().err
    with service.store.engine.connect() as conn:
        assert list_silences(conn, service.clock.now(), include_expired=True) == []
        assert audit.list_entries(conn, 10) == []


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        (("--duration", "99999999999d"), "duration '99999999999d' is too long"),
        (("--duration", f"{MAX_SILENCE_DAYS + 1}d"), f"a silence lasts at most {MAX_SILENCE_DAYS} days"),
        (("--ends", "9999-12-31T23:59:00-01:00"), "is past year 9999 in UTC"),
    ],
)
def test_cli_refuses_a_window_it_cannot_hold_saying_why(
    db_url: str, capsys: pytest.CaptureFixture[str], window: tuple[str, str], problem: str
) -> None:
    """Not an OverflowError's traceback: argparse's usage error, with the limit named."""
    with pytest.raises(SystemExit) as usage:
        cli.main(["silence", "add", "--match", "project=OPS", *window, "--comment", "c", "--database-url", db_url])
    assert usage.value.code == EXIT_USAGE and problem in capsys.readouterr().err


def test_cli_refuses_an_end_past_the_limit(service: Service, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ("--database-url", db_url)
    code, _, err = run(
        capsys, "silence", "add", "--match", "project=OPS", "--ends", "9000-01-01T00:00:00Z", "--comment", "c", *db
    )
    assert code == EXIT_USAGE and f"a silence lasts at most {MAX_SILENCE_DAYS} days" in err
    with service.store.engine.connect() as conn:
        assert list_silences(conn, service.clock.now(), include_expired=True) == []


# --------------------------------------------------------------------------------------- the matchers


@pytest.mark.parametrize(
    ("texts", "problem"),
    [
        (["updated: {older_than: 1h}"], "a silence matches what a ticket is, not when"),
        (["status: {changed_to: Done}"], "not what one update changed"),
        (["during: business-hours"], "not when"),
        (["connection=eu"], "unknown connection 'eu' (use jira | zendesk | servicenow)"),
        (["source=jria"], "unknown source 'jria' (did you mean 'jira'?)"),
        (["source=zendesk", "priority=Urgent"], "Zendesk priorities are lowercase: did you mean 'urgent'?"),
        (["priority in P1"], "'in' takes a list in brackets, e.g. priority in [P1]"),
        (["priority in [P1"], "'in' takes a list in brackets, e.g. priority in [P1]"),  # not [[P1]
        (["project==OPS"], "'==' is not an operator: did you mean 'project=OPS'?"),  # matched '=OPS' silently
        (["project!==OPS"], "'!==' is not an operator: did you mean 'project!=OPS'?"),
        (  # was one matcher, project equal to 'OPS,priority=P1', muting nothing
            ["project=OPS,priority=P1"],
            "one condition per --match: write --match 'project=OPS' --match 'priority=P1'",
        ),
        (["title=~("], "title → regex: bad regex '('"),
        (["priority"], "not a matcher"),
        ([], "needs at least one --match"),
    ],
)
def test_invalid_matchers_are_refused_with_the_rules_messages(texts: list[str], problem: str) -> None:
    with pytest.raises(MatcherErrors) as refused:
        parse_match(texts)
    assert problem in str(refused.value)


def test_a_quoted_value_is_taken_as_written() -> None:
    """A value that really starts with '=' or holds 'x,y=z' is written in quotes, and matched as written."""
    assert parse_match(["title='=sign'"]) == {"title": {"equals": "=sign"}}
    assert parse_match(['title="a,b=c"']) == {"title": {"equals": "a,b=c"}}
    assert parse_match(["title=a, b"]) == {"title": {"equals": "a, b"}}  # a comma alone is part of the value


def test_matchers_match_like_a_rules_when() -> None:
    t = ticket(priority="P1", labels=("db", "eu"))
    cases = {
        ("project=OPS",): True,
        ("project!=OPS",): False,
        ("priority in [P1, P2]", "source=jira"): True,
        ("priority not in [P1]",): False,
        ("title=~(?i)CHECKOUT",): True,
        ("title!~checkout",): True,
        ("labels: {contains: db}",): True,
        ("any: [{project: WEB}, {priority: P1}]",): True,
        ("priority!=P3", "priority!=P1"): False,
    }
    for texts, expected in cases.items():
        assert compile_matchers(parse_match(texts)).matches(t) is expected, texts


def test_a_match_file_is_checked_with_file_line_and_column(tmp_path: Path) -> None:
    good = tmp_path / "acme.yaml"
    good.write_text("organization: ACME\npriority: {in: [P1, P2]}\n")
    assert load_match_file(good) == {"organization": "ACME", "priority": {"in": ["P1", "P2"]}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("organization: ACME\npriority: {equal: P1}\n")
    with pytest.raises(MatcherErrors) as refused:
        load_match_file(bad)
    assert f"{bad}:2:12: priority: unknown operator 'equal'" in str(refused.value)


def test_cli_bounds_a_silence_to_a_year_and_a_huge_duration_is_an_error_not_a_traceback(
    service: Service, db_url: str, clock: FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(silence_cli, "CLOCK", clock)
    db = ("--database-url", db_url)
    base = ("silence", "add", "--match", "project=OPS", "--comment", "c", "--author", "a", *db)
    for duration in ("3000000d", "1000000d", "366d"):  # 3000000d was an OverflowError, 1000000d a silence until 4764
        with pytest.raises(SystemExit) as usage:
            cli.main([*base, "--duration", duration])
        assert usage.value.code == EXIT_USAGE
        last = capsys.readouterr().err.splitlines()[-1]
        assert f"argument --duration: a silence lasts at most {MAX_SILENCE_DAYS} days, not {duration[:-1]} days" in last
    ends = (clock.now() + timedelta(days=366)).isoformat()
    code, _, err = run(capsys, *base, "--ends", ends)
    assert code == EXIT_USAGE
    assert err.startswith(f"ticketpager: a silence lasts at most {MAX_SILENCE_DAYS} days, not 366 days"), err
    with service.store.engine.connect() as conn:
        assert list_silences(conn, clock.now(), include_expired=True) == []
    code, out, err = run(capsys, *base, "--duration", "365d", "--json")
    assert code == EXIT_OK, err
    assert json.loads(out)["ends_at"] == (clock.now() + timedelta(days=365)).isoformat()
