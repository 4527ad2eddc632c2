"""``ticketpager rules check | test | schema | backtest``: the admin's tools for rule files.

``register(subparsers)`` adds the ``rules`` command to the service CLI (``ticketpager/cli.py``);
``python -m ticketpager.rules_cli ...`` runs the same commands standalone. Nothing here writes anywhere: ``test`` and
``backtest`` only print what would be sent, with routing keys masked (``****abcd``).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from connectors import registry
from kernel.incidents import IncidentEvent
from kernel.model import (
    FieldChange,
    IncidentUpdate,
    LinkState,
    PlannedEvent,
    Ticket,
    TicketUpdate,
    diff_tickets,
    merge_changes,
)
from kernel.ports import IncidentContext
from kernel.retry import RetryPolicy
from rules.backtest_progress import ReportingClock, progress_for
from rules.env_notice import missing_env_notice
from rules.evaluator import EvalContext, RuleResult, RuleSet
from rules.load import load_rules
from rules.loader import RuleFileError, RuleFileErrors
from rules.operators import OperatorArgError, parse_duration
from rules.twoway import TwoWayPlan
from ticketpager.exitcodes import epilog

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2

RULES_DESCRIPTION = """\
Check, test and back-test the rule files that decide which tickets page whom (see docs/rules.md).
Nothing here sends a page: 'test' and 'backtest' only print what would be sent, routing keys masked."""
CHECK_DESCRIPTION = """\
Validate a rule file or a directory of *.yaml rule files. Prints "OK: N rules ..." and exits 0, or
prints every problem as file:line:col: message and exits 1. With --online, also asks PagerDuty's REST
API (TICKETPAGER_PAGERDUTY__API_TOKEN) whether every escalation policy id the rules name exists."""
TEST_DESCRIPTION = """\
Evaluate the rules against one ticket: each rule's verdict and why, and the exact PagerDuty events
that would be sent. With --pagerduty-event, also what the rules write back onto the ticket for that
PagerDuty webhook (comment, transition, group); with --previous, what a group change does to the open
incident. With --expect, exit 1 with a diff when the result differs from a golden file."""
SCHEMA_DESCRIPTION = "Print the JSON Schema of rule files (for editor completion and checks)."
BACKTEST_DESCRIPTION = """\
Read recent tickets through the configured connector and report what the rules would have paged.
Writes nothing and sends nothing."""
ALLOW_MISSING_ENV_HELP = (
    "treat an unset ${VAR} routing key as a warning (printed as file:line:col) and use a placeholder, "
    "so rules can be checked in CI without the keys"
)


RULES_EXITS = {
    EXIT_OK: "the rule files are valid (and, for test --expect, the result matches)",
    EXIT_MISMATCH: "the rule files have errors (each printed as file:line:col), a test --expect mismatch, or "
    "the vendor API failed during backtest",
    EXIT_USAGE: "wrong arguments, a rule path that does not exist, a file given with --ticket / --previous / "
    "--expect that cannot be read, or "
    "valid files whose routing-key variables are unset here (check and test: one notice by variable; "
    "--allow-missing-env accepts them)",
}
RULES_HELP: dict[str, dict[str, Any]] = {
    "check": {
        "examples": [
            "ticketpager rules check /etc/ticketpager/rules",
            "ticketpager rules check rules/ --allow-missing-env      # in CI, without the routing keys",
            "ticketpager rules check rules/ --online                 # escalation policy ids exist in PagerDuty",
        ],
        "exits": {
            EXIT_OK: "the rule files are valid",
            EXIT_MISMATCH: "the rule files have errors (each printed as file:line:col), or, with --online, an "
            "escalation policy PagerDuty does not have or a PagerDuty API failure",
            EXIT_USAGE: "wrong arguments, a path that does not exist, valid files whose routing-key variables "
            "are unset here "
            "(one notice by variable; --allow-missing-env accepts them), or --online without "
            "TICKETPAGER_PAGERDUTY__API_TOKEN",
        },
    },
    "test": {
        "examples": [
            "ticketpager rules test rules/examples/jira-ops-p1.yaml --ticket rules/examples/jira-ops-p1.ticket.json",
            "ticketpager rules test rules/ --ticket t.json --previous p.json --now 2026-11-30T09:40:00Z",
            "ticketpager rules test rules/ --ticket t.json --expect t.expect.json     # a golden test in CI",
            "ticketpager rules test rules/ --ticket t.json --pagerduty-event acknowledged.json  # the write-back",
        ],
        "exits": RULES_EXITS,
    },
    "schema": {
        "examples": ["ticketpager rules schema > rules/schema.json"],
        "exits": {EXIT_OK: "the schema was printed", EXIT_USAGE: "wrong arguments"},
    },
    "backtest": {
        "examples": [
            "ticketpager rules backtest rules/ --source zendesk --since 24h",
            "ticketpager rules backtest rules/ --source jira --since 7d --limit 500 > backtest.txt",
        ],
        "exits": {
            EXIT_OK: "the report was printed",
            EXIT_MISMATCH: "the rule files have errors, or the vendor API failed (one sentence saying why)",
            EXIT_USAGE: "wrong arguments (an unknown --source or a bad --since, a path that does not exist), or "
            "the source's API credentials "
            "are not set (TICKETPAGER_<SOURCE>__…, as for polling)",
        },
    },
}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``rules`` (check/test/schema/backtest) to an argparse subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "rules",
        help="check, test and back-test rule files",
        description=RULES_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="rules_command", required=True, metavar="{check,test,schema,backtest}")

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        return command

    check = add("check", "validate rule files; exit 1 with every error", CHECK_DESCRIPTION)
    check.add_argument("path", help="a rule file or a directory of *.yaml")
    check.add_argument("--allow-missing-env", action="store_true", help=ALLOW_MISSING_ENV_HELP)
    check.add_argument(
        "--online",
        action="store_true",
        help="also check every escalation policy id against PagerDuty's REST API (TICKETPAGER_PAGERDUTY__API_TOKEN)",
    )
    check.set_defaults(func=cmd_check)

    test = add("test", "show each rule's verdict and the exact PagerDuty events for a ticket", TEST_DESCRIPTION)
    test.add_argument("path", help="a rule file or a directory of *.yaml")
    test.add_argument("--ticket", required=True, help="normalized ticket JSON (Ticket.to_json), or a vendor payload")
    test.add_argument("--previous", help="the ticket before this update: its events set the incident state")
    test.add_argument("--source", help=f"{' | '.join(registry.names())} (parse --ticket as that vendor's webhook body)")
    test.add_argument(
        "--now",
        help="evaluation time, ISO 8601 with a time zone, e.g. 2026-11-30T09:40:00Z (default: the ticket's update)",
    )
    test.add_argument(
        "--pagerduty-event",
        help="a PagerDuty v3 webhook body (JSON): show what the rules write back onto the ticket for it",
    )
    test.add_argument("--expect", help="golden JSON: exit 1 with a diff if verdicts or events differ")
    test.add_argument("--json", action="store_true", help="print the result as JSON (the --expect format)")
    test.add_argument("--allow-missing-env", action="store_true", help=ALLOW_MISSING_ENV_HELP)
    test.set_defaults(func=cmd_test)

    schema = add("schema", "print the JSON Schema of rule files (for editors)", SCHEMA_DESCRIPTION)
    schema.set_defaults(func=cmd_schema)

    backtest = add("backtest", "evaluate recent real tickets and report what would have paged", BACKTEST_DESCRIPTION)
    backtest.add_argument("path", help="a rule file or a directory of *.yaml")
    backtest.add_argument("--source", required=True, help=" | ".join(registry.names()))
    backtest.add_argument("--since", default="7d", help="how far back to read, e.g. 7d, 24h (default 7d)")
    backtest.add_argument("--limit", type=int, default=10_000, help="stop after this many ticket versions")
    backtest.set_defaults(func=cmd_backtest)
    for name, command in sub.choices.items():  # examples and exit codes at the end of each --help
        command.epilog = epilog(**RULES_HELP[name])
    parser.epilog = epilog([f"ticketpager rules {name} --help" for name in RULES_HELP], RULES_EXITS)
    return parser


# -------------------------------------------------------------------------------------------------- check


def _load(
    path: str,
    allow_missing_env: bool = False,
    missing_env: list[RuleFileError] | None = None,
    command: str = "check",
    check_key_format: bool = True,
) -> RuleSet | None:
    """Load for a command; errors and warnings (with ``allow_missing_env``, env warnings too) go to stderr. Given
    ``missing_env`` (``rules check``), unset ``${VAR}`` keys are collected there and printed after any errors
    as one notice grouped by variable, not as an error each. ``check_key_format``: a routing key PagerDuty
    would refuse is an error (``backtest`` sends nothing and does not judge the keys)."""
    warnings = [] if allow_missing_env else missing_env
    notices: list[RuleFileError] = []  # warnings that are not about the environment: printed in every case
    declare_configured_connections()
    try:
        ruleset = load_rules(
            path, env=_rule_env(), env_warnings=warnings, check_key_format=check_key_format, warnings=notices
        )
    except RuleFileErrors as exc:
        _print_warnings(notices)
        _print_warnings(warnings if allow_missing_env else None)
        print(str(exc), file=sys.stderr)
        print(f"{len(exc.errors)} error(s) in {path}", file=sys.stderr)
        for line in missing_env_notice(path, missing_env or (), valid=False, command=command):
            print(line, file=sys.stderr)
        return None
    _print_warnings(notices)
    _print_warnings(warnings if allow_missing_env else None)
    for line in missing_env_notice(path, missing_env or (), valid=True, command=command):
        print(line, file=sys.stderr)
    return ruleset


def _rule_env() -> Mapping[str, str] | None:
    """``${VAR}`` as ``serve`` resolves it: the environment, then a file of that name in TICKETPAGER_SECRETS_DIR
    (docs/operations.md); a missing directory raises ``ConfigError`` (exit 2)."""
    from ticketpager.secretfiles import EnvWithSecretFiles, configured_dir

    directory = configured_dir({})
    return EnvWithSecretFiles(directory) if directory is not None else None


def declare_configured_connections() -> None:
    """``connection:`` conditions are checked against the connections ``serve`` would have: those of
    TICKETPAGER_CONNECTIONS_FILE, if set (a file that does not load raises ``ConfigError``, exit 2)."""
    import os

    from ticketpager.connections import ENV_NAME, declare, default_connections, load_file
    from ticketpager.settings import Settings

    given = next((value for name, value in os.environ.items() if name.upper() == ENV_NAME and value.strip()), None)
    if given is None:
        return
    env = _rule_env() or os.environ
    declare(default_connections(Settings()) | load_file(Path(given.strip()), env))


def _print_warnings(warnings: list[RuleFileError] | None) -> None:
    for warning in warnings or ():
        print(f"{warning.path}:{warning.line}:{warning.col}: warning: {warning.message}", file=sys.stderr)


def _unknown_source(source: str | None, command: str) -> bool:
    """``--source jria``: a usage problem (exit 2) in ``test`` and ``backtest`` alike, whatever the ticket file
    holds (``test`` used to ignore it for a normalized ticket)."""
    if source is None or source in registry.names():
        return False
    from rules.operators import did_you_mean

    print(
        f"ticketpager rules {command}: unknown --source {source!r}{did_you_mean(source, registry.names())} "
        f"(use {' | '.join(registry.names())})",
        file=sys.stderr,
    )
    return True


def _missing(path: str, command: str) -> bool:
    """A rule path that does not exist: a usage problem (exit 2, as a missing --ticket file), said once."""
    if Path(path).exists():
        return False
    print(f"ticketpager rules {command}: {path}: no such file or directory", file=sys.stderr)
    return True


def cmd_check(args: argparse.Namespace) -> int:
    if _missing(args.path, "check"):
        return EXIT_USAGE
    missing_env: list[RuleFileError] = []
    ruleset = _load(args.path, args.allow_missing_env, None if args.allow_missing_env else missing_env)
    if ruleset is None:
        return EXIT_MISMATCH
    if missing_env:  # valid files, but `serve` would refuse them in this environment: a configuration problem
        return EXIT_USAGE
    timed = f", time rules: {', '.join(ruleset.time_rules)}" if ruleset.has_time_rules else ""
    count = f"{len(ruleset)} rule" + ("" if len(ruleset) == 1 else "s")
    if args.online:
        status = check_policies_online(ruleset)
        if status != EXIT_OK:
            return status
    print(f"OK: {count} in {args.path} (digest {ruleset.digest}){timed}")
    return EXIT_OK


def check_policies_online(ruleset: RuleSet, client: Any = None) -> int:
    """``rules check --online``: every escalation policy id of the rules exists in PagerDuty (one list call,
    paginated). Unknown ids are printed as ``file:line:col`` errors; exit 2 without a token, 1 on an unknown id
    or an API failure."""
    from connectors.pagerduty_rest import PagerDutyRestClient, Region
    from kernel.errors import ConfigError, TicketpagerError
    from ticketpager.settings import Settings

    positions = ruleset.policy_positions()
    if not positions:
        print("--online: the rules name no escalation policy", file=sys.stderr)
        return EXIT_OK
    try:
        if client is None:
            pd = Settings().pagerduty
            client = PagerDutyRestClient(
                pd.api_token,
                region=Region(pd.region),
                api_url=pd.api_url or None,
                from_email=pd.from_email or None,
                timeout=pd.timeout_seconds,
            )
        known = {ref.id: ref.summary for ref in client.list_escalation_policies()}
    except ConfigError as exc:
        print(f"ticketpager rules check --online: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TicketpagerError as exc:
        print(f"ticketpager rules check --online: PagerDuty: {str(exc).rstrip('.')}.", file=sys.stderr)
        return EXIT_MISMATCH
    missing = [(pid, pos) for pid, pos in positions.items() if pid not in known]
    for pid, pos in sorted(missing, key=lambda item: (item[1].path, item[1].line, item[1].col)):
        print(
            f"{pos.path}:{pos.line}:{pos.col}: escalation policy {pid} does not exist in PagerDuty "
            f"(or the API token cannot see it; {len(known)} policies found)",
            file=sys.stderr,
        )
    if missing:
        print(f"{len(missing)} error(s): unknown escalation policies", file=sys.stderr)
        return EXIT_MISMATCH
    names = ", ".join(f"{pid} ({known[pid]})" for pid in sorted(positions))
    print(f"escalation policies found in PagerDuty: {names}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- test


class CliError(Exception):
    """A usage problem (bad file, bad time); printed without a traceback, exit 2."""


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_bytes())  # bytes: UTF-8, UTF-16 (PowerShell's default) or UTF-32
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8, UTF-16 or UTF-32 text ({exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


def _ticket(path: str, source: str | None) -> tuple[Ticket, tuple[FieldChange, ...] | None]:
    """The ticket in ``path`` and, for a vendor webhook body, the change list it carries (a Jira
    changelog), which the service reads as well as its diff against the previous version."""
    data = _read_json(path)
    if isinstance(data, dict) and "status_category" in data and "updated" in data:
        try:
            return Ticket.from_json(data), None
        except (KeyError, TypeError, ValueError) as exc:
            raise CliError(f"{path}: not a valid ticket: {exc}") from None
    if source is None:
        raise CliError(f"{path}: not a normalized ticket (Ticket.to_json); pass --source to parse a vendor payload")
    return _vendor_ticket(path, source, data)


def _vendor_ticket(path: str, source: str, data: Any) -> tuple[Ticket, tuple[FieldChange, ...] | None]:
    """Parse a raw vendor webhook body with the real connector (no signature check, no network)."""
    from connectors import connector_class
    from kernel.errors import TicketpagerError
    from ticketpager.settings import Settings

    try:
        settings = Settings().connector(source)
        connector = connector_class(source)(settings, insecure=True)
        result = connector.parse_webhook({}, Path(path).read_bytes())
    except KeyError:
        raise CliError(f"unknown source {source!r}") from None
    except TicketpagerError as exc:
        raise CliError(f"{path}: the {source} connector cannot parse it: {exc}") from None
    if not result.changes:
        raise CliError(f"{path}: the {source} connector ignored it ({result.ignored_reason})")
    ticket, reported = result.changes[0].ticket, result.changes[0].changes
    names = data.get("names") if source == "jira" and isinstance(data, dict) else None
    if isinstance(names, dict):  # Jira's own id -> display name map (REST ?expand=names), as the service
        named = {str(names[k]): v for k, v in ticket.custom_fields.items() if isinstance(names.get(k), str)}
        ticket = replace(ticket, custom_fields={**named, **ticket.custom_fields})
    return ticket, reported


def _unnamed_fields_note(ruleset: RuleSet, ticket: Ticket) -> str | None:
    """A Jira webhook body has no custom field names (the service asks Jira's API for them): say so when a
    rule reads a field by a name this ticket does not have, rather than let it look like a real miss."""
    from connectors.jira_normalize import display_name_fields

    if ticket.source != "jira":
        return None
    missing = [n for n in display_name_fields(ruleset.custom_fields("jira")) if n not in ticket.custom_fields]
    if not missing:
        return None
    return (
        f"note: rules read custom.{missing[0]}, which this ticket does not name: a Jira webhook body has no "
        'custom field names. Add Jira\'s "names" object to the file (GET /rest/api/2/issue/KEY?expand=names '
        "returns it) or name the field by id (custom.customfield_10010)."
    )


def _now(text: str | None, ticket: Ticket) -> datetime:
    """``--now``: ISO 8601 with a time zone; a plain date is midnight UTC (as in rules); a time without a zone
    is an error (docs/rules.md), never silently UTC."""
    if text is None:
        return ticket.updated
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise CliError(f"--now {text!r} is not an ISO 8601 time (e.g. 2026-11-30T09:00:00Z)") from None
    if parsed.tzinfo is not None:
        return parsed
    try:
        date.fromisoformat(value)
    except ValueError:
        raise CliError(f"--now {text!r} has no time zone; add one, e.g. {value}Z for UTC or {value}+01:00") from None
    return parsed.replace(tzinfo=UTC)


def _links_after(events: Sequence[PlannedEvent], links: Mapping[str, LinkState]) -> dict[str, LinkState]:
    """The incident states after ``events`` were sent (what the service would store)."""
    from kernel.lifecycle import next_state

    out = dict(links)
    for event in events:
        old = out.get(event.rule)
        if old is None or old.generation != event.generation:
            out[event.rule] = LinkState(
                rule=event.rule,
                dedup_key=event.dedup_key,
                routing_key=event.routing_key,
                state=next_state(event.action),
                generation=event.generation,
            )
        else:
            out[event.rule] = replace(old, state=next_state(event.action))
    return out


def verdict(result: RuleResult) -> str:
    if not result.applies:
        return "not applicable"
    return "matched" if result.matched else "no match"


def simulate(
    ruleset: RuleSet,
    ticket: Ticket,
    previous: Ticket | None,
    now: datetime,
    reported: tuple[FieldChange, ...] | None = None,
) -> tuple[list[RuleResult], list[PlannedEvent]]:
    """Evaluate (previous first, to derive incident states) and plan the events for ``ticket``; what
    changed is what the engine sees: the webhook's own change list (``reported``) plus the diff."""
    run = simulate_run(ruleset, ticket, previous, now, reported)
    return run.results, run.events


class SimulatedRun(NamedTuple):
    """One simulated update: verdicts, events, what changed and the incident links before and after it."""

    results: list[RuleResult]
    events: list[PlannedEvent]
    changed: tuple[FieldChange, ...]
    links_before: dict[str, LinkState]
    links_after: dict[str, LinkState]


def simulate_run(
    ruleset: RuleSet,
    ticket: Ticket,
    previous: Ticket | None,
    now: datetime,
    reported: tuple[FieldChange, ...] | None = None,
) -> SimulatedRun:
    """:func:`simulate`, keeping the links (the two-way part of ``rules test`` acts on them)."""
    from kernel.lifecycle import plan

    links: dict[str, LinkState] = {}
    if previous is not None:
        before = ruleset.evaluate(EvalContext(previous, None, (), min(now, previous.updated)))
        links = _links_after(plan(before, {}, previous), {})
    changed = merge_changes(reported, diff_tickets(previous, ticket))
    results = ruleset.evaluate(EvalContext(ticket, previous, changed, now))
    events = plan(results, links, ticket)
    return SimulatedRun(results, events, changed, links, _links_after(events, links))


def _pagerduty_event(path: str) -> IncidentEvent:
    """``--pagerduty-event``: a v3 webhook body, parsed as the service parses it (no signature check)."""
    from connectors.pagerduty_webhooks import parse_event
    from kernel.errors import WebhookRejected

    _read_json(path)  # a JSON problem is reported with its line and column
    try:
        parsed = parse_event(Path(path).read_bytes())
    except WebhookRejected as exc:
        raise CliError(f"{path}: not a PagerDuty v3 webhook the service would accept: {exc}") from None
    if not isinstance(parsed, IncidentEvent):
        raise CliError(f"{path}: PagerDuty event type {parsed.event_type!r} is accepted and ignored by the service")
    return parsed


def two_way_plans(
    ruleset: RuleSet, ticket: Ticket, run: SimulatedRun, now: datetime, event: IncidentEvent | None
) -> list[TwoWayPlan]:
    """What the rules write back for ``event`` (each linked rule), and what this update's group change does to
    each incident that was open before it."""
    plans: list[TwoWayPlan] = []
    if event is not None:
        for link in run.links_after.values():
            plans.append(ruleset.on_incident(IncidentContext(event, ticket, link, now)))
    for rule, before in run.links_before.items():
        link = run.links_after.get(rule, before)
        incident = event.incident_id if event is not None else f"<incident of {link.dedup_key}>"
        plan = ruleset.on_ticket_change(EvalContext(ticket, None, run.changed, now), link, incident)
        if plan.actions:
            plans.append(plan)
    return plans


def action_json(action: TicketUpdate | IncidentUpdate) -> dict[str, Any]:
    """An action as ``rules test`` shows it (and golden files hold it)."""
    body = asdict(action)
    if isinstance(action, TicketUpdate):
        body["ticket"] = action.ticket.key
        if action.transition is not None:
            body["transition"] = {
                "status": action.transition.status,
                "category": action.transition.category.value if action.transition.category else None,
                "fields": dict(action.transition.fields),
            }
    else:
        body["responder_policies"] = list(action.responder_policies)
    return {"kind": action.KIND, **body}


def event_bodies(events: Sequence[PlannedEvent], ticket: Ticket) -> list[dict[str, Any]]:
    """The exact Events API v2 bodies, routing keys masked."""
    from connectors.pagerduty import build_event, mask

    bodies = []
    for event in events:
        body = build_event(event, ticket)
        body["routing_key"] = mask(str(body.get("routing_key", "")))
        bodies.append(body)
    return bodies


def cmd_test(args: argparse.Namespace) -> int:
    if _missing(args.path, "test") or _unknown_source(args.source, "test"):
        return EXIT_USAGE
    missing_env: list[RuleFileError] = []
    ruleset = _load(args.path, args.allow_missing_env, None if args.allow_missing_env else missing_env, "test")
    if ruleset is None:
        return EXIT_MISMATCH  # rule-file errors: exit 1 in every command, as `rules check` (ticketpager/exitcodes.py)
    if missing_env:  # valid files, incomplete environment: exit 2 with one notice, as `rules check`
        return EXIT_USAGE
    try:
        ticket, reported = _ticket(args.ticket, args.source)
        previous = _ticket(args.previous, args.source)[0] if args.previous else None
        now = _now(args.now, ticket)
        incident_event = _pagerduty_event(args.pagerduty_event) if args.pagerduty_event else None
        expected = _read_json(args.expect) if args.expect else None
    except CliError as exc:
        print(f"ticketpager rules test: {exc}", file=sys.stderr)
        return EXIT_USAGE
    note = _unnamed_fields_note(ruleset, ticket)
    if note:
        print(note, file=sys.stderr)
    run = simulate_run(ruleset, ticket, previous, now, reported)
    results, events = run.results, run.events
    plans = two_way_plans(ruleset, ticket, run, now, incident_event)
    actual: dict[str, Any] = {
        "verdicts": {r.rule: verdict(r) for r in results},
        "events": event_bodies(events, ticket),
    }
    if incident_event is not None or any(p.actions for p in plans):  # older golden files have no such key
        actual["write_back"] = [action_json(a) for p in plans for a in p.actions]
    if args.json:
        print(json.dumps(actual, indent=2, ensure_ascii=False))  # verdicts in file order, as the rules run
    else:
        print(f"ticket {ticket.source}:{ticket.key} at {now.isoformat()} — rules {ruleset.digest}")
        for result in results:
            print(f"  {result.rule}: {verdict(result).upper()}")
            for line in result.explanation:
                print(f"      {line}")
            if result.matched:
                for line in result.problems:  # `rules test` always renders matched triggers, to show them
                    print(f"      {line}")
            if result.applies and (result.acknowledge or result.resolve):
                flags = [
                    name
                    for name, on in (("acknowledge_when", result.acknowledge), ("resolve_when", result.resolve))
                    if on
                ]
                print(f"      {' and '.join(flags)} hold{'s' if len(flags) == 1 else ''}")
        print(f"events ({len(events)}):" if events else "events: none")
        for event, body in zip(events, actual["events"], strict=True):
            print(f"  # {event.rule}: {event.action.value} ({event.reason})")
            print("  " + json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False).replace("\n", "\n  "))
        _print_write_back(plans, incident_event, run)
    if expected is None:
        return EXIT_OK
    want = json.dumps(expected, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    got = json.dumps(actual, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    if want == got:
        print(f"OK: matches {args.expect}")
        return EXIT_OK
    print(f"MISMATCH against {args.expect}:", file=sys.stderr)
    for line in difflib.unified_diff(want, got, fromfile=args.expect, tofile="actual", lineterm=""):
        print(line, file=sys.stderr)
    return EXIT_MISMATCH


def _print_write_back(plans: Sequence[TwoWayPlan], event: IncidentEvent | None, run: SimulatedRun) -> None:
    """The two-way part of ``rules test``: each rule's decision, why, and the actions."""
    if event is not None and not run.links_after:
        print(f"write-back: none ({event.event_type.value}: no rule paged this ticket, so no incident is linked)")
        return
    if not plans:
        return
    count = sum(len(p.actions) for p in plans)
    print(f"write-back ({count}):" if count else "write-back: none")
    for plan in plans:
        print(f"  # {plan.rule}")
        for line in (*plan.explanation, *plan.problems):
            print(f"      {line}")
        for action in plan.actions:
            text = json.dumps(action_json(action), indent=2, sort_keys=True, ensure_ascii=False)
            print("  " + text.replace("\n", "\n  "))


# ------------------------------------------------------------------------------------------------- schema


def cmd_schema(args: argparse.Namespace) -> int:
    from rules.schema import build_schema

    print(json.dumps(build_schema(), indent=2, sort_keys=True))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- backtest


#: someone is waiting at a terminal: a vendor that is down is reported after a few seconds, not two minutes
#: (a 429's Retry-After is still honoured, shown as a wait)
BACKTEST_RETRY = RetryPolicy(max_attempts=3, max_total_seconds=60.0)
#: how far back ``rules backtest --since`` reads: a year of tickets answers "what would these rules have paged";
#: longer reads a vendor's whole history at its rate limit (Zendesk: 10 pages a minute)
MAX_BACKTEST_SINCE = timedelta(days=365)
MAX_BACKTEST_SINCE_TEXT = "365d, the furthest back a backtest reads"


class Replay:
    """What a rule set would have sent for a stream of ticket versions, oldest first: the core of every
    backtest (``rules backtest`` over a vendor's API, the console's over stored changes). Pure: no writes."""

    def __init__(self, ruleset: RuleSet, now: datetime) -> None:
        self.ruleset = ruleset
        self.now = now
        self.seen: dict[str, Ticket] = {}
        self.links: dict[str, dict[str, LinkState]] = {}
        self.pages: dict[str, int] = {name: 0 for name in ruleset.names}
        self.paged: set[str] = set()  # ticket ids that would have paged (a trigger)
        self.versions = 0

    def feed(self, ticket: Ticket, reported: tuple[FieldChange, ...] | None) -> list[PlannedEvent] | None:
        """The events this version would have caused; None for a version not newer than the last one seen."""
        from kernel.lifecycle import plan

        previous = self.seen.get(ticket.id)
        if previous is not None and ticket.updated <= previous.updated:
            return None
        self.versions += 1
        changes = reported if reported is not None else diff_tickets(previous, ticket)
        results = self.ruleset.evaluate(EvalContext(ticket, previous, changes, max(self.now, ticket.updated)))
        events = plan(results, self.links.get(ticket.id, {}), ticket)
        self.links[ticket.id] = _links_after(events, self.links.get(ticket.id, {}))
        self.seen[ticket.id] = ticket
        for event in events:
            if event.action.value == "trigger":
                self.pages[event.rule] += 1
                self.paged.add(ticket.id)
        return events


def cmd_backtest(args: argparse.Namespace) -> int:
    """Read recent tickets through the real connector and report what would have paged. No writes."""
    from connectors import connector_class
    from kernel.clock import SystemClock
    from kernel.errors import TicketpagerError
    from ticketpager.settings import Settings

    try:
        since = parse_duration(args.since, MAX_BACKTEST_SINCE, MAX_BACKTEST_SINCE_TEXT)
    except OperatorArgError as exc:
        print(f"ticketpager rules backtest: --since: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if _missing(args.path, "backtest") or _unknown_source(args.source, "backtest"):
        return EXIT_USAGE
    ruleset = _load(args.path, allow_missing_env=True, check_key_format=False)  # sends nothing: keys not needed
    if ruleset is None:
        return EXIT_MISMATCH
    clock = SystemClock()
    progress = progress_for(sys.stderr, args.source, clock)  # only on a terminal: pages, tickets, waits
    try:
        settings = Settings().connector(args.source)
        connector = connector_class(args.source)(settings, clock=ReportingClock(clock, progress), retry=BACKTEST_RETRY)
    except KeyError:
        print(f"ticketpager rules backtest: unknown source {args.source!r}", file=sys.stderr)
        return EXIT_USAGE
    now = clock.now()
    replay = Replay(ruleset, now)
    seen, pages = replay.seen, replay.pages
    try:
        for page in connector.poll(connector.start_cursor(now - since)):
            progress.page(tickets=len(seen) + len({c.ticket.id for c in page.changes} - seen.keys()))
            for change in page.changes:
                ticket = change.ticket
                events = replay.feed(ticket, change.changes)
                if events is None:
                    continue
                if events:
                    progress.done()  # the report line replaces the progress line; the next page redraws it
                for event in events:
                    severity = event.trigger.severity if event.trigger else ""
                    print(
                        f"{ticket.updated.isoformat()}  {ticket.key:<14} {event.rule:<28} {event.action.value:<11} "
                        f"{severity:<8} {event.reason}"
                    )
                if replay.versions >= args.limit:
                    break
            if replay.versions >= args.limit:
                break
    except TicketpagerError as exc:
        progress.done()
        print(f"ticketpager rules backtest: {str(exc).rstrip('.')}.", file=sys.stderr)  # one sentence
        # without API credentials the connector says which settings to set: configuration (exit 2, as `poll
        # --once` with nothing to poll), not a vendor failing (1)
        return EXIT_MISMATCH if connector.can_poll else EXIT_USAGE
    progress.done()
    print(
        f"{replay.versions} ticket versions from {args.source} since {(now - since).isoformat()} "
        f"({len(seen)} tickets); would have paged:"
    )
    for name, count in pages.items():
        print(f"  {name}: {count}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ticketpager.rules_cli check PATH`` (or ``... rules check PATH``, as under ``ticketpager``)."""
    parser = argparse.ArgumentParser(prog="ticketpager", description=RULES_DESCRIPTION)
    register(parser.add_subparsers(dest="command", required=True))
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] != ["rules"]:
        words.insert(0, "rules")
    args = parser.parse_args(words)
    from kernel.errors import ConfigError

    try:
        result: int = args.func(args)
    except ConfigError as exc:  # e.g. TICKETPAGER_SECRETS_DIR names no directory: configuration, exit 2
        print(f"ticketpager: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return result


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "Replay",
    "action_json",
    "check_policies_online",
    "event_bodies",
    "main",
    "register",
    "simulate",
    "simulate_run",
    "two_way_plans",
    "verdict",
]
