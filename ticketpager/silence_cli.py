"""``ticketpager silence add | list | expire``: mute paging for matching tickets over a time window.

Each change is written to the audit log in the same transaction. Matchers are validated by the rules
language (:mod:`rules.silence_match`) exactly like a rule's ``when``; the SQL is in :mod:`sync.repos.silences`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kernel.clock import Clock, SystemClock
from rules.operators import OperatorArgError, parse_duration
from rules.silence_match import MATCH_SYNTAX, MatcherErrors, load_match_file, parse_match
from ticketpager.exitcodes import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE

#: the time the commands read (tests replace it with a fake clock)
CLOCK: Clock = SystemClock()

Command = Callable[..., argparse.ArgumentParser]
OpenStore = Callable[[argparse.Namespace], Any]

DESCRIPTION = (
    "Mute paging for the tickets a matcher matches, for a time window, like Alertmanager's silences: while\n"
    "a silence is active a rule that would open a new incident for a matching ticket sends nothing (the\n"
    "decision log says 'silenced by #ID'); acknowledge and resolve of open incidents still go out. When it\n"
    "ends (its end passes, or 'silence expire'), tickets that still match page once. Stored in the database,\n"
    "shared by every replica; every add and expire is in the audit log."
)
EXAMPLES = [
    "ticketpager silence add --match 'project=OPS' --match 'priority in [P1]' --duration 2h "
    "--comment 'ACME migration' --author alice",
    "ticketpager silence add --match 'connection=acme-zendesk' --duration 3h --comment 'ACME migration'",
    "ticketpager silence list",
    "ticketpager silence expire 3",
]


def _when(text: str) -> datetime:
    """argparse type: an ISO 8601 instant with a time zone."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-04T22:00:00Z)") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (e.g. 2026-12-04T22:00:00Z or +01:00)")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-01:00 is past year 9999 in UTC
        raise argparse.ArgumentTypeError(f"{text!r} is past year 9999 in UTC") from None


def _duration(text: str) -> timedelta:
    from sync.repos.silences import MAX_SILENCE, too_long

    try:
        length = parse_duration(text)
    except OperatorArgError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if length > MAX_SILENCE:  # checked here too: a start plus a huge duration would not even be a time
        raise argparse.ArgumentTypeError(too_long(length))
    return length


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return ""


def register(sub: Any, command: Command, open_store: OpenStore) -> None:
    """Add ``silence`` to the CLI (``command``: the CLI's sub-command builder; ``open_store``: its database)."""
    exits = {
        EXIT_OK: "added, listed or expired",
        EXIT_PROBLEM: "no silence with that id, or it already ended; or the database cannot be reached",
        EXIT_USAGE: "an invalid matcher (the message says which and why), a window that ends before it starts "
        "or in the past, no comment or author, no database at TICKETPAGER_DATABASE_URL, or a schema older than this "
        "version (run 'ticketpager db upgrade')",
    }
    parser = command(sub, "silence", "mute paging for matching tickets for a while", DESCRIPTION,
                     examples=EXAMPLES, exits=exits)  # fmt: skip
    actions = parser.add_subparsers(dest="silence_command", required=True, metavar="ACTION")
    add = command(
        actions,
        "add",
        "mute paging for tickets matching --match, for --duration",
        "Add a silence: while it is active, tickets matching every --match open no new incident.\n"
        f"A --match is {MATCH_SYNTAX}.\n"
        "Fields, operators and values are checked as in a rule's 'when' (docs/rules.md); a 'connection'\n"
        "must be one of TICKETPAGER_CONNECTIONS_FILE's (or a system's default connection, named after it).",
        examples=[EXAMPLES[0], "ticketpager silence add --match-file acme.yaml --ends 2026-12-05T06:00:00Z "
                  "--comment 'ACME migration' --author alice"],
        exits=exits,
    )  # fmt: skip
    add.add_argument("--match", action="append", default=[], metavar="MATCHER", help=f"{MATCH_SYNTAX}; repeatable")
    add.add_argument("--match-file", metavar="YAML", help="a YAML file holding a rule's 'when' mapping")
    window = add.add_mutually_exclusive_group(required=True)
    window.add_argument("--duration", type=_duration, help="how long from the start, e.g. 90m, 2h, 1d")
    window.add_argument("--ends", type=_when, metavar="TIME", help="when it ends, ISO 8601 with a time zone")
    add.add_argument("--starts", type=_when, metavar="TIME", help="when it starts (default: now)")
    add.add_argument("--comment", required=True, help="why (shown with the silence and in the decision log)")
    add.add_argument("--author", default=_login(), help="who (default: your login name)")
    add.add_argument("--json", action="store_true", help="print the silence as JSON")
    add.set_defaults(func=lambda args: _add(args, open_store))

    listing = command(
        actions,
        "list",
        "active and pending silences (--all: ended ones too)",
        "List silences, newest first: id, state (active, pending, expired), window, matchers, author, comment.",
        examples=["ticketpager silence list", "ticketpager silence list --all --json"],
        exits=exits,
    )
    listing.add_argument("--all", action="store_true", help="include the ones that ended")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=lambda args: _list(args, open_store))

    expire = command(
        actions,
        "expire",
        "end a silence now",
        "End a silence now; tickets it held that still match a rule page once, at the engine's next pass.",
        examples=["ticketpager silence expire 3", "ticketpager silence expire 3 --author bob"],
        exits=exits,
    )
    expire.add_argument("id", type=int, help="the silence id from 'silence list'")
    expire.add_argument("--author", default=_login(), help="who (default: your login name)")
    expire.set_defaults(func=lambda args: _expire(args, open_store))


def _show(silence: Any, now: datetime) -> str:
    matchers = json.dumps(dict(silence.matchers), ensure_ascii=False)
    window = f"{silence.starts_at:%Y-%m-%d %H:%M} → {silence.ended_at():%Y-%m-%d %H:%M} UTC"
    line = f"#{silence.id} {silence.state(now):<7} {window}  {matchers}\n    by {silence.author}: {silence.comment}"

    if silence.expired_by:
        line += f" (expired by {silence.expired_by})"
    return line


def _add(args: argparse.Namespace, open_store: OpenStore) -> int:
    from sync.repos import audit
    from sync.repos.silences import SilenceError, add_silence
    from ticketpager.rules_cli import declare_configured_connections

    if bool(args.match) == bool(args.match_file):
        print(f"ticketpager: give --match (one or more: {MATCH_SYNTAX}) or --match-file", file=sys.stderr)
        return EXIT_USAGE
    # a `connection` matcher names one of the connections serve has: those of TICKETPAGER_CONNECTIONS_FILE
    declare_configured_connections()
    try:
        matchers = load_match_file(args.match_file) if args.match_file else parse_match(args.match)
    except MatcherErrors as exc:
        print("ticketpager: invalid matcher:\n" + "\n".join(f"  {p}" for p in exc.problems), file=sys.stderr)
        return EXIT_USAGE
    now = CLOCK.now()
    starts = args.starts or now
    try:
        ends = args.ends or starts + args.duration
    except OverflowError:
        print(f"ticketpager: a silence from {starts.isoformat()} for {args.duration} ends after 9999", file=sys.stderr)
        return EXIT_USAGE
    store = open_store(args)
    try:
        with store.begin() as conn:
            silence = add_silence(conn, matchers, starts, ends, args.comment, args.author, now)
            audit.record(conn, silence.author, "silence.add", f"silence:{silence.id}", silence.to_json(now), now)
    except SilenceError as exc:
        print(f"ticketpager: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.dispose()
    print(json.dumps(silence.to_json(now), indent=2) if args.json else f"added {_show(silence, now)}")
    return EXIT_OK


def _list(args: argparse.Namespace, open_store: OpenStore) -> int:
    from sync.repos.silences import list_silences

    now = CLOCK.now()
    store = open_store(args)
    try:
        with store.engine.connect() as conn:
            found = list_silences(conn, now, include_expired=args.all)
    finally:
        store.dispose()
    if args.json:
        print(json.dumps([s.to_json(now) for s in found], indent=2))
    elif not found:
        print("no silences" if args.all else "no active or pending silences (--all shows the ended ones)")
    for silence in [] if args.json else found:
        print(_show(silence, now))
    return EXIT_OK


def _expire(args: argparse.Namespace, open_store: OpenStore) -> int:
    from sync.repos import audit
    from sync.repos.silences import SilenceError, expire_silence

    now = CLOCK.now()
    store = open_store(args)
    try:
        with store.begin() as conn:
            silence = expire_silence(conn, args.id, now, args.author)
            detail = {"matchers": dict(silence.matchers), "ends_at": silence.ends_at.isoformat()}
            audit.record(conn, args.author, "silence.expire", f"silence:{silence.id}", detail, now)
    except SilenceError as exc:  # unknown id, or already ended
        print(f"ticketpager: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    finally:
        store.dispose()
    print(f"expired {_show(silence, now)}\ntickets it held that still match a rule page at the engine's next pass")
    return EXIT_OK
