"""The console's Silences page: the current and recently ended silences, a form to add one, expire with a
confirmation. The same rules as ``ticketpager silence``: matchers are ``--match`` lines validated by the rules
language (:mod:`rules.silence_match`, its messages shown next to the form), the SQL is
:mod:`sync.repos.silences`, and each add or expire is written to the audit log in the same transaction.
Adding and expiring need the full role; a read-only login sees the list only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from kernel.redact import redact
from rules.operators import OperatorArgError, parse_duration
from rules.silence_match import MATCH_SYNTAX, MatcherErrors, parse_match
from sync.repos import audit
from sync.repos.silences import (
    MAX_SILENCE,
    Silence,
    SilenceError,
    UnknownSilence,
    add_silence,
    expire_silence,
    get_silence,
    too_long,
)
from sync.repos.silences import silences_since as recent
from ticketpager.console.auth import Session
from ticketpager.console.params import int_param as _int

if TYPE_CHECKING:
    from ticketpager.console.web import Console

log = logging.getLogger("ticketpager.console")

#: ended silences stay on the page this long (older ones: ``ticketpager silence list --all``)
RECENT = timedelta(days=7)
#: rows the page shows at most (silences are few; this bounds a runaway script's leftovers)
LIST_LIMIT = 200
MAX_MATCHER_LINES = 50
READ_ONLY = "read-only login: adding or expiring silences needs the full role"


@dataclass
class SilenceForm:
    """What the add form sent, kept to show it again with the problems found."""

    matchers: str = ""
    duration: str = ""
    ends: str = ""
    comment: str = ""
    problems: dict[str, list[str]] = field(default_factory=dict)

    def problem(self, name: str, message: str) -> None:
        self.problems.setdefault(name, []).append(message)


@dataclass(frozen=True)
class NewSilence:
    matchers: dict[str, Any]
    ends: datetime
    comment: str


def parse_form(form: FormData, now: datetime) -> tuple[SilenceForm, NewSilence | None]:
    """The add form read and checked: matcher lines by the rules language, a duration *or* an end time.
    ``None`` (and the problems, per field) when anything is wrong."""
    shown = SilenceForm(
        matchers=_text(form, "matchers")[:20_000],
        duration=_text(form, "duration").strip()[:50],
        ends=_text(form, "ends").strip()[:50],
        comment=_text(form, "comment")[:10_000],
    )
    lines = [line.strip() for line in shown.matchers.splitlines() if line.strip()]
    matchers: dict[str, Any] | None = None
    if not lines:
        shown.problem("matchers", f"give at least one matcher, one per line ({MATCH_SYNTAX})")
    elif len(lines) > MAX_MATCHER_LINES:
        shown.problem("matchers", f"at most {MAX_MATCHER_LINES} matcher lines")
    else:
        try:
            matchers = parse_match(lines)
        except MatcherErrors as exc:
            for message in exc.problems:
                shown.problem("matchers", message.removeprefix("--match "))
    ends = _window(shown, now)
    if not shown.comment.strip():
        shown.problem("comment", "say why (shown with the silence and in every ticket it holds)")
    if shown.problems or matchers is None or ends is None:
        return shown, None
    return shown, NewSilence(matchers, ends, shown.comment)


def _window(shown: SilenceForm, now: datetime) -> datetime | None:
    if bool(shown.duration) == bool(shown.ends):
        shown.problem("duration", "give a duration (e.g. 90m, 2h, 1d) or an end time, not both")
        return None
    if shown.duration:
        try:
            length = parse_duration(shown.duration)
        except OperatorArgError as exc:
            shown.problem("duration", str(exc))
            return None
        if length <= timedelta(0):
            shown.problem("duration", "the duration must be above zero")
            return None
        if length > MAX_SILENCE:
            shown.problem("duration", too_long(length))
            return None
        return now + length
    try:
        ends = datetime.fromisoformat(shown.ends.replace("Z", "+00:00"))
        ends = ends.replace(tzinfo=UTC) if ends.tzinfo is None else ends.astimezone(UTC)  # the field says UTC
    except (ValueError, OverflowError):  # OverflowError: 9999-12-31T23:59-01:00 is past year 9999 in UTC
        shown.problem("ends", f"not a time: {shown.ends!r} (e.g. 2026-12-04T22:00, UTC)")
        return None
    if ends <= now:
        shown.problem("ends", f"the end time {ends:%Y-%m-%d %H:%M} UTC is in the past")
        return None
    if ends - now > MAX_SILENCE:
        shown.problem("ends", too_long(ends - now))
        return None
    return ends


class SilencePages:
    """The handlers of ``/silences`` (mounted by :func:`ticketpager.console.web.build_console`)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def _list(self, conn: Connection, now: datetime) -> list[Silence]:
        return recent(conn, now - RECENT, LIST_LIMIT)

    async def page(
        self, request: Request, session: Session, form: SilenceForm | None = None, status: int = 200
    ) -> Response:
        now = self.console.service.clock.now()
        rows = await self.console.read(lambda conn: self._list(conn, now))
        return self.console.render(
            request,
            "silences.html",
            session,
            status=status,
            now=now,
            rows=[_shown(s, now) for s in rows],
            form=form or SilenceForm(),
            done=_done(request) if form is None else None,
            syntax=MATCH_SYNTAX,
        )

    async def add(self, request: Request, session: Session) -> Response:
        if not session.can_act:
            return self.console.refuse(request, 403, READ_ONLY, session)
        now = self.console.service.clock.now()
        shown, new = await run_in_threadpool(parse_form, request.state.form, now)
        if new is None:
            return await self.page(request, session, shown, status=400)
        store = self.console.service.store

        def run() -> Silence:
            with store.begin() as conn:  # the silence and its audit entry commit together, or neither does
                silence = add_silence(conn, new.matchers, now, new.ends, new.comment, session.who, now)
                detail = silence.to_json(now) | {"role": session.role}
                audit.record(conn, session.who, "silence.add", f"silence:{silence.id}", detail, now)
                return silence

        try:
            silence = await run_in_threadpool(run)
        except SilenceError as exc:  # the window or the comment, as the repository checks them
            shown.problem("form", str(exc))
            return await self.page(request, session, shown, status=400)
        log.info("console: %s added silence #%d until %s", session.who, silence.id, silence.ends_at.isoformat())
        return self.console.redirect(request, f"/silences?added={silence.id}")

    async def confirm(self, request: Request, session: Session) -> Response:
        if not session.can_act:
            return self.console.refuse(request, 403, READ_ONLY, session)
        silence_id = _int(request.path_params["silence_id"]) or 0  # past any id the database can hold: none
        now = self.console.service.clock.now()
        try:
            silence = await self.console.read(lambda conn: get_silence(conn, silence_id))
        except UnknownSilence:
            return self.console.refuse(request, 404, f"no silence #{request.path_params['silence_id']}", session)
        if silence.ended_at() <= now:
            return self.console.refuse(request, 409, f"silence #{silence.id} has already ended", session)
        return self.console.render(request, "silence_expire.html", session, s=_shown(silence, now))

    async def expire(self, request: Request, session: Session) -> Response:
        if not session.can_act:
            return self.console.refuse(request, 403, READ_ONLY, session)
        silence_id = _int(request.path_params["silence_id"]) or 0  # past any id the database can hold: none
        now = self.console.service.clock.now()
        store = self.console.service.store

        def run() -> Silence:
            with store.begin() as conn:  # the expiry and its audit entry commit together, or neither does
                silence = expire_silence(conn, silence_id, now, session.who)
                detail = {
                    "matchers": dict(silence.matchers),
                    "ends_at": silence.ends_at.isoformat(),
                    "role": session.role,
                }
                audit.record(conn, session.who, "silence.expire", f"silence:{silence.id}", detail, now)
                return silence

        try:
            silence = await run_in_threadpool(run)
        except UnknownSilence:
            return self.console.refuse(request, 404, f"no silence #{request.path_params['silence_id']}", session)
        except SilenceError as exc:  # already ended
            return self.console.refuse(request, 409, str(exc), session)
        log.info("console: %s expired silence #%d", session.who, silence.id)
        return self.console.redirect(request, f"/silences?expired={silence.id}")


def _shown(silence: Silence, now: datetime) -> dict[str, Any]:
    """One silence as the page shows it: its matchers one per line, in the rules language's words."""
    return {
        "id": silence.id,
        "state": silence.state(now),
        "matchers": [redact(f"{name}: {_inline(value)}") for name, value in silence.matchers.items()],
        "starts_at": silence.starts_at,
        "ends_at": silence.ended_at(),
        "expired_by": silence.expired_by if silence.expired_at is not None else None,
        "author": silence.author,
        "comment": redact(silence.comment),
    }


def _inline(value: Any) -> str:
    """A matcher's condition in YAML flow style (``{in: [P1, P2]}``), as one would type it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _done(request: Request) -> str | None:
    """The outcome of an add or expire, from the redirect's number only (no text from the URL is shown)."""
    added, expired = _int(request.query_params.get("added")), _int(request.query_params.get("expired"))
    if added is not None:
        return f"Silence #{added} added: matching tickets open no new incident until it ends"
    if expired is not None:
        return f"Silence #{expired} expired: tickets it held that still match page at the engine's next pass"
    return None


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""
