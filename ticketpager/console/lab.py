"""The rules playground and the stored-ticket backtest: evaluate an edited rule file, write nothing.

Both load the pasted YAML from a temporary directory with the real loader (so errors read ``file:line:col``,
with the file called ``playground.yaml``), resolve ``${VAR}`` routing keys as ``serve`` does but accept unset
ones (nothing is sent), and show every routing key masked. The evaluation is ``ticketpager rules test``'s
(:func:`ticketpager.rules_cli.simulate`) and the backtest's (:class:`ticketpager.rules_cli.Replay`).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from kernel import jsonutil
from kernel.model import Ticket, TicketChange
from kernel.redact import redact
from rules import RuleFileError, RuleFileErrors, RuleSet, load_rules
from sync.repos import console as q
from ticketpager.rules_cli import Replay, event_bodies, simulate, verdict

#: the pasted rule text's name in error messages
PLAYGROUND_FILE = "playground.yaml"
#: a backtest reads at most this many stored versions (it runs inside a web request)
BACKTEST_MAX_VERSIONS = 50_000


class LabError(Exception):
    """Input the playground cannot use (shown to the user as is: it holds no secret)."""


def load_text(text: str, env: Mapping[str, str] | None) -> tuple[RuleSet | None, list[str], list[str]]:
    """(rule set or None, errors, warnings) for pasted YAML; errors name ``playground.yaml:line:col``."""
    warnings: list[RuleFileError] = []
    with tempfile.TemporaryDirectory(prefix="ticketpager-playground-") as tmp:
        path = Path(tmp) / PLAYGROUND_FILE
        path.write_text(text, encoding="utf-8")
        try:
            ruleset = load_rules(path, env, env_warnings=warnings)
        except RuleFileErrors as exc:
            return None, [_short(e, tmp) for e in exc.errors], [_short(w, tmp) for w in warnings]
    return ruleset, [], [_short(w, tmp) for w in warnings]


_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\n]*)?\}")


def shown_rule_text(text: str) -> str:
    """A rule file as the console shows it: redacted (a routing key written in the file is a secret), but
    ``${VAR}`` references kept: they name a variable, not its value, and the playground needs them back."""
    found: list[str] = []

    def hold(match: re.Match[str]) -> str:
        found.append(match.group(0))
        return f"\n\x01{len(found) - 1}\x02"  # a line break: never read as the value of `routing_key:`

    shown = redact(_VARIABLE.sub(hold, text.replace("\x01", "")))
    return re.sub("\n\x01(\\d+)\x02", lambda m: found[int(m.group(1))], shown)


def _short(error: RuleFileError, directory: str) -> str:
    where = error.path.replace(directory + "/", "")
    return redact(f"{where}:{error.line}:{error.col}: {error.message}")


def parse_ticket(text: str) -> Ticket:
    """A normalized ticket (``Ticket.to_json``) from pasted JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabError(f"ticket JSON, line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise LabError("the ticket must be a JSON object (a normalized ticket, as stored)")
    try:
        return Ticket.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise LabError(f"not a normalized ticket: {type(exc).__name__}: {exc}") from None


def ticket_json(snapshot: str | None) -> str:
    """A stored snapshot, pretty-printed for the ticket box (``raw`` dropped: long, and rules rarely need it)."""
    if not snapshot:
        return ""
    data = jsonutil.loads(snapshot)
    data.pop("raw", None)
    return redact(json.dumps(data, indent=2, ensure_ascii=False))


@dataclass
class Evaluation:
    rules: list[dict[str, Any]] = field(default_factory=list)  # rule, verdict, why, flags
    events: list[dict[str, Any]] = field(default_factory=list)  # rule, action, reason, body (key masked)
    now: datetime | None = None


def evaluate(ruleset: RuleSet, ticket: Ticket, now: datetime | None = None) -> Evaluation:
    """Every rule's verdict with its explanation and the exact events, as ``ticketpager rules test``."""
    when = now or ticket.updated
    results, events = simulate(ruleset, ticket, None, when)
    bodies = event_bodies(events, ticket)
    out = Evaluation(now=when)
    for result in results:
        flags = [n for n, on in (("acknowledge_when", result.acknowledge), ("resolve_when", result.resolve)) if on]
        out.rules.append(
            {
                "rule": result.rule,
                "verdict": verdict(result),
                "why": [redact(line) for line in result.explanation],
                "flags": flags if result.applies else [],
            }
        )
    for event, body in zip(events, bodies, strict=True):
        out.events.append(
            {
                "rule": event.rule,
                "action": event.action.value,
                "reason": event.reason,
                "body": redact(json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False)),
            }
        )
    return out


@dataclass(frozen=True)
class Backtest:
    source: str
    days: int
    versions: int
    tickets: int
    would_page: list[str]  # ticket keys
    not_paged_today: list[str]  # of those, the ones the live rules did not page
    pages_by_rule: dict[str, int]
    truncated: bool


def backtest(
    engine: Engine, ruleset: RuleSet, source: str, days: int, now: datetime, connection: str | None = None
) -> Backtest:
    """Replay the stored changes of connection ``connection`` (of system ``source``; the default connection,
    named after it, when ``None``) from the last ``days`` through ``ruleset``, oldest first, and
    compare with what the live rules paged in the same window. Reads pages of 1000 changes by keyset."""
    since = now - timedelta(days=days)
    connection = connection or source
    replay = Replay(ruleset, now)
    keys: dict[str, str] = {}
    after: int | None = None
    truncated = False
    with engine.connect() as conn:
        while True:
            page = q.stored_versions(conn, source, since, after, connection=connection)
            if not page:
                break
            for change_id, payload in page:
                after = change_id
                change = TicketChange.from_json(jsonutil.loads(payload))
                keys[change.ticket.id] = change.ticket.key
                replay.feed(change.ticket, change.changes)
            if replay.versions >= BACKTEST_MAX_VERSIONS:
                truncated = True
                break
        live = q.paged_tickets(conn, source, since, connection=connection)
    would = sorted(replay.paged)
    return Backtest(
        source=connection,
        days=days,
        versions=replay.versions,
        tickets=len(replay.seen),
        would_page=[keys[t] for t in would],
        not_paged_today=[keys[t] for t in would if t not in live],
        pages_by_rule=dict(replay.pages),
        truncated=truncated,
    )
