"""The rules playground and the stored-ticket backtest: evaluate an edited rule file, write nothing.

Both run the real loader and evaluation (``ticketpager rules test``'s and the backtest's) in a child process with
limits (:mod:`ticketpager.labrun`): pasted rules are code any console user may submit, and a regex that
backtracks or a template that grows a string must cost that child its CPU or memory limit, not the service its
webhooks. Errors read ``playground.yaml:line:col``. ``${VAR}`` routing keys resolve from the variables the live
rule files use, and only those (another name reads as unset: the playground must not read the server's
environment), every routing key shown masked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

from prometheus_client import Counter
from sqlalchemy import Engine

from kernel import fields, jsonutil
from kernel.redact import redact
from sync.metrics import METRICS
from sync.repos import console as q

log = logging.getLogger("ticketpager.console")

#: a backtest reads at most this many stored versions (it runs inside a web request)
BACKTEST_MAX_VERSIONS = 50_000


@dataclass(frozen=True)
class Limits:
    """What one evaluation may use: its child's address space and CPU time, and the wall-clock time after which
    the parent kills it (a child waiting on nothing still ends)."""

    memory_bytes: int
    cpu_seconds: int
    wall_seconds: float


#: one ticket through pasted rules: well under a second when the rules are sane
PLAYGROUND_LIMITS = Limits(memory_bytes=384 * 2**20, cpu_seconds=10, wall_seconds=20.0)
#: up to BACKTEST_MAX_VERSIONS stored versions through pasted rules
BACKTEST_LIMITS = Limits(memory_bytes=384 * 2**20, cpu_seconds=60, wall_seconds=120.0)
#: evaluations at once per process (each a child of up to its memory limit); another waits this long, then is told
LAB_CONCURRENCY = 1
LAB_QUEUE_SECONDS = 10.0
#: the parent's environment variables a child keeps: enough to start Python and import ticketpager, no secret
CHILD_ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")

LAB_RUNS = Counter(
    "ticketpager_console_lab_runs_total",
    "Console playground and backtest evaluations by job and outcome",
    ["job", "outcome"],
    registry=METRICS.registry,
)
OUTCOMES = ("ok", "invalid", "cpu", "memory", "timeout", "busy", "failed")
for _job in ("playground", "backtest"):
    for _outcome in OUTCOMES:
        LAB_RUNS.labels(_job, _outcome)  # at zero from the start

_slots = threading.BoundedSemaphore(LAB_CONCURRENCY)


_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\n]*)?\}")
_VARIABLE_NAME = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def playground_env(live_texts: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the playground may resolve: those the live rule files name in a ``${VAR}``, from
    ``environ``. Any other name reads as unset there, so pasted rules cannot read (even masked, even whether it
    is set) a secret of the server's environment."""
    names = {name for text in live_texts for name in _VARIABLE_NAME.findall(text)}
    return {name: environ[name] for name in sorted(names) if name in environ}


def shown_rule_text(text: str) -> str:
    """A rule file as the console shows it: redacted (a routing key written in the file is a secret), but
    ``${VAR}`` references kept: they name a variable, not its value, and the playground needs them back."""
    found: list[str] = []

    def hold(match: re.Match[str]) -> str:
        found.append(match.group(0))
        return f"\n\x01{len(found) - 1}\x02"  # a line break: never read as the value of `routing_key:`

    shown = redact(_VARIABLE.sub(hold, text.replace("\x01", "")))
    return re.sub("\n\x01(\\d+)\x02", lambda m: found[int(m.group(1))], shown)


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


def vocabulary() -> dict[str, Any]:
    """This process's rule vocabulary (:mod:`kernel.fields`), for the child to check pasted rules against."""
    return {
        "sources": {name: sorted(attributes) for name, attributes in fields.SOURCE_ATTRIBUTES.items()},
        "raw_payloads": {
            name: {
                "keys": sorted(raw.keys),
                "described": raw.described,
                "custom_prefixes": list(raw.custom_prefixes),
                "wrappers": sorted(raw.wrappers),
                "not_there": dict(raw.not_there),
            }
            for name, raw in fields.RAW_PAYLOADS.items()
        },
        "connections": dict(fields.CONNECTIONS),
        "vocabularies": {
            name: {
                "custom_field_names": sorted(v.custom_field_names),
                "status_categories": None if v.status_categories is None else sorted(v.status_categories),
            }
            for name, v in fields.VOCABULARIES.items()
        },
    }


def _redacted(value: Any) -> Any:
    """``value`` with every string redacted here: the child knows none of the service's secrets."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


class _Stopped(Exception):
    """The child ended without an answer: ``outcome`` (a :data:`OUTCOMES` value) and what to tell the user."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class _Child:
    """One ``python -m ticketpager.labrun`` under ``limits``, killed at its wall-clock deadline, sent ``header``
    (the job, the rules, the variables and this process's rule vocabulary) as its first line."""

    def __init__(self, limits: Limits, header: Mapping[str, Any]) -> None:
        self.limits = limits
        self.killed = threading.Event()
        env = {name: os.environ[name] for name in CHILD_ENVIRONMENT if name in os.environ}
        command = [sys.executable, "-m", "ticketpager.labrun", "--memory-bytes", str(limits.memory_bytes)]
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [*command, "--cpu-seconds", str(limits.cpu_seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            encoding="utf-8",
        )
        self._timer = threading.Timer(limits.wall_seconds, self._kill)
        self._timer.daemon = True
        self._timer.start()
        self.send({**header, "vocabulary": vocabulary()})

    def _kill(self) -> None:
        self.killed.set()
        self.proc.kill()

    @property
    def stdin(self) -> IO[str]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def send(self, document: Mapping[str, Any]) -> None:
        self.write(json.dumps(document))

    def write(self, line: str) -> None:
        """One line to the child; a child that ended meanwhile is told by :meth:`answer`, not here."""
        try:
            self.stdin.write(line + "\n")
            self.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def answer(self) -> dict[str, Any]:
        """The child's next line, or :class:`_Stopped` saying why there is none."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line:
            document: dict[str, Any] = _redacted(json.loads(line))
            if document.get("error") == "memory":
                raise _Stopped("memory", self._memory())
            if "error" in document:
                raise _Stopped("failed", "the evaluation failed: " + str(document["error"]))
            return document
        self.close()
        if self.killed.is_set():
            raise _Stopped("timeout", f"stopped after {self.limits.wall_seconds:g} s: {HINT}")
        if self.proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            raise _Stopped("cpu", f"stopped after {self.limits.cpu_seconds} s of CPU: {HINT}")
        if self.proc.returncode in (-signal.SIGSEGV, -signal.SIGABRT):  # an allocation in C code past the limit
            raise _Stopped("memory", self._memory())
        raise _Stopped("failed", f"the evaluation ended without an answer (exit status {self.proc.returncode})")

    def _memory(self) -> str:
        return f"stopped: it needed more than {self.limits.memory_bytes // 2**20} MiB of memory: {HINT}"

    def close(self) -> None:
        """End the child (if it still runs) and reap it."""
        self._timer.cancel()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except (BrokenPipeError, OSError):
                pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


HINT = (
    "look for a regex with nested repeats such as (a+)+, a template that repeats or concatenates text, "
    "or loops over ticket text inside loops"
)


class _Slot:
    """One of :data:`LAB_CONCURRENCY` evaluations at once, waited for at most :data:`LAB_QUEUE_SECONDS`."""

    def __enter__(self) -> None:
        if not _slots.acquire(timeout=LAB_QUEUE_SECONDS):
            raise _Stopped("busy", "another evaluation is running: try again in a moment")

    def __exit__(self, *exc: object) -> None:
        _slots.release()


def _finish(job: str, who: str, outcome: str, message: str = "") -> None:
    LAB_RUNS.labels(job, outcome).inc()
    if outcome not in ("ok", "invalid"):
        log.warning("console: %s by %s: %s", job, who, message or outcome)


def playground(
    rules_text: str, ticket_text: str, env: Mapping[str, str], *, who: str = "", limits: Limits | None = None
) -> tuple[Evaluation | None, list[str], list[str]]:
    """(evaluation or None, errors, warnings) of pasted rules for one pasted ticket, in a child process."""
    try:
        with _Slot():
            header = {"job": "playground", "rules": rules_text, "ticket": ticket_text, "env": dict(env)}
            child = _Child(limits or PLAYGROUND_LIMITS, header)
            try:
                answer = child.answer()
            finally:
                child.close()
    except _Stopped as stop:
        _finish("playground", who, stop.outcome, str(stop))
        return None, [str(stop)], []
    errors, warnings = list(answer.get("errors", [])), list(answer.get("warnings", []))
    result = answer.get("result")
    _finish("playground", who, "invalid" if errors else "ok")
    if result is None:
        return None, errors, warnings
    evaluation = Evaluation(rules=result["rules"], events=result["events"], now=datetime.fromisoformat(result["now"]))
    return evaluation, errors, warnings


def _stored_payloads(engine: Engine, source: str, connection: str, since: datetime) -> Iterator[str]:
    """The stored change payloads of ``connection`` since ``since``, oldest first, by keyset pages of 1000; at
    most :data:`BACKTEST_MAX_VERSIONS` (then one ``""`` says more were left)."""
    after: int | None = None
    sent = 0
    with engine.connect() as conn:
        while True:
            page = q.stored_versions(conn, source, since, after, connection=connection)
            if not page:
                return
            for change_id, payload in page:
                if sent >= BACKTEST_MAX_VERSIONS:
                    yield ""
                    return
                after = change_id
                sent += 1
                yield payload if "\n" not in payload else json.dumps(jsonutil.loads(payload))


def backtest(
    engine: Engine,
    rules_text: str,
    env: Mapping[str, str],
    source: str,
    days: int,
    now: datetime,
    connection: str | None = None,
    *,
    who: str = "",
    limits: Limits | None = None,
) -> tuple[Backtest | None, list[str], list[str]]:
    """Replay the stored changes of connection ``connection`` (of system ``source``; the default connection,
    named after it, when ``None``) from the last ``days`` through pasted rules, oldest first, in a child process,
    and compare with what the live rules paged in the same window."""
    since = now - timedelta(days=days)
    connection = connection or source
    truncated = False
    try:
        with _Slot():
            header = {"job": "backtest", "rules": rules_text, "env": dict(env), "now": now.isoformat()}
            child = _Child(limits or BACKTEST_LIMITS, header)
            try:
                first = child.answer()
                if not first.get("ready"):
                    _finish("backtest", who, "invalid")
                    return None, list(first.get("errors", [])), list(first.get("warnings", []))
                for payload in _stored_payloads(engine, source, connection, since):
                    if not payload:
                        truncated = True
                        break
                    if child.proc.poll() is not None or child.killed.is_set():
                        break
                    child.write(payload)
                child.stdin.close()
                answer = child.answer()
            finally:
                child.close()
    except _Stopped as stop:
        _finish("backtest", who, stop.outcome, str(stop))
        return None, [str(stop)], []
    with engine.connect() as conn:
        live = q.paged_tickets(conn, source, since, connection=connection)
    would = [(str(ticket_id), str(key)) for ticket_id, key in answer["would_page"]]
    _finish("backtest", who, "ok")
    result = Backtest(
        source=connection,
        days=days,
        versions=int(answer["versions"]),
        tickets=int(answer["tickets"]),
        would_page=[key for _, key in would],
        not_paged_today=[key for ticket_id, key in would if ticket_id not in live],
        pages_by_rule={str(k): int(v) for k, v in answer["pages_by_rule"].items()},
        truncated=truncated,
    )
    return result, [], list(first.get("warnings", []))
