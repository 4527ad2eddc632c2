"""The admin console's queries on a big PostgreSQL database: 1 M tickets and 10 M decision-log rows by default.

Fills a fresh schema with ``generate_series`` (INSERT … SELECT, no round trip per row), migrates it with the
real migrations, then times every query each console page runs (``sync/repos/console.py`` and the ticket
timeline of ``ticketpager/console/web.py``), median of ``--runs``, and prints the plan's access path. With
``--proposed`` it then creates the indexes docs/console.md proposes and times everything again, so both
columns come from the same data in the same run.

Connections: one zendesk ticket in 30 is of the named connection ``acme-zendesk`` and one in 3000 of
``tiny-zendesk`` (the rest of each system's tickets are of its default connection, named after it), so the
list's connection filter and a named connection's timeline are timed on a large and a small connection.

A SQLite URL (``sqlite:///…``) fills the same shape row by row from Python instead: only for small fills (the
smoke test, tests/test_bench_console.py, runs it so it cannot rot).

Usage: python bench/console.py --database-url postgresql://postgres@127.0.0.1:5432/test
       [--tickets 1000000] [--decisions 10000000] [--runs 5] [--proposed] [--keep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Connection, create_engine, text  # noqa: E402

from connectors import registry  # noqa: E402,F401  (the application's imports: declares the systems)
from sync.repos import console as q  # noqa: E402
from sync.store import Store  # noqa: E402
from ticketpager.console.web import _timeline  # noqa: E402

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SOURCES = ("jira", "zendesk", "servicenow")
#: the named connections (both of zendesk: ``g % 3 = 1``): one ticket in 30, one in 3000
CONNECTIONS = ("acme-zendesk", "tiny-zendesk")


def _connection_sql(g: str, source: str) -> str:
    """The connection of ticket number ``g`` (SQL), given its system's expression ``source``."""
    return f"CASE WHEN {g} % 30 = 4 THEN 'acme-zendesk' WHEN {g} % 3000 = 7 THEN 'tiny-zendesk' ELSE {source} END"


def connection_of(g: int) -> str:
    """The connection of ticket number ``g`` (the same as :func:`_connection_sql`)."""
    return "acme-zendesk" if g % 30 == 4 else "tiny-zendesk" if g % 3000 == 7 else SOURCES[g % 3]

#: the console's indexes, created by migration 0011; with --proposed the bench drops them first, measures
#: without them ("before"), then creates them again ("after"), so both figures come from one run
DROP_PROPOSED = tuple(f"DROP INDEX IF EXISTS {sql.split()[2]}" for sql in (
    "CREATE INDEX ix_tickets_updated", "CREATE INDEX ix_tickets_key", "CREATE INDEX ix_decisions_paged_at",
    "CREATE INDEX ix_outbox_sent_at", "CREATE INDEX ix_tickets_source_state",
))  # fmt: skip
PROPOSED = (
    "CREATE INDEX ix_tickets_updated ON tickets (updated, source, ticket_id)",
    "CREATE INDEX ix_tickets_key ON tickets (key text_pattern_ops)",
    "CREATE INDEX ix_decisions_paged_at ON decisions (at) WHERE outcome = 'paged'",
    "CREATE INDEX ix_outbox_sent_at ON outbox (sent_at) WHERE kind = 'event'",
    "CREATE INDEX ix_tickets_source_state ON tickets (source, status_category, updated, ticket_id)",
)


def fill(conn: Connection, tickets: int, decisions: int) -> None:
    """Tickets spread over 30 days; decisions spread over the tickets (ticket 1 gets many: a noisy one) and
    30 days, 2 % of them pages; a link and an outbox event per paged ticket (one in 1000 dead, one in 1000
    pending); the last change of every ticket with its payload."""
    p = {"n": tickets, "d": decisions, "now": NOW}
    steps = [
        (
            "tickets",
            """INSERT INTO tickets (source, connection, ticket_id, key, status_category, updated, version_hash,
                                   snapshot, last_change_id, open_incidents, recheck, processed_at)
               SELECT (ARRAY['jira','zendesk','servicenow'])[g % 3 + 1],
                      CONNECTION_OF_G,
                      g::text, 'OPS-' || g,
                      (ARRAY['new','in_progress','done'])[(g::bigint * 2654435761 % 97) % 3 + 1],
                      :now - (g * interval '2.5 seconds'), md5(g::text),
                      (json_build_object('source', (ARRAY['jira','zendesk','servicenow'])[g % 3 + 1],
                          'id', g::text, 'key', 'OPS-' || g,
                          'title', 'Ticket ' || g || ' ' || (ARRAY['checkout down','typo','VPN slow',
                                   'printer jam','payments failing'])[g % 5 + 1],
                          'status', 'Open', 'status_category', 'new',
                          'updated',
                          to_char(:now - (g * interval '2.5 seconds'), 'YYYY-MM-DD"T"HH24\\:MI\\:SS+00\\:00'),
                          'priority', 'High', 'attributes', json_build_object('project', 'OPS'))::jsonb
                       || CASE WHEN g % 30 = 4 THEN '{"connection": "acme-zendesk"}'::jsonb
                               WHEN g % 3000 = 7 THEN '{"connection": "tiny-zendesk"}'::jsonb
                               ELSE '{}'::jsonb END)::text,
                      g, 0, false, :now
               FROM generate_series(1, :n) AS g""",
        ),
        (
            "changes",
            """INSERT INTO changes (id, source, connection, delivery_id, ticket_id, ticket_updated, origin,
                                   received_at, payload, status, processed_at)
               SELECT t.ticket_id::bigint, t.source, t.connection, 'd-' || t.ticket_id, t.ticket_id, t.updated,
                      'webhook', t.updated,
                      json_build_object('ticket', t.snapshot::json, 'origin', 'webhook',
                          'delivery_id', 'd-' || t.ticket_id,
                          'received_at', to_char(t.updated, 'YYYY-MM-DD"T"HH24\\:MI\\:SS+00\\:00'),
                          'changes', NULL)::text,
                      'processed', t.updated
               FROM tickets t""",
        ),
        (
            "decisions",
            """INSERT INTO decisions (change_id, source, connection, ticket_id, ticket_key, at, outcome,
                                     rules_digest, detail)
               SELECT t, (ARRAY['jira','zendesk','servicenow'])[t % 3 + 1],
                      CONNECTION_OF_T,
                      t::text, 'OPS-' || t,
                      :now - (g * (interval '30 days' / :d)),
                      CASE WHEN g % 50 = 0 THEN 'paged' ELSE 'no_action' END, 'bench',
                      json_build_object('origin', 'webhook', 'changes', json_build_array('status'),
                          'verdicts', json_build_array(json_build_object('rule', 'ops-highest',
                              'matched', g % 50 = 0, 'applies', true,
                              'why', json_build_array('priority is ''Low'', not in [''Highest'']'),
                              'acknowledge', false, 'resolve', false)),
                          'events', json_build_array())::text
               FROM (SELECT g, CASE WHEN g % 100 = 0 THEN 1 ELSE (g::bigint * 7919) % :n + 1 END AS t
                     FROM generate_series(1, :d) AS g) s""",
        ),
        (
            "links",
            """INSERT INTO links (source, connection, ticket_id, rule, generation, dedup_key, routing_key, state,
                                 created_at, updated_at)
               SELECT DISTINCT ON (source, connection, ticket_id) source, connection, ticket_id, 'ops-highest', 1,
                      'ticketpager/' || source || CASE WHEN connection <> source THEN '/' || connection ELSE '' END
                      || '/' || ticket_id || '/ops-highest/1',
                      'R0UT1NGKEY0000000000000000000000', CASE WHEN id % 5 = 0 THEN 'triggered' ELSE 'resolved' END,
                      at, at
               FROM decisions WHERE outcome = 'paged'""",
        ),
        (
            "outbox",
            """INSERT INTO outbox (kind, destination, source, connection, ticket_id, ticket_key, rule, action,
                                  dedup_key, generation, routing_key, body, status, attempts, next_attempt_at,
                                  change_id,
                                  created_at, sent_at, last_error)
               SELECT 'event', 'pagerduty', source, connection, ticket_id, 'OPS-' || ticket_id, rule, 'trigger',
                      dedup_key, 1,
                      routing_key, '{"event_action":"trigger","routing_key":"R0UT1NGKEY0000000000000000000000"}',
                      CASE WHEN id % 1000 = 0 THEN 'dead' WHEN id % 1000 = 1 THEN 'pending' ELSE 'sent' END,
                      1, created_at, ticket_id::bigint, created_at,
                      CASE WHEN id % 1000 > 1 THEN created_at + interval '0.8 seconds' END,
                      CASE WHEN id % 1000 = 0 THEN 'PagerDuty answered HTTP 400: invalid routing key' END
               FROM links""",
        ),
        (
            "cursors",
            """INSERT INTO cursors (source, cursor, updated_at, last_success_at)
               SELECT s, '{}', :now, :now - interval '40 seconds'
               FROM unnest(ARRAY['jira','zendesk','servicenow','acme-zendesk','tiny-zendesk']) s""",
        ),
    ]
    for name, sql in steps:
        sql = sql.replace("CONNECTION_OF_G", _connection_sql("g", "(ARRAY['jira','zendesk','servicenow'])[g % 3 + 1]"))
        sql = sql.replace("CONNECTION_OF_T", _connection_sql("t", "(ARRAY['jira','zendesk','servicenow'])[t % 3 + 1]"))
        started = time.perf_counter()
        conn.execute(text(sql), p)
        print(f"  filled {name} in {time.perf_counter() - started:.1f} s", flush=True)  # noqa: T201
    conn.execute(text("SELECT setval(pg_get_serial_sequence('changes', 'id'), (SELECT max(id) FROM changes))"))


def fill_rows(conn: Connection, tickets: int, decisions: int) -> None:
    """:func:`fill`'s data inserted row by row from Python, for any dialect (the smoke test's SQLite): same
    tickets, connections, decision spread, pages, links and outbox states, for small figures only."""
    from sync.schema import changes as changes_t
    from sync.schema import cursors as cursors_t
    from sync.schema import decisions as decisions_t
    from sync.schema import links as links_t
    from sync.schema import outbox as outbox_t
    from sync.schema import tickets as tickets_t

    titles = ("checkout down", "typo", "VPN slow", "printer jam", "payments failing")
    states = ("new", "in_progress", "done")
    ticket_rows, change_rows = [], []
    for g in range(1, tickets + 1):
        source, connection, updated = SOURCES[g % 3], connection_of(g), NOW - timedelta(seconds=2.5 * g)
        snapshot = {
            "source": source, "id": str(g), "key": f"OPS-{g}", "title": f"Ticket {g} {titles[g % 5]}",
            "status": "Open", "status_category": "new", "updated": updated.isoformat(), "priority": "High",
            "attributes": {"project": "OPS"},
        } | ({"connection": connection} if connection != source else {})  # fmt: skip
        ticket_rows.append({
            "source": source, "connection": connection, "ticket_id": str(g), "key": f"OPS-{g}",
            "status_category": states[(g * 2654435761 % 97) % 3], "updated": updated,
            "version_hash": f"{g:032x}", "snapshot": json.dumps(snapshot), "last_change_id": g,
            "open_incidents": 0, "recheck": False, "processed_at": NOW,
        })  # fmt: skip
        change_rows.append({
            "id": g, "source": source, "connection": connection, "delivery_id": f"d-{g}", "ticket_id": str(g),
            "ticket_updated": updated, "origin": "webhook", "received_at": updated,
            "payload": json.dumps({"ticket": snapshot, "origin": "webhook", "delivery_id": f"d-{g}",
                                   "received_at": updated.isoformat(), "changes": None}),
            "status": "processed", "processed_at": updated,
        })  # fmt: skip
    conn.execute(tickets_t.insert(), ticket_rows)
    conn.execute(changes_t.insert(), change_rows)
    decision_rows, paged = [], {}
    for g in range(1, decisions + 1):
        t = 1 if g % 100 == 0 else (g * 7919) % tickets + 1
        at, source, connection = NOW - g * (timedelta(days=30) / decisions), SOURCES[t % 3], connection_of(t)
        decision_rows.append({
            "change_id": t, "source": source, "connection": connection, "ticket_id": str(t),
            "ticket_key": f"OPS-{t}", "at": at, "outcome": "paged" if g % 50 == 0 else "no_action",
            "rules_digest": "bench",
            "detail": json.dumps({"origin": "webhook", "changes": ["status"], "events": [], "verdicts": [
                {"rule": "ops-highest", "matched": g % 50 == 0, "applies": True,
                 "why": ["priority is 'Low', not in ['Highest']"], "acknowledge": False, "resolve": False}]}),
        })  # fmt: skip
        if g % 50 == 0:
            paged.setdefault((source, connection, str(t)), (g, at))
    conn.execute(decisions_t.insert(), decision_rows)
    for n, ((source, connection, ticket_id), (_g, at)) in enumerate(sorted(paged.items()), start=1):
        prefix = source if connection == source else f"{source}/{connection}"
        dedup_key = f"ticketpager/{prefix}/{ticket_id}/ops-highest/1"
        conn.execute(links_t.insert(), {
            "source": source, "connection": connection, "ticket_id": ticket_id, "rule": "ops-highest",
            "generation": 1, "dedup_key": dedup_key, "routing_key": "R0UT1NGKEY0000000000000000000000",
            "state": "triggered" if n % 5 == 0 else "resolved", "created_at": at, "updated_at": at,
        })  # fmt: skip
        conn.execute(outbox_t.insert(), {
            "kind": "event", "destination": "pagerduty", "source": source, "connection": connection,
            "ticket_id": ticket_id, "ticket_key": f"OPS-{ticket_id}", "rule": "ops-highest", "action": "trigger",
            "dedup_key": dedup_key, "generation": 1, "routing_key": "R0UT1NGKEY0000000000000000000000",
            "body": '{"event_action":"trigger","routing_key":"R0UT1NGKEY0000000000000000000000"}',
            "status": "dead" if n % 1000 == 0 else "pending" if n % 1000 == 1 else "sent", "attempts": 1,
            "next_attempt_at": at, "change_id": int(ticket_id), "created_at": at,
            "sent_at": at + timedelta(seconds=0.8) if n % 1000 > 1 else None,
            "last_error": "PagerDuty answered HTTP 400: invalid routing key" if n % 1000 == 0 else None,
        })  # fmt: skip
    conn.execute(cursors_t.insert(), [
        {"source": s, "cursor": "{}", "updated_at": NOW, "last_success_at": NOW - timedelta(seconds=40)}
        for s in (*SOURCES, *CONNECTIONS)
    ])  # fmt: skip


def cases(conn: Connection) -> list[tuple[str, Callable[[], Any]]]:
    first = q.search_tickets(conn)
    after = (first[-1].updated, first[-1].source, first[-1].ticket_id, first[-1].connection) if first else None
    dead = q.dead_letters(conn)
    since = NOW - timedelta(days=1)
    return [
        ("overview: source health", lambda: q.source_health(conn, NOW)),
        ("overview: backlog counts", lambda: q.backlog(conn, NOW)),
        ("overview: 24 h chart", lambda: q.hourly(conn, NOW)),
        ("tickets: newest first", lambda: q.search_tickets(conn)),
        ("tickets: next page (keyset)", lambda: q.search_tickets(conn, after=after)),
        ("tickets: key prefix OPS-4242", lambda: q.search_tickets(conn, key="OPS-4242")),
        ("tickets: source + state", lambda: q.search_tickets(conn, source="zendesk", state="done")),
        # the console narrows a connection filter to its system (web.py tickets()): source + connection
        ("tickets: connection filter (1 ticket in 30)",
         lambda: q.search_tickets(conn, source="zendesk", connection="acme-zendesk")),
        ("tickets: connection filter (1 ticket in 3000)",
         lambda: q.search_tickets(conn, source="zendesk", connection="tiny-zendesk")),
        ("tickets: connection + title 'VPN', one window",
         lambda: windowed(conn, "VPN", source="zendesk", connection="tiny-zendesk")),
        ("tickets: title contains 'VPN'", lambda: q.search_tickets(conn, title="VPN")),
        ("tickets: title, no match", lambda: q.search_tickets(conn, title="no such words")),
        # what the console runs for a title search: one window of SCAN_WINDOW tickets per page, newest first
        ("tickets: title contains 'VPN', one window", lambda: windowed(conn, "VPN")),
        ("tickets: title, no match, one window", lambda: windowed(conn, "no such words")),
        ("timeline: noisy ticket (1 % of rows)", lambda: _timeline(conn, "zendesk", "zendesk", "1", None, NOW)),
        ("timeline: ordinary ticket", lambda: _timeline(conn, "jira", "jira", "4242", None, NOW)),
        ("timeline: named connection's ticket", lambda: _timeline(conn, "zendesk", "acme-zendesk", "4", None, NOW)),
        ("dead letters: first page", lambda: q.dead_letters(conn)),
        ("dead letters: next page", lambda: q.dead_letters(conn, dead[-1]["id"] if dead else None)),
        ("backtest: one page of stored changes", lambda: q.stored_versions(conn, "jira", since, None)),
        ("backtest: tickets paged in 1 day", lambda: q.paged_tickets(conn, "jira", since)),
        ("backtest: a named connection's changes",
         lambda: q.stored_versions(conn, "zendesk", since, None, connection="acme-zendesk")),
    ]  # fmt: skip


def windowed(conn: Connection, title: str, *, source: str = "", connection: str = "") -> list[q.TicketRow]:
    """A console title search's first page: the window's end from the index, then the search inside it."""
    window = q.title_search_window(conn, source=source, connection=connection)
    return q.search_tickets(conn, title=title, source=source, connection=connection, until=window.until)


def measure(conn: Connection, runs: int) -> dict[str, float]:
    out = {}
    for name, run in cases(conn):
        run()  # warm
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1000)
        out[name] = statistics.median(times)
    return out


def run(
    database_url: str,
    *,
    tickets: int,
    decisions: int,
    runs: int = 5,
    proposed: bool = False,
    keep: bool = False,
    print_: Callable[[str], None] = print,
) -> tuple[dict[str, float], dict[str, float]]:
    """Fill, migrate and time; returns the medians (ms) as migrated and, with ``proposed``, with 0011's indexes.

    PostgreSQL: a fresh schema (dropped afterwards unless ``keep``), filled with ``generate_series``. SQLite:
    the database the URL names, filled from Python (:func:`fill_rows`)."""
    sqlite = database_url.startswith("sqlite")
    base = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    schema = "" if sqlite else f"bench_console_{uuid.uuid4().hex[:8]}"
    admin = None if sqlite else create_engine(base)
    if admin is not None:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = base if sqlite else f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    store = Store(url)
    try:
        store.upgrade()
        print_(f"schema {schema or url}: {tickets:,} tickets, {decisions:,} decisions")
        with store.engine.begin() as conn:
            if sqlite:
                fill_rows(conn, tickets, decisions)
            else:
                fill(conn, tickets, decisions)
        if proposed:
            with store.engine.begin() as conn:
                for sql in DROP_PROPOSED:
                    conn.execute(text(sql))
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE" if sqlite else "VACUUM ANALYZE"))
        with store.engine.connect() as conn:
            before = measure(conn, runs)
        after: dict[str, float] = {}
        if proposed:
            with store.engine.begin() as conn:
                for sql in PROPOSED:
                    conn.execute(text(sql))
                conn.execute(text("ANALYZE"))
            with store.engine.connect() as conn:
                after = measure(conn, runs)
        head = f"\n| query (median of {runs}, ms) | schema as migrated |"
        print_(head + (" + proposed indexes |" if after else ""))
        print_("|---|---:|" + ("---:|" if after else ""))
        for name, ms in before.items():
            extra = f" {after[name]:.1f} |" if after else ""
            print_(f"| {name} | {ms:.1f} |{extra}")
        return before, after
    finally:
        store.dispose()
        if admin is not None:
            if not keep:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--proposed", action="store_true", help="then create the proposed indexes and time again")
    parser.add_argument("--keep", action="store_true", help="keep the schema (printed) for EXPLAIN by hand")
    args = parser.parse_args()
    run(
        args.database_url,
        tickets=args.tickets,
        decisions=args.decisions,
        runs=args.runs,
        proposed=args.proposed,
        keep=args.keep,
        print_=lambda line: print(line, flush=True),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
