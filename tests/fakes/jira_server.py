"""A local fake Jira (Cloud or Data Center) for end-to-end tests, plus an issue JSON factory.

It behaves like the parts of Jira ticketpager uses: ``/serverInfo``, ``/myself`` (with a profile time
zone), ``/field``, Cloud ``/search/jql`` with ``nextPageToken`` (and ``/search`` answering 410 Gone on
Cloud, as after CHANGE-2046), Data Center ``/search`` with ``startAt``/``total``, issue comments, an
issue's transitions (a small workflow: To Do → In Progress → Done, Done requiring a resolution), remote links
(one per ``globalId``, updated on a repost) and field edits (``PUT /issue``), and injected failures
(``fail_next``: e.g. 429 + ``Retry-After``). JQL support is exactly what the connector sends:
``updated >= "yyyy/MM/dd HH:mm"`` read in the user's zone, ``ORDER BY updated, key``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse
from zoneinfo import ZoneInfo

from tests.fakes.echo import credential_echo

#: the fake's workflow: every transition is offered from any other status (``fields``: its screen)
WORKFLOW: list[dict[str, Any]] = [
    {"id": "11", "name": "Start work", "to": {"name": "In Progress", "statusCategory": {"key": "indeterminate"}},
     "fields": {}},
    {"id": "21", "name": "Reopen", "to": {"name": "To Do", "statusCategory": {"key": "new"}}, "fields": {}},
    {"id": "31", "name": "Close issue", "to": {"name": "Done", "statusCategory": {"key": "done"}},
     "fields": {"resolution": {"required": True, "name": "Resolution", "hasDefaultValue": False,
                               "allowedValues": [{"id": "10000", "name": "Done"}]}}},
]  # fmt: skip
CATEGORY = {"new": (2, "To Do"), "indeterminate": (4, "In Progress"), "done": (3, "Done")}


def jira_time(when: datetime) -> str:
    """Jira's timestamp format: milliseconds and an offset without a colon."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}" + when.strftime("%z")


def make_issue(
    issue_id: str,
    key: str,
    *,
    updated: datetime,
    summary: str = "Something is wrong",
    priority: str = "Medium",
    priority_id: str = "3",
    status: str = "To Do",
    category: str = "new",
    project: str = "OPS",
    labels: Iterable[str] = (),
    custom: dict[str, Any] | None = None,
    base_url: str = "https://acme.atlassian.net",
) -> dict[str, Any]:
    """An issue as REST v2 search returns it (and as webhooks carry it)."""
    cat_id, cat_name = CATEGORY[category]
    fields: dict[str, Any] = {
        "summary": summary,
        "description": None,
        "issuetype": {"id": "10004", "name": "Incident"},
        "project": {"id": "10000", "key": project, "name": f"{project} project"},
        "priority": {"id": priority_id, "name": priority},
        "status": {
            "id": str(10000 + cat_id),
            "name": status,
            "statusCategory": {"id": cat_id, "key": category, "name": cat_name},
        },
        "resolution": {"id": "10000", "name": "Done"} if category == "done" else None,
        "labels": list(labels),
        "components": [],
        "assignee": None,
        "reporter": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Sam Support"},
        "created": jira_time(updated),
        "updated": jira_time(updated),
    }
    fields.update(custom or {})
    return {"id": issue_id, "key": key, "self": f"{base_url}/rest/api/2/issue/{issue_id}", "fields": fields}


_UPDATED = re.compile(r'updated\s*>=\s*"(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2})"')


def search(issues: Iterable[dict[str, Any]], jql: str, time_zone: str = "UTC") -> list[dict[str, Any]]:
    """What Jira answers for ``updated >= "<literal>" ORDER BY updated ASC, key ASC`` (literal read in
    ``time_zone``, the API user's profile zone)."""
    found = list(issues)
    match = _UPDATED.search(jql)
    if match:
        y, mo, d, h, mi = (int(g) for g in match.groups())
        lower = datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(time_zone))
        found = [i for i in found if datetime.fromisoformat(i["fields"]["updated"]) >= lower]
    found.sort(key=lambda i: (datetime.fromisoformat(i["fields"]["updated"]), i["key"]))
    return found


class FakeJira:
    """Threaded local Jira. Use as a context manager; ``url`` is its base URL."""

    def __init__(
        self,
        *,
        deployment: str = "Cloud",
        time_zone: str = "UTC",
        account_id: str = "5b10ac8d82e05b22cc7d4ef5",
        fields: list[dict[str, Any]] | None = None,
    ) -> None:
        self.deployment = deployment
        self.time_zone = time_zone
        self.account_id = account_id
        self.fields = fields if fields is not None else []
        self.issues: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, list[dict[str, Any]]] = {}
        self.remote_links: dict[str, dict[str, dict[str, Any]]] = {}  # issue id -> globalId -> link
        self.transitioned: list[tuple[str, str]] = []  # (issue id, new status) per transition performed
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self._failures: list[tuple[int, dict[str, str]]] = []
        self.echo_credentials = False  # answer 401 echoing the request's credentials (as some proxies do)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeJira:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def put(self, issue: dict[str, Any]) -> None:
        with self._lock:
            self.issues[str(issue["id"])] = copy.deepcopy(issue)

    def fail_next(self, n: int, status: int, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._failures.extend([(status, headers or {})] * n)

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]

    # -- request handling ------------------------------------------------------------------------------
    def _search(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        with self._lock:
            issues = list(self.issues.values())
        return search(issues, query.get("jql", [""])[0], self.time_zone)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        api = "/rest/api/2/"
        if not path.startswith(api):
            return 404, {"errorMessages": ["not found"]}
        tail = path[len(api) :]
        cloud = self.deployment == "Cloud"
        if tail == "serverInfo":
            return 200, {"baseUrl": self.url, "versionNumbers": [1001, 0, 0], "deploymentType": self.deployment}
        if tail == "myself":
            return 200, {"accountId": self.account_id, "displayName": "ticketpager bot", "timeZone": self.time_zone}
        if tail == "field":
            return 200, self.fields
        if tail == "search/jql" and cloud:
            issues = self._search(query)
            start = int(query.get("nextPageToken", ["0"])[0])
            size = int(query.get("maxResults", ["50"])[0])
            chunk = issues[start : start + size]
            more = start + size < len(issues)
            out: dict[str, Any] = {"issues": chunk, "isLast": not more}
            if more:
                out["nextPageToken"] = str(start + size)
            return 200, out
        if tail == "search":
            if cloud:
                return 410, {"errorMessages": ["The requested API has been removed. CHANGE-2046"]}
            issues = self._search(query)
            start = int(query.get("startAt", ["0"])[0])
            size = int(query.get("maxResults", ["50"])[0])
            page = issues[start : start + size]
            return 200, {"startAt": start, "maxResults": size, "total": len(issues), "issues": page}
        match = re.fullmatch(r"issue/([^/]+)(?:/(transitions|remotelink))?", tail)
        if match:
            with self._lock:
                issue = self._issue(match.group(1))
                if issue is None:
                    return 404, {"errorMessages": ["Issue does not exist or you do not have permission to see it."]}
                return self._issue_route(method, issue, match.group(2), body)
        match = re.fullmatch(r"issue/([^/]+)/comment", tail)
        if match:
            ref = match.group(1)
            with self._lock:
                issue = self.issues.get(ref) or next((i for i in self.issues.values() if i["key"] == ref), None)
                if issue is None:
                    return 404, {"errorMessages": ["Issue does not exist or you do not have permission to see it."]}
                comments = self.comments.setdefault(issue["id"], [])
                if method == "POST":
                    comment = {
                        "id": str(20000 + len(comments)),
                        "body": (body or {}).get("body", ""),
                        "author": {"accountId": self.account_id},
                    }
                    comments.append(comment)
                    # like Jira, a new comment bumps the issue's ``updated`` (what could echo into a page)
                    bumped = datetime.fromisoformat(issue["fields"]["updated"]) + timedelta(seconds=1)
                    issue["fields"]["updated"] = jira_time(bumped)
                    return 201, comment
                newest_first = list(reversed(comments))
                total = len(comments)
                return 200, {"startAt": 0, "maxResults": total, "total": total, "comments": newest_first}
        return 404, {"errorMessages": [f"no route for {method} {path}"]}

    def _issue(self, ref: str) -> dict[str, Any] | None:
        return self.issues.get(ref) or next((i for i in self.issues.values() if i["key"] == ref), None)

    def _issue_route(self, method: str, issue: dict[str, Any], part: str | None, body: Any) -> tuple[int, Any]:
        """``GET/PUT issue/{id}``, ``GET/POST …/transitions``, ``POST …/remotelink`` (caller holds the lock)."""
        fields = issue["fields"]
        if part is None:
            if method == "GET":
                return 200, copy.deepcopy(issue)
            if method == "PUT":
                fields.update((body or {}).get("fields") or {})
                self._bump(issue)
                return 204, None
        elif part == "transitions":
            offered = [t for t in WORKFLOW if t["to"]["name"] != fields["status"]["name"]]
            if method == "GET":
                return 200, {"expand": "transitions", "transitions": copy.deepcopy(offered)}
            if method == "POST":
                wanted = str(((body or {}).get("transition") or {}).get("id"))
                chosen = next((t for t in offered if t["id"] == wanted), None)
                if chosen is None:
                    return 400, {"errorMessages": [f"Transition id '{wanted}' is not valid for this issue."]}
                given = (body or {}).get("fields") or {}
                missing = [k for k, m in chosen["fields"].items() if m.get("required") and k not in given]
                if missing:
                    return 400, {"errors": {k: f"{k} is required." for k in missing}}
                category = chosen["to"]["statusCategory"]["key"]
                cat_id, _ = CATEGORY[category]
                fields["status"] = {
                    "id": str(10000 + cat_id),
                    "name": chosen["to"]["name"],
                    "statusCategory": {"id": cat_id, "key": category, "name": CATEGORY[category][1]},
                }
                if "resolution" in given:
                    fields["resolution"] = {"id": "10000", **given["resolution"]}
                self.transitioned.append((str(issue["id"]), chosen["to"]["name"]))
                self._bump(issue)
                return 204, None
        elif part == "remotelink" and method == "POST":
            links = self.remote_links.setdefault(str(issue["id"]), {})
            global_id = str((body or {}).get("globalId") or f"link-{len(links)}")
            existed = global_id in links
            links[global_id] = dict(body or {})
            return (200 if existed else 201), {"id": 30000 + len(links), "self": f"{self.url}/remotelink"}
        return 405, {"errorMessages": [f"{method} is not allowed here"]}

    @staticmethod
    def _bump(issue: dict[str, Any]) -> None:
        """Like Jira, every edit moves the issue's ``updated`` (what could echo into a page)."""
        bumped = datetime.fromisoformat(issue["fields"]["updated"]) + timedelta(seconds=1)
        issue["fields"]["updated"] = jira_time(bumped)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                parsed = urlparse(self.path)
                query = parse_qs(parsed.query)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with fake._lock:
                    fake.requests.append((method, parsed.path, query))
                    failure = fake._failures.pop(0) if fake._failures else None
                if failure is not None:
                    status, headers = failure
                    payload: Any = {"errorMessages": ["injected failure"]}
                elif fake.echo_credentials:
                    status, headers = 401, {}
                    payload = credential_echo(self.headers.get("Authorization"))
                else:
                    headers = {}
                    status, payload = fake._route(method, parsed.path, query, body)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._serve("PUT")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

        return Handler


def now_utc() -> datetime:
    return datetime.now(UTC)
