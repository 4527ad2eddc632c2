"""The console's rules playground and backtest, run in a child process with limits: ``python -m ticketpager.labrun``.

Pasted rules are code. A regex that backtracks (``(a+)+$`` on a ticket title), a template that multiplies a
string or nests loops over ticket text can take minutes of CPU or gigabytes of memory; in the service's own
process that holds the interpreter lock (every webhook waits) or gets the pod killed for its memory, and any
console user, read-only included, may paste rules. Here they run in a process of their own, under an
address-space and a CPU-time limit, at a lower scheduling priority; the parent (:mod:`ticketpager.console.lab`)
also kills it at a wall-clock deadline. The child reads no setting, secret or database: what it needs comes on
stdin, and its environment is the parent's minus everything else.

Protocol, one JSON document per line. Stdin: a header ``{"job": "playground" | "backtest", "rules", "env", …}``;
for a backtest, after the child's first line, one stored change payload per line until EOF. Stdout: for a
playground, one result line; for a backtest, a first line (the rule file's errors, or ``{"ready": true}``), then
one result line. Any failure is a line ``{"error": "…"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

#: the pasted rule text's name in error messages
PLAYGROUND_FILE = "playground.yaml"


class LabError(Exception):
    """Input the playground cannot use (shown to the user as is: it holds no secret)."""


def limit(memory_bytes: int, cpu_seconds: int) -> None:
    """This process's limits: its address space (an allocation past it raises ``MemoryError``), its CPU time
    (``SIGXCPU`` ends it), and a lower priority than the service's workers."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    try:
        os.nice(10)
    except OSError:  # pragma: no cover - not permitted here: the limits still hold
        pass


def load_text(text: str, env: Mapping[str, str]) -> tuple[Any, list[str], list[str]]:
    """(rule set or None, errors, warnings) for pasted YAML; errors name ``playground.yaml:line:col``; an unset
    ``${VAR}`` is a warning (nothing is sent)."""
    from kernel.redact import redact
    from rules import RuleFileError, RuleFileErrors, load_rules

    def short(error: RuleFileError, directory: str) -> str:
        where = error.path.replace(directory + "/", "")
        return redact(f"{where}:{error.line}:{error.col}: {error.message}")

    warnings: list[RuleFileError] = []
    with tempfile.TemporaryDirectory(prefix="ticketpager-playground-") as tmp:
        path = Path(tmp) / PLAYGROUND_FILE
        path.write_text(text, encoding="utf-8")
        try:
            ruleset = load_rules(path, env, env_warnings=warnings, warnings=warnings)
        except RuleFileErrors as exc:
            return None, [short(e, tmp) for e in exc.errors], [short(w, tmp) for w in warnings]
    return ruleset, [], [short(w, tmp) for w in warnings]


def parse_ticket(text: str) -> Any:
    """A normalized ticket (``Ticket.to_json``) from pasted JSON."""
    from kernel.model import Ticket

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


def evaluate(ruleset: Any, ticket: Any) -> dict[str, Any]:
    """Every rule's verdict with its explanation and the exact events (routing keys masked), as ``ticketpager
    rules test``, at the ticket's last update."""
    from kernel.redact import redact
    from ticketpager.rules_cli import event_bodies, simulate, verdict

    when: datetime = ticket.updated
    results, events = simulate(ruleset, ticket, None, when)
    bodies = event_bodies(events, ticket)
    rules = []
    for result in results:
        flags = [n for n, on in (("acknowledge_when", result.acknowledge), ("resolve_when", result.resolve)) if on]
        rules.append(
            {
                "rule": result.rule,
                "verdict": verdict(result),
                "why": [redact(line) for line in result.explanation],
                "flags": flags if result.applies else [],
            }
        )
    shown = [
        {
            "rule": event.rule,
            "action": event.action.value,
            "reason": event.reason,
            "body": redact(json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False)),
        }
        for event, body in zip(events, bodies, strict=True)
    ]
    return {"now": when.isoformat(), "rules": rules, "events": shown}


def declare(vocabulary: Mapping[str, Any]) -> None:
    """The parent's rule vocabulary (:mod:`kernel.fields`: its sources with their attributes, its connections and
    what their settings declare), so pasted rules are checked as the service checks its own, plug-ins included."""
    from kernel import fields

    payloads = vocabulary.get("raw_payloads", {})
    for name, attributes in vocabulary["sources"].items():
        raw = payloads.get(name)
        fields.declare_source(
            name,
            frozenset(attributes),
            None
            if raw is None
            else fields.RawPayload(
                keys=frozenset(raw["keys"]),
                described=str(raw["described"]),
                custom_prefixes=tuple(raw["custom_prefixes"]),
                wrappers=frozenset(raw["wrappers"]),
                not_there=dict(raw["not_there"]),
            ),
        )
    fields.declare_connections(
        dict(vocabulary["connections"]),
        {
            name: fields.ConnectionVocabulary(
                custom_field_names=frozenset(v["custom_field_names"]),
                status_categories=None if v["status_categories"] is None else frozenset(v["status_categories"]),
            )
            for name, v in vocabulary["vocabularies"].items()
        },
    )


def playground(header: Mapping[str, Any]) -> dict[str, Any]:
    ruleset, errors, warnings = load_text(str(header["rules"]), dict(header["env"]))
    if ruleset is None:
        return {"errors": errors, "warnings": warnings}
    try:
        ticket = parse_ticket(str(header["ticket"]))
    except LabError as exc:
        return {"errors": [str(exc)], "warnings": warnings}
    return {"errors": [], "warnings": warnings, "result": evaluate(ruleset, ticket)}


def backtest(ruleset: Any, now: datetime, payloads: Iterable[str]) -> dict[str, Any]:
    """Replay stored change payloads (oldest first) through ``ruleset``: what it would have paged."""
    from kernel import jsonutil
    from kernel.model import TicketChange
    from ticketpager.rules_cli import Replay

    replay = Replay(ruleset, now)
    keys: dict[str, str] = {}
    for line in payloads:
        if not line.strip():
            continue
        change = TicketChange.from_json(jsonutil.loads(line))
        keys[change.ticket.id] = change.ticket.key
        replay.feed(change.ticket, change.changes)
    return {
        "versions": replay.versions,
        "tickets": len(replay.seen),
        "would_page": [[t, keys[t]] for t in sorted(replay.paged)],
        "pages_by_rule": dict(replay.pages),
    }


def _say(out: IO[str], document: Mapping[str, Any]) -> None:
    out.write(json.dumps(document) + "\n")
    out.flush()


def run(stdin: IO[str], stdout: IO[str]) -> None:
    header = json.loads(stdin.readline())
    declare(header["vocabulary"])
    if header.get("job") == "playground":
        _say(stdout, playground(header))
        return
    ruleset, errors, warnings = load_text(str(header["rules"]), dict(header["env"]))
    if ruleset is None:
        _say(stdout, {"errors": errors, "warnings": warnings})
        return
    _say(stdout, {"ready": True, "warnings": warnings})
    _say(stdout, backtest(ruleset, datetime.fromisoformat(header["now"]), stdin))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    args = parser.parse_args(argv)
    limit(args.memory_bytes, args.cpu_seconds)
    try:
        run(sys.stdin, sys.stdout)
    except MemoryError:
        _say(sys.stdout, {"error": "memory"})
        return 1
    except RecursionError:
        _say(sys.stdout, {"error": "nested too deeply (a ticket or a rule nested hundreds of levels)"})
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line, never a traceback on a page
        _say(sys.stdout, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
