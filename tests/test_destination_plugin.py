"""A second destination is one module plus one registry line: a chat webhook (defined here, against a local
HTTP fake) takes PagerDuty's place for incident actions, and delivery, retries, ``Retry-After``, dead letters
and ``deadletters retry`` work for it unchanged (nothing in sync/ or connectors/ was edited for it)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from kernel import jsonutil
from kernel.clock import Clock, FakeClock
from kernel.errors import Kind, StatusRule, StatusTable, classify_status, network_error
from kernel.model import Action, IncidentAction, Outbound, Outcome, Rendered
from sync.store import Store
from tests.factories import change, ticket
from tests.harness import receive
from ticketpager.service import DESTINATIONS, Service
from ticketpager.settings import Settings

# -- the plug-in: what adding a destination takes ----------------------------------------------------------
CHAT_STATUS: StatusTable = {  # the chat's own answers (an invented vendor: Slack-like incoming webhooks)
    400: StatusRule(Kind.PERMANENT, "https://chat.example/docs/webhooks", "invalid message"),
    429: StatusRule(Kind.RETRYABLE, "https://chat.example/docs/rate-limits", "rate limited"),
}


class ChatDestination:
    """Incident actions posted as chat messages to one incoming-webhook URL."""

    name = "chat"
    label = "Chat"
    limiter = None

    def __init__(self, url: str, clock: Clock, timeout: float = 2.0) -> None:
        self.url, self.clock, self.timeout = url, clock, timeout
        self.session = requests.Session()

    def render(self, action: Action) -> Rendered:
        assert isinstance(action, IncidentAction)
        event, where = action.event, action.ticket.key if action.ticket else "?"
        text = f"{event.action.value}: {where} (rule {event.rule})"
        return Rendered(jsonutil.dumps({"text": text, "thread": event.dedup_key}))

    def send(self, item: Outbound, *, timeout: float | None = None) -> Outcome:
        try:
            answer = self.session.post(self.url, data=item.body.encode(), timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise network_error("Chat", exc) from None
        error = classify_status(
            "Chat", answer.status_code, CHAT_STATUS, message=answer.text[:200], headers=answer.headers,
            now=self.clock.now(),
        )  # fmt: skip
        if error is not None:
            raise error
        return Outcome(answer.status_code)

    def preview(self, item: Outbound) -> str:
        return item.body


# -- a local chat server -----------------------------------------------------------------------------------
class FakeChat:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str], str]] = []  # scripted answers, then 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers, text = fake.answers.pop(0) if fake.answers else (200, {}, "ok")
                if status == 200:
                    fake.messages.append(json.loads(body))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000"


@pytest.fixture
def chat() -> Iterator[FakeChat]:
    fake = FakeChat()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def service(
    db_url: str, rules_path: Path, clock: FakeClock, chat: FakeChat, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Service]:
    monkeypatch.setitem(DESTINATIONS, "chat", lambda svc: ChatDestination(chat.url, svc.clock))  # the registry line
    settings = Settings(_env_file=None, database_url=db_url, rules_path=rules_path)  # type: ignore[call-arg]
    store = Store(db_url)
    store.upgrade()
    svc = Service(settings, clock=clock, store=store, incidents="chat")
    yield svc
    store.dispose()


def _outbox(svc: Service) -> list[tuple[str, str, str, int]]:
    with svc.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT destination, action, status, attempts FROM outbox ORDER BY id").all()
    return [(str(d), str(a), str(s), int(n)) for d, a, s, n in rows]


def test_a_page_goes_to_the_chat_destination_as_it_rendered_it(service: Service, chat: FakeChat) -> None:
    receive(service, [change(ticket("10042", key="OPS-12"))])
    service.process_all()
    thread = "ticketpager/jira/10042/ops-highest/1"
    assert chat.messages == [{"text": "trigger: OPS-12 (rule ops-highest)", "thread": thread}]
    assert _outbox(service) == [("chat", "trigger", "sent", 1)]


def test_the_chat_saying_later_is_honoured_then_sent_once(
    service: Service, chat: FakeChat, clock: FakeClock
) -> None:
    chat.answers = [(429, {"Retry-After": "30"}, "slow down")]
    receive(service, [change(ticket("10042", key="OPS-12"))])
    service.process_all()
    assert chat.messages == [] and _outbox(service) == [("chat", "trigger", "pending", 1)]
    clock.advance(29)
    service.process_all()
    assert chat.messages == []  # not before the chat asked
    clock.advance(1)
    service.process_all()
    assert len(chat.messages) == 1 and _outbox(service) == [("chat", "trigger", "sent", 2)]


def test_a_refused_message_is_a_dead_letter_that_deadletters_retry_redrives(
    service: Service, chat: FakeChat, clock: FakeClock
) -> None:
    chat.answers = [(400, {}, "invalid_blocks")]
    receive(service, [change(ticket("10042", key="OPS-12"))])
    service.process_all()
    assert chat.messages == [] and _outbox(service) == [("chat", "trigger", "dead", 1)]
    [dead] = service.store.dead_letters()
    assert "Chat answered HTTP 400: invalid_blocks (invalid message)" in dead["last_error"]
    assert service.store.retry_dead(None, clock.now())  # what `deadletters retry` runs == (1, 0)
    service.process_all()
    assert len(chat.messages) == 1 and _outbox(service) == [("chat", "trigger", "sent", 1)]
