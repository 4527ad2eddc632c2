"""A fake ServiceNow instance: Table API lists, single-record GET/PATCH, work-note and comment journal,
assignment groups (``sys_user_group``), over TLS.

It behaves like the vendor where connectors trip: encoded queries with ``>=``/``>``/``=``/``<=``/``<``,
``^OR`` and ``ORDERBY``; **unknown fields in ``sysparm_query`` and ``sysparm_fields`` are silently
ignored** (the whole table comes back); ``sysparm_limit``/``sysparm_offset`` with ``X-Total-Count``;
dot-walked ``<reference>.name`` fields; raw UTC dates ``YYYY-MM-DD HH:MM:SS``; API v1's 404 on an empty
list (``empty_404=True``); basic auth; scripted failures (429 + ``Retry-After``). ``on_list`` hooks let a
test change records between two pages. :class:`FakeInstance` is pure; use it from ``responses``
callbacks (:func:`register_responses`) or serve it with :class:`FakeServiceNowServer` (TLS via trustme).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

INSTANCE = "https://acme.service-now.com"
SN_FORMAT = "%Y-%m-%d %H:%M:%S"
_COND = re.compile(r"^([a-z_][a-z0-9_.]*)(>=|<=|!=|>|<|=|LIKE)(.*)$")

JOURNAL_FIELDS = ("work_notes", "comments")
NAMES = {
    "grp-network": "Network",
    "grp-desk": "Service Desk",
    "usr-alice": "Alice Admin",
    "usr-bob": "Bob Caller",
    "ci-router": "core-router-01",
    "co-acme": "ACME Corp",
}


def sn_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(SN_FORMAT)


def make_record(sys_id: str, number: str, updated: datetime, **fields: Any) -> dict[str, str]:
    """A raw incident as the Table API stores it (references hold sys_ids)."""
    record = {
        "sys_id": sys_id,
        "number": number,
        "short_description": f"Incident {number}",
        "description": "",
        "state": "1",
        "priority": "3",
        "impact": "2",
        "urgency": "2",
        "category": "network",
        "subcategory": "",
        "active": "true",
        "assignment_group": "grp-desk",
        "assigned_to": "",
        "caller_id": "usr-bob",
        "cmdb_ci": "",
        "company": "co-acme",
        "opened_at": sn_time(updated - timedelta(minutes=5)),
        "sys_created_on": sn_time(updated - timedelta(minutes=5)),
        "sys_updated_on": sn_time(updated),
        "sys_updated_by": "bob",
        "sys_mod_count": "0",
    }
    record.update({k: str(v) for k, v in fields.items()})
    return record


class FakeInstance:
    """The state and Table API semantics of one instance (thread-safe)."""

    def __init__(
        self,
        records: list[dict[str, str]] | None = None,
        *,
        table: str = "incident",
        username: str = "ticketpager",
        password: str = "s3cret-pw",  # noqa: S107 - the fake instance's test password
        empty_404: bool = False,
    ) -> None:
        self.table = table
        self.records: dict[str, dict[str, str]] = {r["sys_id"]: dict(r) for r in records or []}
        self.journal: list[dict[str, str]] = []
        # assignment groups (sys_user_group), by sys_id and name
        self.groups = [{"sys_id": k, "name": v} for k, v in NAMES.items() if k.startswith("grp-")]
        self.username = username
        self.password = password
        self.empty_404 = empty_404
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, flat query)
        self.on_list: deque[Callable[[FakeInstance], None]] = deque()
        self._failures: deque[tuple[int, dict[str, str]]] = deque()
        self._lock = threading.RLock()

    # -- test controls ------------------------------------------------------------------------------
    def put(self, record: dict[str, str]) -> None:
        with self._lock:
            self.records[record["sys_id"]] = dict(record)

    def update(self, sys_id: str, updated: datetime, **fields: Any) -> None:
        with self._lock:
            rec = self.records[sys_id]
            rec.update({k: str(v) for k, v in fields.items()})
            rec["sys_updated_on"] = sn_time(updated)
            rec["sys_mod_count"] = str(int(rec.get("sys_mod_count", "0")) + 1)

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            for _ in range(count):
                self._failures.append((status, headers or {}))

    def lists(self) -> list[dict[str, str]]:
        return [q for m, p, q in self.requests if m == "GET" and p.endswith(f"/table/{self.table}")]

    # -- HTTP semantics -----------------------------------------------------------------------------
    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self._lock:
            self.requests.append((method, parts.path, query))
            if not self._authorized(headers):
                return _error(401, "User Not Authenticated", "Required to provide Auth information")
            if self._failures:
                status, extra = self._failures.popleft()
                code, hdrs, payload = _error(status, "Rate limit exceeded" if status == 429 else "Failure", "")
                return code, {**hdrs, **extra}, payload
            match = re.fullmatch(r"/api/now/table/([a-z0-9_]+)(?:/([A-Za-z0-9-]+))?", parts.path)
            if not match:
                return _error(400, "Requested URI does not represent any resource", parts.path)
            table, sys_id = match.groups()
            if method == "GET" and sys_id is None:
                if table == "sys_journal_field":
                    return self._list(self.journal, query)
                if table == "sys_user_group":
                    return self._list(self.groups, query)
                if table != self.table:
                    return _error(400, f"Invalid table {table}", "")
                hooks = list(self.on_list)
                self.on_list.clear()
                for hook in hooks:  # runs *before* this page is answered: a change between two pages
                    hook(self)
                return self._list(list(self.records.values()), query)
            if table != self.table or sys_id not in self.records:
                return _error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
            record = self.records[sys_id]
            if method == "GET":
                return _ok({"result": self._project(record, query.get("sysparm_fields", ""))})
            if method in ("PATCH", "PUT"):
                data = json.loads(body or b"{}")
                for element in JOURNAL_FIELDS:  # journal fields append an entry; the record reads back empty
                    note = data.pop(element, None)
                    if note:
                        self.journal.append(
                            {
                                "sys_id": f"j{len(self.journal) + 1:031d}",
                                "element_id": sys_id,
                                "element": element,
                                "name": table,
                                "value": str(note),
                            }
                        )
                record.update({k: str(v) for k, v in data.items()})
                latest = max(datetime.strptime(r["sys_updated_on"], SN_FORMAT) for r in self.records.values())
                record["sys_updated_on"] = (latest + timedelta(seconds=1)).strftime(SN_FORMAT)
                record["sys_updated_by"] = self.username
                return _ok({"result": self._project(record, "")})
            return _error(405, "Method not supported", method)

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return auth == f"Basic {expected}"

    def _list(self, rows: list[dict[str, str]], query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if query.get("sysparm_display_value", "false") != "false":
            return _error(400, "this fake serves raw values only", "")
        selected = [r for r in rows if _matches(r, query.get("sysparm_query", ""))]
        for column in reversed(_order(query.get("sysparm_query", ""))):
            if any(column in r for r in rows):  # an unknown ORDERBY column is ignored, like ServiceNow
                selected.sort(key=lambda r, c=column: r.get(c, ""))  # type: ignore[misc]
        total = len(selected)
        offset = int(query.get("sysparm_offset", "0") or 0)
        limit = int(query.get("sysparm_limit", "10000") or 10000)
        page = selected[offset : offset + limit]
        if not page and self.empty_404:
            return _error(404, "No Record found", "Records matching query not found.")
        result = [self._project(r, query.get("sysparm_fields", "")) for r in page]
        return _ok({"result": result}, {"X-Total-Count": str(total)})

    def _project(self, record: dict[str, str], fields: str) -> dict[str, str]:
        names = [f for f in fields.split(",") if f] or list(record)
        out: dict[str, str] = {}
        for name in names:
            base, _, attr = name.partition(".")
            if attr:
                if base in record:  # dot-walk a reference: "" when the reference is empty
                    out[name] = NAMES.get(record[base], "") if attr == "name" else ""
            elif name in record:
                out[name] = record[name]
            elif name in JOURNAL_FIELDS and "number" in record:
                out[name] = ""  # journal fields read back empty in raw mode; entries live in sys_journal_field
        return out


def _matches(record: dict[str, str], encoded: str) -> bool:
    """AND of conditions, ``^OR`` binding to the previous one; unknown fields are ignored (vendor quirk)."""
    groups: list[list[tuple[str, str, str]]] = []
    for part in encoded.split("^"):
        if not part or part.startswith(("ORDERBY", "EQ")):
            continue
        is_or = part.startswith("OR") and not _COND.match(part)
        m = _COND.match(part[2:] if is_or else part)
        if not m:
            continue
        field, op, value = m.groups()
        if field.split(".")[0] not in record:
            continue  # ServiceNow silently drops conditions on unknown fields
        if is_or and groups:
            groups[-1].append((field, op, value))
        else:
            groups.append([(field, op, value)])
    return all(any(_cond(record, f, o, v) for f, o, v in group) for group in groups)


def _cond(record: dict[str, str], field: str, op: str, value: str) -> bool:
    base, _, attr = field.partition(".")
    actual = NAMES.get(record.get(base, ""), "") if attr else record.get(field, "")
    return {
        "=": actual == value,
        "!=": actual != value,
        ">=": actual >= value,
        "<=": actual <= value,
        ">": actual > value,
        "<": actual < value,
        "LIKE": value in actual,
    }[op]


def _order(encoded: str) -> list[str]:
    return [p[len("ORDERBY") :] for p in encoded.split("^") if p.startswith("ORDERBY")]


def _ok(payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


def _error(status: int, message: str, detail: str) -> tuple[int, dict[str, str], bytes]:
    body = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def register_responses(rsps: Any, fake: FakeInstance, base: str = INSTANCE) -> None:
    """Route every Table API call of ``rsps`` (a ``responses.RequestsMock``) to ``fake``."""
    pattern = re.compile(re.escape(base) + r"/api/now/table/.*")

    def callback(request: Any) -> tuple[int, dict[str, str], bytes]:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        return fake.handle(request.method, request.url, dict(request.headers), body)

    for method in ("GET", "PATCH", "PUT"):
        rsps.add_callback(method, pattern, callback=callback)


class FakeServiceNowServer:
    """:class:`FakeInstance` served over HTTPS on 127.0.0.1 (pysnc refuses http://).

    ``ca_pem`` is the path of the throwaway CA to trust (``REQUESTS_CA_BUNDLE`` / ``session.verify``).
    """

    def __init__(self, fake: FakeInstance, ca_dir: str) -> None:
        import trustme

        self.fake = fake
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_pem = f"{ca_dir}/servicenow-ca.pem"
        ca.cert_pem.write_to_path(self.ca_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        instance = fake

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = instance.handle(
                    self.command, f"https://127.0.0.1{self.path}", dict(self.headers.items()), body
                )
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve  # noqa: N815
            do_PATCH = _serve  # noqa: N815
            do_PUT = _serve  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeServiceNowServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
