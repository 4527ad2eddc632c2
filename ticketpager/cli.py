"""The ticketpager command line: serve, poll, status, dead letters, database, rules."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from connectors import registry
from kernel import logs
from kernel.errors import ConfigError
from kernel.redact import credentials, redact
from ticketpager.exitcodes import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, epilog, overview
from ticketpager.settings import Settings

log = logging.getLogger("ticketpager.cli")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None) is not None:
        if not args.database_url.strip():  # never the default SQLite file in the working directory instead
            raise ConfigError("--database-url is empty: give a database URL, or leave the option out")
        overrides["database_url"] = args.database_url
    if getattr(args, "rules", None):
        overrides["rules_path"] = args.rules
    settings = Settings(**overrides)
    if getattr(args, "dry_run", False):
        settings.dry_run = True
    logs.configure(settings.log_level, settings.log_format, *credentials(settings))  # also kernel.redact.SECRETS
    _warn_unknown_env(settings)
    return settings


def _dotenv_names() -> list[str]:
    """The names the ``.env`` file the settings read (``Settings.model_config['env_file']``) sets, if there is one."""
    from pathlib import Path

    from dotenv import dotenv_values

    path = Path(str(Settings.model_config.get("env_file") or ""))
    return sorted(dotenv_values(path)) if path.name and path.is_file() else []


def _warn_unknown_env(settings: Settings) -> None:
    """A misspelled TICKETPAGER_ variable (in the environment, ``.env`` or a secret file) would be ignored
    silently: say so, with a suggestion."""
    import difflib
    import os

    from ticketpager.secretfiles import setting_files
    from ticketpager.settings_doc import SECTIONS, rows

    known = {env for env, *_ in rows()} | {"TICKETPAGER_TEST_POSTGRES_URL"}
    known |= {"TICKETPAGER_" + section for section in SECTIONS}
    files = setting_files(settings.secrets_dir) if settings.secrets_dir is not None else []
    sources = (
        ("setting", sorted(os.environ)),
        ("setting in .env:", _dotenv_names()),
        (f"secret file in {settings.secrets_dir}:", files),
    )
    for kind, names in sources:
        for name in names:
            if name.upper().startswith("TICKETPAGER_") and name.upper() not in known:
                close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.8)
                hint = f" (did you mean {close[0]}?)" if close else ""
                log.warning("unknown %s %s is ignored%s", kind, name, hint)


def _require_rules_path(settings: Settings) -> None:
    """Outside dry run, pages go to real people: never on the bundled examples' placeholder keys by default."""
    if settings.dry_run or "rules_path" in settings.model_fields_set:
        return
    raise ConfigError(
        "TICKETPAGER_RULES_PATH is not set: outside --dry-run ticketpager pages with your own rule files "
        "(set TICKETPAGER_RULES_PATH, or --rules, to a rule file or a directory of *.yaml). The bundled "
        "examples in rules/examples have placeholder routing keys and run by default only with --dry-run."
    )


def _service(settings: Settings) -> Any:
    from sync.store import Store
    from ticketpager.connections import load_connections
    from ticketpager.service import Service

    _require_rules_path(settings)
    try:
        connections = load_connections(settings)
    except ConfigError as exc:
        print(f"ticketpager: the connections file {settings.connections_file} does not load:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    store = Store(settings.database_url)
    store.upgrade()
    try:
        return Service(settings, store=store, connections=connections)
    except Exception as exc:
        store.dispose()
        if isinstance(exc, ConfigError):
            print(f"ticketpager: rules in {settings.rules_path} do not load:\n{exc}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        raise


def _refuse_to_share(service: Any, *, register: bool) -> None:
    """``Service.refuse_to_share``; the database is let go before its ConfigError ends the command (exit 2)."""
    try:
        service.refuse_to_share(register=register)
    except BaseException:
        service.store.dispose()
        raise


def cmd_serve(args: argparse.Namespace) -> int:
    from ticketpager.stopsignals import StopSignals

    stop = StopSignals().install()  # first: a TERM or INT from here on stops serve, whenever it comes
    import uvicorn

    from ticketpager import edge, httpserver
    from ticketpager.app import build_app

    settings = _settings(args)
    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    service = _service(settings)
    _refuse_to_share(service, register=True)  # a dry run beside a live instance's work, or the other way round
    # background threads share the GIL with the event loop: switch more often so webhooks wait less
    sys.setswitchinterval(0.001)
    # Everything loaded so far lives for the whole process: keep it out of the cyclic GC, and collect the
    # young generation less often. Measured: p99 webhook latency 65 ms -> 17 ms (docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    mode = "DRY RUN (events are logged, not sent)" if settings.dry_run else f"sending to {settings.pagerduty.url}"
    log.info(
        "ticketpager %s on http://%s:%d, rules %s, %s",
        service.instance,
        settings.host,
        settings.port,
        settings.rules_path,
        mode,
    )
    if not settings.dry_run:
        for problem in service.routing_key_problems():
            log.error("%s, so PagerDuty would refuse its pages (set the rule's ${ENV} key)", problem)
    unnamed = service.unnamed_jira_fields()
    if unnamed:
        log.warning("%s", unnamed)
    service.start()
    signal.signal(signal.SIGHUP, lambda *_: service.reload_rules())
    config = uvicorn.Config(
        build_app(service),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's lines go through our handler: same format, same secret redaction
        lifespan="off",
        timeout_graceful_shutdown=10,
        http=edge.protocol(settings.http),  # header size, header/body deadlines, connection cap (ticketpager/edge.py)
        # Never uvicorn's own X-Forwarded-For/-Proto rewrite (on by default for peers in FORWARDED_ALLOW_IPS,
        # 127.0.0.1): behind a local proxy a client's own header would become its address, and the console's
        # login limit would key on whatever it sent. The console reads those headers itself, and only with
        # TICKETPAGER_CONSOLE__TRUST_PROXY_HEADERS (Console.client_address / https / base): one parser, one switch.
        proxy_headers=False,
    )
    try:
        server = httpserver.Server(config)
        # uvicorn handles SIGTERM/SIGINT itself while it runs, then re-raises them against ``stop``, which only
        # records them: we get to stop our workers and exit 0. One received before it runs stops it at once.
        stop.hand_to(server)
        server.run()  # returns on SIGTERM / SIGINT after in-flight requests finish
    finally:
        service.stop()
        service.store.dispose()
        log.info("stopped")
    return EXIT_OK


def cmd_poll(args: argparse.Namespace) -> int:
    settings = _settings(args)
    service = _service(settings)
    try:
        service.refuse_to_share(register=False)
        return _poll(args, service)
    finally:
        service.store.dispose()


def _poll(args: argparse.Namespace, service: Any) -> int:
    chosen = getattr(args, "connection", None) or args.source  # a system's name is its default connection
    if chosen and chosen not in service.connections:
        known = ", ".join(service.connections)
        print(f"ticketpager: no connection named {chosen!r} (connections: {known})", file=sys.stderr)
        return EXIT_USAGE
    sources = [chosen] if chosen else service.pollable_sources()
    if chosen and not service.connector(chosen).can_poll:
        print(f"ticketpager: {chosen} has no API credentials configured; nothing to poll", file=sys.stderr)
        return EXIT_USAGE
    if not sources:
        print(
            "ticketpager: no source is enabled with API credentials (TICKETPAGER_<SOURCE>__ENABLED=true …)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    failed = False

    def progress(report: Any) -> None:
        print(
            f"{report.source}: page {report.pages}, {report.seen} change(s) so far, {report.stored} new",
            file=sys.stderr,
            flush=True,
        )

    for source in sources:
        report = service.poll_source(source, on_page=progress)
        print(f"{source}: {report.pages} page(s), {report.seen} change(s) seen, {report.stored} new", file=sys.stderr)
        if report.error:
            failed = True
            print(f"{source}: poll failed ({report.error_kind}): {redact(report.error)}", file=sys.stderr)
    processed, delivered = service.process_all()
    status = service.store.status()
    print(
        f"processed {processed} change(s), delivered {delivered} outbox row(s); "
        f"pending {status.outbox_pending}, dead letters {status.dead_letters}",
        file=sys.stderr,
    )
    return EXIT_PROBLEM if failed else EXIT_OK


def _store(args: argparse.Namespace) -> Any:
    """The existing database at this version's schema, never migrated here: read-mostly commands (``status``, the
    monitoring cron's ``status --check``, ``deadletters``, ``silence``) neither create a database in the wrong
    directory nor apply a migration mid-rollout, nor wait behind another process's; ``serve``, ``poll`` and
    ``db upgrade`` migrate."""
    from sync.db import parse_url, require_current
    from sync.store import Store

    settings = _settings(args)
    url = parse_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        from pathlib import Path

        if not Path(url.database).exists():
            raise ConfigError(
                f"no database at {url.database} (set TICKETPAGER_DATABASE_URL or --database-url, "
                "or create it with 'ticketpager db upgrade')"
            )
    from sqlalchemy import inspect

    store = Store(settings.database_url)
    if not inspect(store.engine).has_table("alembic_version"):  # an empty or mistyped database / schema
        store.dispose()
        raise ConfigError(
            f"no ticketpager tables in {url.render_as_string(hide_password=True)} (check "
            "TICKETPAGER_DATABASE_URL or --database-url, or create them with 'ticketpager db upgrade')"
        )
    try:
        require_current(store.engine)
    except BaseException:
        store.dispose()
        raise
    return store


def cmd_status(args: argparse.Namespace) -> int:
    from kernel.clock import SystemClock
    from sync.repos.incidents import read_inbox_status
    from ticketpager.statuscheck import problems

    store = _store(args)
    try:
        status = store.status()
        inbox = read_inbox_status(store)
    finally:
        store.dispose()
    data = status.to_json() | {"pagerduty_inbox": inbox.to_json()}
    found = problems(status, SystemClock().now(), args.max_outbox_age) if args.check else []
    if args.check and inbox.failed:
        found.append(
            f"{inbox.failed} PagerDuty webhook(s) could not be handled (see the log: 'PagerDuty webhook … failed')"
        )
    if args.json:
        if args.check:
            data["problems"] = found
        print(json.dumps(data, indent=2))
    elif args.check:  # only the problems: cron mails output, so a healthy check prints nothing
        for problem in found:
            print(f"PROBLEM: {problem}")
    else:
        _print_status(data)
    return EXIT_PROBLEM if found else EXIT_OK


def _print_status(data: dict[str, Any]) -> None:
    incidents = f"open incidents    {data['open_incidents']}"
    waiting = [
        (data["incidents_pending"], "trigger pending"),
        (data["incidents_dead"], "dead letter"),
        (data["incidents_dry_run"], "dry run, logged only"),
    ]
    if any(count for count, _ in waiting):
        incidents += "   not opened " + ", ".join(f"{count} ({why})" for count, why in waiting if count)
    print(f"tickets tracked   {data['tickets_tracked']}")
    print(incidents)
    print(f"changes pending   {data['changes_pending']}   failed {data['changes_failed']}")
    print(f"outbox pending    {data['outbox_pending']}   oldest {data['outbox_oldest'] or '-'}")
    print(f"dead letters      {data['dead_letters']}")
    inbox = data["pagerduty_inbox"]
    if inbox["last_received_at"] or inbox["pending"] or inbox["failed"]:
        print(
            f"pagerduty inbox   {inbox['pending']} pending   failed {inbox['failed']}   last "
            f"{inbox['last_event_type']} at {inbox['last_received_at']}"
        )
    width = max((len(c["source"]) for c in data["cursors"]), default=0)
    for c in data["cursors"]:  # one line per connection (the cursor's `source` is the connection's name)
        line = f"connection {c['source']:<{width}}  last poll {c['last_success_at'] or 'never'}"
        if c["last_error"]:
            line += f"   ERROR ({c['last_error_kind']}) {c['last_error']}"
        print(line)


def _ticket_label(row: Any) -> str:
    """A ticket as people read it: its key, and the connection it came from when that is not its system's
    default one (the same key may exist on two instances)."""
    named = row["connection"] != row["source"]
    return f"{row['ticket_key']} ({row['connection']})" if named else str(row["ticket_key"])


def cmd_deadletters(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        return _deadletters(args, store)
    finally:
        store.dispose()


def _deadletters(args: argparse.Namespace, store: Any) -> int:
    from connectors.pagerduty import mask
    from kernel.clock import SystemClock

    if args.action == "list":
        rows = store.dead_letters(limit=args.limit)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "id": r["id"],
                            "kind": r["kind"],
                            "action": r["action"],
                            "ticket": r["ticket_key"],
                            "connection": r["connection"],
                            "rule": r["rule"],
                            "dedup_key": r["dedup_key"],
                            "routing_key": mask(r["routing_key"]),
                            "attempts": r["attempts"],
                            "error": r["last_error"],
                            "created_at": r["created_at"].isoformat(),
                        }
                        for r in rows
                    ],
                    indent=2,
                )
            )
            return EXIT_OK
        if not rows:
            print("no dead letters")
        for r in rows:
            print(
                f"#{r['id']} {r['kind']} {r['action']} {_ticket_label(r)} rule={r['rule']} "
                f"routing_key={mask(r['routing_key'])} attempts={r['attempts']}\n    {r['last_error']}"
            )
        return EXIT_OK
    if not args.all and not args.ids:
        print("ticketpager: give dead-letter ids or --all", file=sys.stderr)
        return EXIT_USAGE
    if not args.all:
        known = {r["id"] for r in store.dead_letters(limit=1_000_000)}
        unknown = sorted(set(args.ids) - known)
        if unknown:
            print(
                f"ticketpager: no dead letter with id {', '.join(map(str, unknown))} "
                "(see 'ticketpager deadletters list')",
                file=sys.stderr,
            )
            return EXIT_PROBLEM
    count, superseded = store.retry_dead(None if args.all else args.ids, SystemClock().now())
    print(f"{count} dead letter(s) queued again; a running 'serve' (or 'poll --once') delivers them")
    if superseded:
        print(
            f"{superseded} not re-sent: a later event of the same incident was already sent "
            "(re-sending would reopen it); marked superseded"
        )
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from sync.db import current_revision
    from sync.store import Store

    settings = _settings(args)
    store = Store(settings.database_url)
    try:
        print(f"upgrading {store.engine.url.render_as_string(hide_password=True)} …", file=sys.stderr)
        known = store.upgrade()
        newer = "" if known else " (newer than this version: left as it is)"
        print(f"database at revision {current_revision(store.engine)}{newer}")
    finally:
        store.dispose()
    return EXIT_OK


PAGERDUTY_WEBHOOK_PATH = "/webhooks/pagerduty"


def _rest_client(settings: Settings) -> Any:
    from connectors.pagerduty_rest import PagerDutyRestClient

    pd = settings.pagerduty
    if not pd.api_token.get_secret_value():
        raise ConfigError("'ticketpager pagerduty' needs a REST API key: set TICKETPAGER_PAGERDUTY__API_TOKEN")
    return PagerDutyRestClient(
        pd.api_token, api_url=pd.rest_url, from_email=pd.from_email or None, timeout=pd.timeout_seconds
    )


def _webhook_url(args: argparse.Namespace, settings: Settings) -> str:
    if args.url:
        return str(args.url)
    if settings.public_url:
        return settings.public_url.rstrip("/") + PAGERDUTY_WEBHOOK_PATH
    raise ConfigError(
        f"give --url (e.g. https://ticketpager.example.com{PAGERDUTY_WEBHOOK_PATH}) or set TICKETPAGER_PUBLIC_URL"
    )


def cmd_pagerduty_subscribe(args: argparse.Namespace) -> int:
    """Create the v3 webhook subscription(s) for the services given (or the account), printing each new
    subscription's secret once: PagerDuty shows it only in the answer to the create."""
    from kernel.errors import TicketpagerError
    from kernel.incidents import EventType

    settings = _settings(args)
    url = _webhook_url(args, settings)
    events = [t.value for t in EventType]
    scopes: list[str | None] = list(args.service) or [None]
    if args.dry_run:
        for scope in scopes:
            where = f"service {scope}" if scope else "the whole account"
            print(f"would subscribe {url} to {len(events)} event types for {where}: {', '.join(events)}")
        return EXIT_OK
    client = _rest_client(settings)
    for scope in scopes:
        where = f"service {scope}" if scope else "the whole account"
        try:  # an existing subscription to the URL is found first: running it again creates nothing
            sub, created = client.ensure_webhook_subscription(url, events, service_id=scope)
        except TicketpagerError as exc:
            print(f"ticketpager: subscribing {url} for {where} failed: {redact(str(exc))}", file=sys.stderr)
            return EXIT_PROBLEM
        if not created:
            print(f"{sub.id}: {url} is already subscribed for {where} (its secret is not shown again)")
            continue
        secret = sub.secret.get_secret_value() if sub.secret else ""
        print(f"{sub.id}: subscribed {url} for {where}")
        print(f"  secret (shown once; add it to TICKETPAGER_PAGERDUTY__WEBHOOK_SECRETS now): {secret}")
    return EXIT_OK


def cmd_pagerduty_ping(args: argparse.Namespace) -> int:
    """Ask PagerDuty to send ``pagey.ping`` to every subscription delivering to the URL."""
    from kernel.errors import TicketpagerError

    settings = _settings(args)
    url = _webhook_url(args, settings)
    client = _rest_client(settings)
    try:
        subs = [s for s in client.list_webhook_subscriptions() if s.url == url]
        for sub in subs:
            client.ping(sub.id)
    except TicketpagerError as exc:
        print(f"ticketpager: PagerDuty: {redact(str(exc))}", file=sys.stderr)
        return EXIT_PROBLEM
    if not subs:
        print(f"no PagerDuty webhook subscription delivers to {url} (create one: ticketpager pagerduty subscribe)")
        return EXIT_PROBLEM
    for sub in subs:
        state = "" if sub.active else " (the subscription is INACTIVE: PagerDuty will not deliver)"
        print(f"{sub.id}: PagerDuty is sending pagey.ping to {url}{state}")
    print(
        "a running 'serve' answers it 202 and counts it in "
        'ticketpager_pagerduty_webhooks_total{event_type="other",outcome="ignored"}; a 401 there means the '
        "secret in TICKETPAGER_PAGERDUTY__WEBHOOK_SECRETS is not this subscription's"
    )
    return EXIT_OK if all(s.active for s in subs) else EXIT_PROBLEM


def build_parser() -> argparse.ArgumentParser:
    # --database-url / --rules work before or after the sub-command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", default=argparse.SUPPRESS, help="overrides TICKETPAGER_DATABASE_URL")
    common.add_argument(
        "--rules", default=argparse.SUPPRESS, help="rule file or directory; overrides TICKETPAGER_RULES_PATH"
    )
    parser = argparse.ArgumentParser(
        prog="ticketpager",
        description="Page PagerDuty from Jira, Zendesk and ServiceNow tickets. Settings come from TICKETPAGER_* "
        "environment variables (see the README). 'ticketpager COMMAND --help' shows examples for each.",
        epilog=overview(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"ticketpager {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, help_text: str, description: str, **helps: Any) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = parent.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=description,
            epilog=epilog(**helps) if helps else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return made

    serve = command(
        sub,
        "serve",
        "run the webhook server, engine, delivery and pollers",
        "Run everything in one process: the webhook server, the engine, the PagerDuty delivery workers, the\n"
        "pollers, the time-rule scheduler and the rule reloader. Stops cleanly on SIGTERM, reloads rules on\n"
        "SIGHUP. Outside --dry-run it needs TICKETPAGER_RULES_PATH (the bundled examples run only in dry run).",
        examples=[
            "TICKETPAGER_RULES_PATH=/etc/ticketpager/rules ticketpager serve --host 0.0.0.0",
            "ticketpager serve --dry-run      # the bundled example rules; events are logged, not sent",
        ],
        exits={
            EXIT_OK: "stopped by SIGTERM or SIGINT after finishing in-flight work",
            EXIT_PROBLEM: "the database cannot be reached, or a migration failed",
            EXIT_USAGE: "a setting is invalid, TICKETPAGER_RULES_PATH is not set outside --dry-run, the rule "
            "files do not load, or a dry run and a live instance would share the database",
        },
    )
    serve.add_argument("--dry-run", action="store_true", help="log PagerDuty events instead of sending them")
    serve.add_argument("--host", help="listen address (default 127.0.0.1, TICKETPAGER_HOST)")
    serve.add_argument("--port", type=_port, help="listen port (default 8080, TICKETPAGER_PORT)")
    serve.set_defaults(func=cmd_serve)

    poll = command(
        sub,
        "poll",
        "poll sources, process and deliver once (for cron)",
        "One poll cycle of every enabled source (or --source), then process the changes and deliver what is\n"
        "due, and exit: for cron, instead of a running 'serve'. Progress goes to stderr.",
        examples=[
            "ticketpager poll --once",
            "ticketpager poll --once --source jira --dry-run",
            "ticketpager poll --once --connection acme-zendesk",
        ],
        exits={
            EXIT_OK: "every poll succeeded (dead letters are reported, see 'status --check')",
            EXIT_PROBLEM: "a source's poll failed (the others still ran), or the database cannot be reached",
            EXIT_USAGE: "no source is enabled with API credentials, a setting is invalid, TICKETPAGER_RULES_PATH is "
            "not set outside --dry-run, the rule files do not load, or a dry run and a live instance would share the "
            "database",
        },
    )
    poll.add_argument("--once", action="store_true", required=True, help="one cycle, then exit")
    only = poll.add_mutually_exclusive_group()
    only.add_argument(
        "--source", choices=registry.names(), help="poll only this source (default: every enabled one)"
    )
    only.add_argument(
        "--connection", metavar="NAME", help="poll only this connection (a name of the connections file, or a system)"
    )
    poll.add_argument("--dry-run", action="store_true", help="log PagerDuty events instead of sending them")
    poll.set_defaults(func=cmd_poll)

    status = command(
        sub,
        "status",
        "tickets, incidents, outbox, dead letters, last poll per source",
        "What the database says: tickets tracked; incidents open at PagerDuty (trigger sent) apart from those\n"
        "whose trigger is still pending or was refused (a dead letter); changes pending and failed; the\n"
        "outbox; dead letters; each source's last poll and error. With --check: only the problems, one line\n"
        "each, and exit 1 if there is any (nothing printed and exit 0 when all is well), for cron and\n"
        "monitoring.",
        examples=[
            "ticketpager status",
            "ticketpager status --check || echo 'ticketpager needs attention'",
            "ticketpager status --json --check --max-outbox-age 15m",
        ],
        exits={
            EXIT_OK: "the report was printed; with --check: no problem",
            EXIT_PROBLEM: "--check found a problem (dead letters, an outbox that does not drain, failed changes, a "
            "failing poll), or the database cannot be reached",
            EXIT_USAGE: "no database or no ticketpager tables at TICKETPAGER_DATABASE_URL, a schema older than this "
            "version (status never migrates: run 'ticketpager db upgrade'), or a setting is invalid",
        },
    )
    status.add_argument("--json", action="store_true", help="machine-readable output (with --check: a 'problems' list)")
    status.add_argument(
        "--check", action="store_true", help="print only the problems, one line each; exit 1 if there is any"
    )
    status.add_argument(
        "--max-outbox-age",
        type=_duration,
        default=_duration("5m"),
        metavar="DURATION",
        help="with --check: a pending event older than this is a problem (default 5m, e.g. 90s, 15m, 1h)",
    )
    status.set_defaults(func=cmd_status)

    dead_exits = {
        EXIT_OK: "listed, or queued again",
        EXIT_PROBLEM: "no dead letter with a given id, or the database cannot be reached",
        EXIT_USAGE: "neither ids nor --all given, no database at TICKETPAGER_DATABASE_URL, or a schema older than "
        "this version (run 'ticketpager db upgrade')",
    }
    dead_examples = [
        "ticketpager deadletters list",
        "ticketpager deadletters retry 17 18",
        "ticketpager deadletters retry --all",
    ]
    dead = command(
        sub,
        "deadletters",
        "list or re-drive events PagerDuty refused",
        "Events PagerDuty refused (its 400 with the reason) or that ran out of retries, and ticket notes the\n"
        "ticket system refused: list them with the error, and queue them again once the cause is fixed.",
        examples=dead_examples,
        exits=dead_exits,
    )
    dsub = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    dlist = command(
        dsub,
        "list",
        "show dead letters with PagerDuty's error",
        "Show dead letters, oldest first, with the error that stopped them (routing keys masked).",
        examples=["ticketpager deadletters list", "ticketpager deadletters list --json --limit 10"],
        exits={
            EXIT_OK: "listed (also when there is none)",
            EXIT_PROBLEM: "the database cannot be reached",
            EXIT_USAGE: "no database or no ticketpager tables at TICKETPAGER_DATABASE_URL, or a schema older than "
            "this version (run 'ticketpager db upgrade')",
        },
    )
    dlist.add_argument("--json", action="store_true", help="machine-readable output")
    dlist.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    dretry = command(
        dsub,
        "retry",
        "queue dead letters again",
        "Queue dead letters again; a running 'serve' (or the next 'poll --once') sends them. A trigger whose\n"
        "incident has moved on since (the ticket was resolved) is not re-sent but marked superseded.",
        examples=dead_examples[1:],
        exits=dead_exits,
    )
    dretry.add_argument("ids", nargs="*", type=int, help="dead-letter ids from 'deadletters list'")
    dretry.add_argument("--all", action="store_true", help="every dead letter")
    dead.set_defaults(func=cmd_deadletters)

    db_exits = {
        EXIT_OK: "the schema is current (or newer than this version, left as it is)",
        EXIT_PROBLEM: "the database cannot be reached, or a migration failed",
        EXIT_USAGE: "TICKETPAGER_DATABASE_URL is not a SQLite or PostgreSQL URL, or the driver is missing",
    }
    dbp = command(
        sub,
        "db",
        "database maintenance",
        "Database maintenance. 'serve' and 'poll' also migrate at start ('status', 'deadletters' and 'silence'\n"
        "never do: on an older schema they exit 2); run 'db upgrade' separately before a rollout whose release\n"
        "notes call a migration long.",
        examples=["TICKETPAGER_DATABASE_URL=postgresql://ticketpager@db:5432/ticketpager ticketpager db upgrade"],
        exits=db_exits,
    )
    dbsub = dbp.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    command(
        dbsub,
        "upgrade",
        "apply migrations (safe with several replicas)",
        "Apply the migrations up to this version, under a PostgreSQL advisory lock (replicas starting together\n"
        "migrate once).",
        examples=["ticketpager db upgrade --database-url sqlite:////var/lib/ticketpager/ticketpager.db"],
        exits=db_exits,
    )
    dbp.set_defaults(func=cmd_db)

    pd_exits = {
        EXIT_OK: "done",
        EXIT_PROBLEM: "PagerDuty refused or did not answer, or (ping) no active subscription delivers to the URL",
        EXIT_USAGE: "no TICKETPAGER_PAGERDUTY__API_TOKEN, no --url and no TICKETPAGER_PUBLIC_URL, or a setting is "
        "invalid",
    }
    pdp = command(
        sub,
        "pagerduty",
        "PagerDuty webhook subscription: subscribe, ping",
        "The way back from PagerDuty: the v3 webhook subscription that delivers incident events to\n"
        f"POST {PAGERDUTY_WEBHOOK_PATH}. Needs TICKETPAGER_PAGERDUTY__API_TOKEN (a REST API key).",
        examples=[
            "ticketpager pagerduty subscribe --url https://tp.example.com/webhooks/pagerduty --service PSVC001",
            "ticketpager pagerduty ping --url https://tp.example.com/webhooks/pagerduty",
        ],
        exits=pd_exits,
    )
    pdsub = pdp.add_subparsers(dest="pd_command", required=True, metavar="ACTION")
    subscribe = command(
        pdsub,
        "subscribe",
        "create the v3 webhook subscription (prints its secret once)",
        "Create a v3 webhook subscription for each --service (the services your rules' routing keys belong to),\n"
        "or for the whole account without --service. PagerDuty shows a subscription's secret only when it is\n"
        "created: it is printed once; put it in TICKETPAGER_PAGERDUTY__WEBHOOK_SECRETS. A URL already subscribed\n"
        "is left as it is.",
        examples=["ticketpager pagerduty subscribe --url https://tp.example.com/webhooks/pagerduty --dry-run"],
        exits=pd_exits,
    )
    default_url = f"TICKETPAGER_PUBLIC_URL + {PAGERDUTY_WEBHOOK_PATH}"
    subscribe.add_argument("--url", help=f"where PagerDuty delivers (default {default_url})")
    subscribe.add_argument(
        "--service", action="append", default=[], metavar="ID", help="a PagerDuty service id (repeat)"
    )
    subscribe.add_argument("--dry-run", action="store_true", help="print what would be created; call nothing")
    subscribe.set_defaults(func=cmd_pagerduty_subscribe)
    ping = command(
        pdsub,
        "ping",
        "ask PagerDuty to send a test event to ticketpager",
        "Ask PagerDuty to send its pagey.ping test event through every subscription delivering to the URL: the\n"
        "end-to-end path from PagerDuty to a running 'serve'.",
        examples=["ticketpager pagerduty ping --url https://tp.example.com/webhooks/pagerduty"],
        exits=pd_exits,
    )
    ping.add_argument("--url", help=f"the subscribed URL (default {default_url})")
    ping.set_defaults(func=cmd_pagerduty_ping)

    try:
        from ticketpager.rules_cli import register
    except ImportError:  # pragma: no cover - the rules CLI is part of the distribution
        pass
    else:
        register(sub)
    from ticketpager.silence_cli import register as register_silence

    register_silence(sub, command, _store)
    return parser


def _port(text: str) -> int:
    """argparse type of ``serve --port``: a TCP port, as TICKETPAGER_PORT must be (0 would listen on a random one)."""
    from ticketpager.settings import MAX_PORT, MIN_PORT

    try:
        port = int(text)
    except ValueError:
        port = -1
    if not MIN_PORT <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port ({MIN_PORT}-{MAX_PORT})")
    return port


def _duration(text: str) -> Any:
    """argparse type of a duration (90s, 15m, 1h): the rule files' syntax."""
    from rules.operators import OperatorArgError, parse_duration

    try:
        return parse_duration(text)
    except OperatorArgError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ticketpager")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def _secret_fields(model: type[Any]) -> set[str]:
    """Names of the settings that hold secrets (typed ``SecretStr``, alone or in a list), at any depth."""
    from pydantic import BaseModel

    names: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = str(info.annotation)
        if "SecretStr" in annotation:
            names.add(name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            names |= _secret_fields(info.annotation)
    return names


_OTHER_DRIVERS = ("MySQLdb", "pymysql", "cx_Oracle", "oracledb", "pyodbc", "pymssql")
_SECRET_FIELDS = _secret_fields(Settings)  # a settings error never echoes what was given for these


def _env_name(loc: Sequence[object]) -> str:
    return "TICKETPAGER_" + "__".join(str(part).upper() for part in loc if not isinstance(part, int))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; configuration mistakes end with a clear message and exit 2, never a traceback."""
    from alembic.util.exc import CommandError
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except ValidationError as exc:
        for problem in exc.errors():
            given = problem.get("input")
            secret = any(str(part) in _SECRET_FIELDS for part in problem["loc"])
            shown = "" if isinstance(given, dict) or secret else f" (got {given!r})"
            print(f"ticketpager: {_env_name(problem['loc'])}: {problem['msg']}{shown}", file=sys.stderr)
        return EXIT_USAGE
    except SettingsError as exc:
        if "secrets_dir" in str(exc):  # pydantic-settings' own bounds on the secrets directory
            print(f"ticketpager: TICKETPAGER_SECRETS_DIR: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(
            f"ticketpager: {exc}. Lists take a JSON list or comma-separated values; maps take a JSON object.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"ticketpager: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if exc.name in ("psycopg", "psycopg2"):
            print("ticketpager: PostgreSQL needs the driver: pip install 'ticketpager[postgres]'", file=sys.stderr)
            return EXIT_USAGE
        if exc.name in _OTHER_DRIVERS:
            print(
                f"ticketpager: TICKETPAGER_DATABASE_URL: ticketpager runs on SQLite or PostgreSQL "
                f"(no driver {exc.name!r} for another database)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        raise
    except (NoSuchModuleError, ArgumentError) as exc:  # a URL SQLAlchemy cannot parse or has no dialect for
        print(
            f"ticketpager: TICKETPAGER_DATABASE_URL: {exc}; expected sqlite:///path/to/ticketpager.db "
            "or postgresql://user@host:5432/db",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except CommandError as exc:  # Alembic: a migration that cannot run here
        print(f"ticketpager: database migration failed: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except (DBAPIError, PoolTimeout) as exc:  # sync.db.DATABASE_ERRORS: the database is down or refuses us: one line
        from sync.db import database_fault, failure_reason

        if not database_fault(exc):
            raise
        print(f"ticketpager: cannot use the database: {failure_reason(exc)}", file=sys.stderr)
        return EXIT_PROBLEM
    except BrokenPipeError:  # e.g. `ticketpager rules schema | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
