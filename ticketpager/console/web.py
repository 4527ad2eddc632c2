"""The console's routes: each handler reads through :mod:`sync.repos.console` in a worker thread and
renders one template. Mounted by :func:`ticketpager.app.build_app` at ``/console``."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

from jinja2 import Environment, FileSystemLoader
from sqlalchemy import Connection
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from connectors import CONNECTORS
from kernel import jsonutil
from kernel.lifecycle import dedup_key_for
from kernel.model import FieldChange, StatusCategory, Ticket, TicketChange, diff_tickets, web_url
from kernel.redact import redact
from rules.loader import relative_name, rule_files
from sync.engine import verdict_of
from sync.repos import audit, outbox
from sync.repos import console as q
from ticketpager.console import lab
from ticketpager.console.auth import COOKIE, LOGIN_COOKIE, Auth, Session, csrf_ok
from ticketpager.console.charts import hourly_svg
from ticketpager.console.errors import UnexpectedErrors
from ticketpager.console.params import int_param as _int
from ticketpager.console.ratelimit import LOGINS, LoginLimiter
from ticketpager.console.silences import SilencePages

if TYPE_CHECKING:
    from ticketpager.service import Service

log = logging.getLogger("ticketpager.console")
HERE = Path(__file__).resolve().parent
T = TypeVar("T")

#: every console answer: nothing cached, nothing framed, no script at all, no referrer leaves the site
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}
STATES = [c.value for c in StatusCategory]
MAX_TIMELINE_KEYS = 200  # dedup keys looked up per ticket (rules × incident generations)


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC") if d else "—"
    env.filters["seconds"] = _seconds
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["href"] = web_url  # an http(s) URL, else None: no javascript: link from a stored snapshot
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


class Console:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings.console
        self.auth = Auth(self.settings)
        self.limiter = LoginLimiter(service.clock)
        self.templates = _env()

    # -- plumbing --------------------------------------------------------------------------------
    def base(self, request: Request) -> str:
        """The console's URL path as the browser sees it: a trusted proxy's prefix + our mount point."""
        prefix = ""
        if self.settings.trust_proxy_headers:
            prefix = request.headers.get("x-forwarded-prefix", "").strip().rstrip("/")
            if prefix and not prefix.startswith("/"):
                prefix = ""
        return prefix + request.scope.get("root_path", "")

    def https(self, request: Request) -> bool:
        if self.settings.trust_proxy_headers:
            proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
            if proto:
                return proto == "https"
        return request.url.scheme == "https"

    def session(self, request: Request) -> Session | None:
        return self.auth.read(request.cookies.get(COOKIE))

    def render(
        self, request: Request, template: str, session: Session | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        body = self.templates.get_template(template).render(
            base=self.base(request), session=session, path=request.url.path, **context
        )
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def refuse(self, request: Request, status: int, reason: str, session: Session | None) -> HTMLResponse:
        return self.render(request, "error.html", session, status=status, reason=reason)

    def redirect(self, request: Request, where: str) -> Response:
        return RedirectResponse(self.base(request) + where, status_code=303, headers=SECURITY_HEADERS)

    def system_of(self, connection: str) -> str | None:
        """The system of a configured connection (a default one is named after its system), else ``None``."""
        configured = self.service.connections.get(connection)
        if configured is not None:
            return configured.system
        return connection if connection in CONNECTORS else None

    async def connections(self) -> list[str]:
        """Every connection the list can filter by: the configured ones and those that ever polled (cursors)."""
        polled = await self.read(q.known_sources)
        return sorted(set(polled) | set(self.service.connections))

    async def read(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.service.store.engine.connect() as conn:
                return fn(conn)

        return await run_in_threadpool(run)

    def page(self, handler: Callable[[Request, Session], Any]) -> Callable[[Request], Any]:
        """A page that needs a login: a visitor without one is sent to the login form (a GET) or refused
        (403 for anything else); a POST needs the session's CSRF token."""

        async def endpoint(request: Request) -> Response:
            session = self.session(request)
            if session is None:
                if request.method == "GET":
                    target = request.url.path[len(request.scope.get("root_path", "")) :] or "/"
                    if request.url.query:
                        target += "?" + request.url.query
                    return self.redirect(request, "/login?" + urlencode({"next": target}))
                return self.refuse(request, 403, "log in first", None)
            if request.method == "POST":
                form = await read_form(request)
                if not csrf_ok(session.csrf, form.get("csrf")):
                    log.warning("console: %s %s refused: missing or wrong CSRF token", request.method, request.url.path)
                    return self.refuse(
                        request, 403, "missing or wrong CSRF token: reload the page and try again", session
                    )
                request.state.form = form
            response: Response = await handler(request, session)
            return response

        return endpoint

    # -- login -----------------------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = self.render(
            request,
            "login.html",
            None,
            login_csrf=token,
            next=request.query_params.get("next", "/"),
            error=None,
            users=bool(self.settings.username),
        )
        self._cookie(request, response, LOGIN_COOKIE, token, 600)
        return response

    async def login(self, request: Request) -> Response:
        address = self.client_address(request)
        wait = self.limiter.blocked(address)  # a blocked address's form is not even read
        if wait > 0:
            return self._too_many(request, address, wait)
        form = await read_form(request)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not csrf_ok(expected, form.get("csrf")):
            return self.refuse(request, 403, "missing or wrong CSRF token: reload the login page", None)
        # counted as failed before the (slow) check, given back if right: guesses sent at once wait for no result
        wait = self.limiter.attempt(address)
        if wait > 0:
            return self._too_many(request, address, wait)
        who = await run_in_threadpool(
            self.auth.login, _text(form, "token"), _text(form, "username"), _text(form, "password")
        )
        target = _local(_text(form, "next"))
        if who is None:
            LOGINS.labels("failed").inc()
            blocked_for = self.limiter.blocked(address)
            log.warning(
                "console: failed login from %s%s",
                address,
                f"; it gets 429 for {blocked_for:.0f} s" if blocked_for > 0 else "",
            )
            return self._login_page(request, expected, target, "wrong token, user name or password", status=401)
        LOGINS.labels("ok").inc()
        self.limiter.succeeded(address)
        log.info("console: %s logged in (%s)", who[0], who[1])
        response: Response = self.redirect(request, target)
        self._cookie(request, response, COOKIE, self.auth.issue(*who), int(self.settings.session_hours * 3600))
        response.delete_cookie(LOGIN_COOKIE, path=self.base(request) or "/")
        return response

    def _too_many(self, request: Request, address: str, wait: float) -> Response:
        LOGINS.labels("rate_limited").inc()
        log.warning("console: login from %s refused: too many failed logins (%.0f s left)", address, wait)
        return self._login_page(
            request,
            request.cookies.get(LOGIN_COOKIE, ""),
            _local(request.query_params.get("next", "/")),
            f"too many failed logins from your address: try again in {_seconds(wait)}",
            status=429,
            headers={"retry-after": str(math.ceil(wait))},
        )

    def _login_page(
        self, request: Request, csrf: str, target: str, error: str, status: int, headers: dict[str, str] | None = None
    ) -> Response:
        response = self.render(
            request,
            "login.html",
            None,
            status=status,
            login_csrf=csrf,
            next=target,
            error=error,
            users=bool(self.settings.username),
        )
        response.headers.update(headers or {})
        return response

    def client_address(self, request: Request) -> str:
        """Who is logging in, for the rate limit: the peer, or behind a trusted proxy the address it appended
        last to ``X-Forwarded-For`` (the earlier ones are whatever the client sent)."""
        if self.settings.trust_proxy_headers:
            forwarded = request.headers.get("x-forwarded-for", "").split(",")[-1].strip()
            if forwarded:
                return forwarded[:64]
        return request.client.host if request.client else "?"

    async def logout(self, request: Request, session: Session) -> Response:
        response = self.redirect(request, "/login")
        response.delete_cookie(COOKIE, path=self.base(request) or "/")
        return response

    def _cookie(self, request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=self.base(request) or "/",
            secure=self.https(request),
            httponly=True,
            samesite="lax",
        )

    # -- pages -----------------------------------------------------------------------------------
    async def overview(self, request: Request, session: Session) -> Response:
        now = self.service.clock.now()

        def load(conn: Connection) -> dict[str, Any]:
            return {
                "sources": q.source_health(conn, now),
                "backlog": q.backlog(conn, now),
                "hours": q.hourly(conn, now),
            }

        data = await self.read(load)
        store = self.service.rule_store
        rules = store.current
        return self.render(
            request,
            "overview.html",
            session,
            now=now,
            chart=hourly_svg(data["hours"]),
            **data,
            rules={
                "count": len(rules),
                "digest": rules.digest,
                "loaded_at": getattr(store, "loaded_at", None),
                "last_error": redact(store.last_error) if store.last_error else None,
                "failures": store.reload_failures,
            },
        )

    async def tickets(self, request: Request, session: Session) -> Response:
        params = request.query_params
        filters = {
            name: params.get(name, "").strip()[:200] for name in ("key", "title", "source", "connection", "state")
        }
        after = q.parse_cursor(params.get("after", "")) if params.get("after") else None
        windowed = bool(filters["title"]) and not filters["key"]  # a title substring reads snapshots: bounded

        # a connection is of one system: its source narrows the read to that system's rows (the indexes lead by it)
        system = (self.system_of(filters["connection"]) or "") if filters["connection"] else ""
        source = filters["source"] or system

        def search(conn: Connection) -> tuple[list[q.TicketRow], q.TicketSearchWindow | None]:
            window = (
                q.title_search_window(
                    conn, source=source, connection=filters["connection"], state=filters["state"], after=after
                )
                if windowed
                else None
            )
            found = q.search_tickets(
                conn,
                key=filters["key"],
                title=filters["title"],
                source=source,
                connection=filters["connection"],
                state=filters["state"],
                after=after,
                until=window.until if window else None,
            )
            return found, window

        rows, window = await self.read(search)
        more = searched_until = None
        kept = {k: v for k, v in filters.items() if v}
        if len(rows) == q.PAGE:
            more = urlencode({**kept, "after": rows[-1].cursor})
        elif window is not None and window.cursor is not None:  # the window ended before the page filled
            more = urlencode({**kept, "after": window.cursor})
            searched_until = window.until[0] if window.until else None
        connections = await self.connections()
        return self.render(
            request,
            "tickets.html",
            session,
            rows=rows,
            filters=filters,
            more=more,
            searched_until=searched_until,
            window_size=q.SCAN_WINDOW,
            states=STATES,
            sources=sorted(CONNECTORS),
            connections=connections,
        )

    async def ticket(self, request: Request, session: Session) -> Response:
        """One ticket's timeline, addressed by its connection and id (the connection names its system; a default
        connection is named after its system, so ``/tickets/<system>/<id>`` links still open its tickets)."""
        connection = request.path_params["connection"]
        ticket_id = request.path_params["ticket_id"]
        before = _int(request.query_params.get("before"))
        system = self.system_of(connection)

        def load(conn: Connection) -> dict[str, Any] | None:
            # a connection no longer configured: its stored tickets still say which system they are of
            source = system or q.system_of(conn, connection, ticket_id, list(CONNECTORS))
            now = self.service.clock.now()
            return None if source is None else _timeline(conn, source, connection, ticket_id, before, now)

        data = await self.read(load)
        if data is None:
            return self.refuse(request, 404, f"no ticket {connection}/{ticket_id} is stored", session)
        return self.render(request, "ticket.html", session, **data)

    async def deadletters(self, request: Request, session: Session) -> Response:
        after = _int(request.query_params.get("after"))
        rows = await self.read(lambda conn: q.dead_letters(conn, after))
        more = rows[-1]["id"] if len(rows) == q.PAGE else None
        return self.render(
            request,
            "deadletters.html",
            session,
            rows=rows,
            more=more,
            done=_done(request),
        )

    async def retry_confirm(self, request: Request, session: Session) -> Response:
        if not session.can_act:
            return self.refuse(request, 403, "read-only login: retrying needs the full role", session)
        everything = request.query_params.get("all") == "1"
        ids = [i for i in (_int(v) for v in request.query_params.getlist("id")) if i is not None]
        rows = (
            []
            if everything
            else await self.read(lambda conn: [r for r in q.dead_letters(conn, None, 10_000) if r["id"] in ids])
        )
        if not everything and not rows:
            return self.refuse(request, 404, "no such dead letter (already retried?)", session)
        return self.render(request, "retry_confirm.html", session, everything=everything, rows=rows)

    async def retry(self, request: Request, session: Session) -> Response:
        if not session.can_act:
            return self.refuse(request, 403, "read-only login: retrying needs the full role", session)
        form: FormData = request.state.form
        everything = form.get("all") == "1"
        ids = [i for i in (_int(v) for v in form.getlist("id")) if i is not None]
        if not everything and not ids:
            return self.refuse(request, 400, "no dead letter chosen", session)
        now = self.service.clock.now()
        store = self.service.store

        def run() -> tuple[int, int]:
            # the retry and its audit entry commit together, or neither does
            with store.begin() as conn:
                chosen: list[int] | None = None
                if not everything:
                    chosen = sorted(q.dead_letter_ids(conn, ids))
                    if not chosen:
                        return 0, 0
                queued, superseded = outbox.retry_dead(conn, chosen, now)
                audit.record(
                    conn,
                    session.who,
                    "deadletter.retry",
                    "outbox:all" if chosen is None else "outbox:" + ",".join(map(str, chosen))[:240],
                    {"queued": queued, "superseded": superseded, "role": session.role},
                    now,
                )
            return queued, superseded

        queued, superseded = await run_in_threadpool(run)
        self.service.wake_senders()
        log.info("console: %s retried dead letters: %d queued, %d superseded", session.who, queued, superseded)
        return self.redirect(request, "/deadletters?" + urlencode({"queued": queued, "superseded": superseded}))

    async def rules(self, request: Request, session: Session) -> Response:
        live = await run_in_threadpool(self._live_rule_texts)
        return self.render(request, "rules.html", session, **self._rules_context(live))

    def _rules_context(self, live: list[tuple[Path, str]], **extra: Any) -> dict[str, Any]:
        """The rules page's context: ``live`` (:meth:`_live_rule_texts`, read once per request) shown redacted."""
        store = self.service.rule_store
        path = Path(store.path)
        shown = [{"name": relative_name(file, path), "text": lab.shown_rule_text(text)} for file, text in live]
        error = redact(store.last_error) if store.last_error else None
        context: dict[str, Any] = {
            "files": shown,
            "digest": store.current.digest,
            "names": list(store.current.names),
            "last_error": error,
            "playground_rules": shown[0]["text"] if shown else "",
            "playground_ticket": "",
            "pick_connection": "",
            "pick_id": "",
            "result": None,
            "errors": [],
            "warnings": [],
            "backtest": None,
            "days": 7,
            "connections": sorted(set(CONNECTORS) | set(self.service.connections)),
        }
        context.update(extra)
        return context

    def _live_rule_texts(self) -> list[tuple[Path, str]]:
        """Each file the rule store reads (a folder per client's too) with its text, or a comment saying why it
        cannot be read."""
        out = []
        for file in rule_files(Path(self.service.rule_store.path))[0]:
            try:
                out.append((file, file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                out.append((file, f"# cannot read: {type(exc).__name__}"))
        return out

    def _playground_env(self, live: list[tuple[Path, str]]) -> dict[str, str]:
        """The variables the playground resolves: those the live rule files use (:func:`lab.playground_env`)."""
        env = self.service.rule_store.env
        return lab.playground_env([text for _, text in live], os.environ if env is None else env)

    async def playground(self, request: Request, session: Session) -> Response:
        form: FormData = request.state.form
        live = await run_in_threadpool(self._live_rule_texts)
        rules_text = _text(form, "rules")[:200_000]
        ticket_text = _text(form, "ticket")[:500_000]
        # the stored ticket to evaluate: its connection (``pick_source`` before connections existed) and id
        pick_connection = (_text(form, "pick_connection") or _text(form, "pick_source")).strip()
        pick_id = _text(form, "pick_id").strip()
        pick_system = self.system_of(pick_connection)
        errors: list[str] = []
        warnings: list[str] = []
        result = None
        if pick_connection and pick_id:
            row = (
                await self.read(lambda conn: q.ticket_snapshot(conn, pick_system, pick_connection, pick_id))
                if pick_system
                else None
            )
            if row is None:
                errors.append(f"no stored ticket {pick_connection}/{pick_id}")
            else:
                ticket_text = lab.ticket_json(row["snapshot"])
        if not errors:
            env = self._playground_env(live)
            result, errors, warnings = await run_in_threadpool(
                lambda: lab.playground(rules_text, ticket_text, env, who=session.who)
            )
        return self.render(
            request,
            "rules.html",
            session,
            **self._rules_context(
                live,
                playground_rules=rules_text,
                playground_ticket=ticket_text,
                result=result,
                errors=errors,
                warnings=warnings,
                pick_connection="",
                pick_id="",
            ),
        )

    async def backtest(self, request: Request, session: Session) -> Response:
        form: FormData = request.state.form
        live = await run_in_threadpool(self._live_rule_texts)
        rules_text = _text(form, "rules")[:200_000]
        days = max(1, min(_int(_text(form, "days")) or 7, 90))
        # the connection whose stored changes are replayed (``source`` before connections existed)
        connection = (_text(form, "connection") or _text(form, "source")).strip()
        source = self.system_of(connection)
        errors: list[str] = []
        warnings: list[str] = []
        result = None
        if not connection:
            errors.append("choose a connection")
        elif source is None:
            errors.append(f"no connection {connection} is configured")
        else:
            env, now, engine = self._playground_env(live), self.service.clock.now(), self.service.store.engine
            system = source
            result, errors, warnings = await run_in_threadpool(
                lambda: lab.backtest(engine, rules_text, env, system, days, now, connection, who=session.who)
            )
        return self.render(
            request,
            "rules.html",
            session,
            **self._rules_context(
                live,
                playground_rules=rules_text,
                backtest=result,
                errors=errors,
                warnings=warnings,
                days=days,
            ),
        )

    async def audit_log(self, request: Request, session: Session) -> Response:
        before = _int(request.query_params.get("before"))
        entries = await self.read(lambda conn: audit.list_entries(conn, q.PAGE, before))
        more = entries[-1].id if len(entries) == q.PAGE else None
        return self.render(request, "audit.html", session, entries=entries, more=more)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self.refuse(request, 404, "no such page", self.session(request))


def _timeline(
    conn: Connection, source: str, connection: str, ticket_id: str, before: int | None, now: datetime
) -> dict[str, Any] | None:
    """Everything the console shows about one ticket (of ``connection`` of system ``source``), newest decision
    first: every read is by the whole identity, so another connection's ticket with the same id never shows."""
    row = q.ticket_snapshot(conn, source, connection, ticket_id)
    decisions = q.decisions_of(conn, source, connection, ticket_id, before)
    if row is None and not decisions:
        return None
    snapshot = jsonutil.loads(row["snapshot"]) if row and row["snapshot"] else {}
    payloads = q.change_payloads(conn, [int(d["change_id"]) for d in decisions if d["change_id"] is not None])
    oldest = q.change_before(conn, source, connection, ticket_id, decisions[-1]["id"]) if decisions else None
    links = q.links_of(conn, source, connection, ticket_id)
    known = q.pagerduty_incidents(conn, [link["dedup_key"] for link in links])
    links = [{**link, "pagerduty": known.get(link["dedup_key"])} for link in links]
    keys = [
        dedup_key_for(source, ticket_id, link["rule"], g, connection)
        for link in links
        for g in range(max(1, link["generation"] - 20), link["generation"] + 1)
    ][:MAX_TIMELINE_KEYS]
    sent = q.outbox_of(conn, connection, keys)
    _say_what_pending_rows_wait_for(sent, now)
    by_change: dict[int | None, list[dict[str, Any]]] = {}
    for item in sent:
        by_change.setdefault(item["change_id"], []).append(item)
    entries = []
    previous = _ticket_of(oldest)
    for d in reversed(decisions):  # oldest first, for the diffs
        change = payloads.get(int(d["change_id"])) if d["change_id"] is not None else None
        current = _ticket_of(change)
        diff: list[FieldChange] = []
        if current is not None:
            diff = [c for c in diff_tickets(previous, current) if c.field != "raw"]
            previous = current
        detail = jsonutil.loads(d["detail"]) if d["detail"] else {}
        entries.append(
            {
                "decision": d,
                "origin": detail.get("origin") or (change or {}).get("origin") or "",
                "received_at": (change or {}).get("received_at"),
                "diff": [{"field": c.field, "old": _short(c.old), "new": _short(c.new)} for c in diff],
                "changed_fields": detail.get("changes", []),
                "verdicts": [verdict_of(v) for v in detail.get("verdicts", []) if isinstance(v, dict)],
                "events": detail.get("events", []),
                "why": detail.get("why"),
                "silenced": [str(note.get("why", "")) for note in detail.get("silenced", []) if isinstance(note, dict)],
                "sent": by_change.get(d["change_id"], []) if d["change_id"] is not None else [],
                "pruned": d["change_id"] is not None and change is None,
            }
        )
    entries.reverse()
    return {
        "source": source,
        "connection": connection,
        "ticket_id": ticket_id,
        "ticket": row,
        "title": redact(str(snapshot.get("title", ""))),
        "url": snapshot.get("url"),
        "ticket_status": snapshot.get("status", ""),
        "entries": entries,
        "links": links,
        "sent": sent,
        "older": decisions[-1]["id"] if len(decisions) == q.PAGE else None,
    }


def _say_what_pending_rows_wait_for(rows: list[dict[str, Any]], now: datetime) -> None:
    """Give each pending row its ``waiting``: what keeps it from going out now. Behind an earlier row of its incident
    (the claims' order: :func:`sync.repos.outbox.waiting_on`), its next attempt later (a retry's back-off, a
    rate-limit hold), being sent (claimed), or due (the next free worker takes it)."""
    behind = outbox.waiting_on(rows)
    by_id = {row["id"]: row for row in rows}
    for row in rows:
        if row["status"] != "pending":
            row["waiting"] = None
        elif row["id"] in behind:
            head = by_id[behind[row["id"]]]
            row["waiting"] = {"behind": head["id"], "kind": head["kind"], "action": head["action"]}
        elif row["claimed_until"] is not None and row["claimed_until"] > now:
            row["waiting"] = {"claimed_until": row["claimed_until"]}
        elif row["next_attempt_at"] > now:
            row["waiting"] = {"not_before": row["next_attempt_at"]}
        else:
            row["waiting"] = {"due": True}


def _ticket_of(change: dict[str, Any] | None) -> Ticket | None:
    if not change or not change.get("payload"):
        return None
    try:
        return TicketChange.from_json(jsonutil.loads(change["payload"])).ticket
    except (KeyError, TypeError, ValueError):
        return None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = redact(text)
    return text if len(text) <= 300 else text[:300] + "…"


#: the largest form the console reads (a pasted rule file and ticket fit easily)
MAX_FORM_BYTES = 1024 * 1024


async def read_form(request: Request) -> FormData:
    """An ``application/x-www-form-urlencoded`` body (the only kind the console's forms send), without
    python-multipart: at most :data:`MAX_FORM_BYTES`, anything else is an empty form (then refused by CSRF)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return FormData()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return FormData()
    pairs: list[tuple[str, str | UploadFile]] = list(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return FormData(pairs)


def _done(request: Request) -> str | None:
    """The outcome of a retry, from the redirect's numbers only (no text from the URL is shown as is)."""
    queued, superseded = _int(request.query_params.get("queued")), _int(request.query_params.get("superseded"))
    if queued is None or superseded is None:
        return None
    return f"{queued} queued again, {superseded} superseded"


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _local(target: str) -> str:
    """A redirect target inside the console only (never another site: ``//evil``, ``http:``)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or "://" in target:
        return "/"
    return target


def build_console(service: Service) -> Starlette:
    console = Console(service)
    page = console.page
    silences = SilencePages(console)
    return Starlette(
        routes=[
            Route("/", page(console.overview), methods=["GET"]),
            Route("/login", console.login_form, methods=["GET"]),
            Route("/login", console.login, methods=["POST"]),
            Route("/logout", page(console.logout), methods=["POST"]),
            Route("/tickets", page(console.tickets), methods=["GET"]),
            Route("/tickets/{connection}/{ticket_id:path}", page(console.ticket), methods=["GET"]),
            Route("/deadletters", page(console.deadletters), methods=["GET"]),
            Route("/deadletters/retry", page(console.retry_confirm), methods=["GET"]),
            Route("/deadletters/retry", page(console.retry), methods=["POST"]),
            Route("/rules", page(console.rules), methods=["GET"]),
            Route("/rules/playground", page(console.playground), methods=["POST"]),
            Route("/rules/backtest", page(console.backtest), methods=["POST"]),
            Route("/silences", page(silences.page), methods=["GET"]),
            Route("/silences", page(silences.add), methods=["POST"]),
            Route("/silences/{silence_id:int}/expire", page(silences.confirm), methods=["GET"]),
            Route("/silences/{silence_id:int}/expire", page(silences.expire), methods=["POST"]),
            Route("/audit", page(console.audit_log), methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={404: console.not_found},
        middleware=[Middleware(UnexpectedErrors, console=console)],
    )
