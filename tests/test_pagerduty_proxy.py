"""The events sink reads the proxy settings of its environment once, when it is made (not on every POST,
which cost a fifth of a send's CPU), and still honours them: a real forward proxy on loopback sees the
event, and ``NO_PROXY`` still bypasses it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connectors.pagerduty import PagerDutySink

EVENTS_URL = "http://events.pagerduty.invalid/v2/enqueue"  # .invalid never resolves: only a proxy reaches it


class _Proxy:
    """A forward HTTP proxy that answers as PagerDuty would and records the request lines it was sent."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.lines.append(self.requestline)
                body = b'{"status":"success","message":"Event processed","dedup_key":"k"}'
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Proxy]:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = _Proxy()
    yield server
    server.close()


def test_the_sink_sends_through_the_proxy_its_environment_names(proxy: _Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    sink = PagerDutySink(EVENTS_URL, timeout=5)
    monkeypatch.delenv("HTTP_PROXY")  # read once, when the sink was made
    for _ in range(2):
        sink.send({"routing_key": "r" * 32, "event_action": "trigger", "payload": {}})
    assert proxy.lines == [f"POST {EVENTS_URL} HTTP/1.1"] * 2


def test_no_proxy_still_bypasses_the_proxy(proxy: _Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    sink = PagerDutySink(f"{proxy.url}/v2/enqueue", timeout=5)  # the proxy server, spoken to directly
    sink.send({"routing_key": "r" * 32, "event_action": "trigger", "payload": {}})
    assert proxy.lines == ["POST /v2/enqueue HTTP/1.1"]
