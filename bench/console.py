"""The admin console's queries on a big PostgreSQL database: 1 M tickets and 10 M decision-log rows by default.

Fills a fresh schema with ``generate_series`` (INSERT … SELECT, no round trip per row), migrates it with the
real migrations, then times every query each console page runs (``sync/repos/console.py`` and the ticket
timeline of ``ticketpager/console/web.py``), median of ``--runs``, and prints the plan's access path. With
``--proposed`` it then creates the indexes docs/console.md proposes and times everything again, so both
columns come from the same data in the same run.

Usage: python bench/console.py --database-url postgresql://postgres@127.0.0.1:5432/test
       [--tickets 1000000] [--decisions 10000000] [--runs 5] [--proposed] [--keep]
"""

from __future__ import annotations

import argparse
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
                      (ARRAY['jira','zendesk','servicenow'])[g % 3 + 1],
                      g::text, 'OPS-' || g,
                      (ARRAY['new','in_progress','done'])[(g::bigint * 2654435761 % 97) % 3 + 1],
                      :now - (g * interval '2.5 seconds'), md5(g::text),
                      json_build_object('source', (ARRAY['jira','zendesk','servicenow'])[g % 3 + 1],
                          'id', g::text, 'key', 'OPS-' || g,
                          'title', 'Ticket ' || g || ' ' || (ARRAY['checkout down','typo','VPN slow',
                                   'printer jam','payments failing'])[g % 5 + 1],
                          'status', 'Open', 'status_category', 'new',
                          'updated',
                          to_char(:now - (g * interval '2.5 seconds'), 'YYYY-MM-DD"T"HH24\\:MI\\:SS+00\\:00'),
                          'priority', 'High', 'attributes', json_build_object('project', 'OPS'))::text,
                      g, 0, false, :now
               FROM generate_series(1, :n) AS g""",
        ),
        (
            "changes",
            """INSERT INTO changes (id, source, connection, delivery_id, ticket_id, ticket_updated, origin,
                                   received_at, payload, status, processed_at)
               SELECT t.ticket_id::bigint, t.source, t.source, 'd-' || t.ticket_id, t.ticket_id, t.updated,
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
                      (ARRAY['jira','zendesk','servicenow'])[t % 3 + 1],
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
               SELECT DISTINCT ON (source, ticket_id) source, source, ticket_id, 'ops-highest', 1,
                      'ticketpager/' || source || '/' || ticket_id || '/ops-highest/1',
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
               SELECT 'event', 'pagerduty', source, source, ticket_id, 'OPS-' || ticket_id, rule, 'trigger',
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
               FROM unnest(ARRAY['jira','zendesk','servicenow']) s""",
        ),
    ]
    for name, sql in steps:
        started = time.perf_counter()
        conn.execute(text(sql), p)
        print(f"  filled {name} in {time.perf_counter() - started:.1f} s", flush=True)
    conn.execute(text("SELECT setval(pg_get_serial_sequence('changes', 'id'), (SELECT max(id) FROM changes))"))


def cases(conn: Connection) -> list[tuple[str, Callable[[], Any]]]:
    first = q.search_tickets(conn)
    after = (first[-1].updated, first[-1].source, first[-1].ticket_id) if first else None
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
        ("tickets: title contains 'VPN'", lambda: q.search_tickets(conn, title="VPN")),
        ("tickets: title, no match", lambda: q.search_tickets(conn, title="no such words")),
        # what the console runs for a title search: one window of SCAN_WINDOW tickets per page, newest first
        ("tickets: title contains 'VPN', one window", lambda: windowed(conn, "VPN")),
        ("tickets: title, no match, one window", lambda: windowed(conn, "no such words")),
        ("timeline: noisy ticket (1 % of rows)", lambda: _timeline(conn, "zendesk", "1", None)),
        ("timeline: ordinary ticket", lambda: _timeline(conn, "jira", "4242", None)),
        ("dead letters: first page", lambda: q.dead_letters(conn)),
        ("dead letters: next page", lambda: q.dead_letters(conn, dead[-1]["id"] if dead else None)),
        ("backtest: one page of stored changes", lambda: q.stored_versions(conn, "jira", since, None)),
        ("backtest: tickets paged in 1 day", lambda: q.paged_tickets(conn, "jira", since)),
    ]


def windowed(conn: Connection, title: str) -> list[q.TicketRow]:
    """A console title search's first page: the window's end from the index, then the search inside it."""
    window = q.title_search_window(conn)
    return q.search_tickets(conn, title=title, until=window.until)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--proposed", action="store_true", help="then create the proposed indexes and time again")
    parser.add_argument("--keep", action="store_true", help="keep the schema (printed) for EXPLAIN by hand")
    args = parser.parse_args()
    base = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"bench_console_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    store = Store(url)
    try:
        store.upgrade()
        print(f"schema {schema}: {args.tickets:,} tickets, {args.decisions:,} decisions", flush=True)
        with store.engine.begin() as conn:
            fill(conn, args.tickets, args.decisions)
        if args.proposed:
            with store.engine.begin() as conn:
                for sql in DROP_PROPOSED:
                    conn.execute(text(sql))
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        with store.engine.connect() as conn:
            before = measure(conn, args.runs)
        after: dict[str, float] = {}
        if args.proposed:
            with store.engine.begin() as conn:
                for sql in PROPOSED:
                    conn.execute(text(sql))
                conn.execute(text("ANALYZE"))
            with store.engine.connect() as conn:
                after = measure(conn, args.runs)
        head = f"\n| query (median of {args.runs}, ms) | schema as migrated |"
        print(head + (" + proposed indexes |" if after else ""))
        print("|---|---:|" + ("---:|" if after else ""))
        for name, ms in before.items():
            extra = f" {after[name]:.1f} |" if after else ""
            print(f"| {name} | {ms:.1f} |{extra}")
    finally:
        store.dispose()
        if not args.keep:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
