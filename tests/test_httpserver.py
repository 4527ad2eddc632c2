"""The HTTP server's main loop ticks once a second (issue 19: idle cost), yet a stop request is acted on at
once and the Date header stays current."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Any

import uvicorn

from bench.bench_ingest import free_port, wait_ready
from ticketpager.httpserver import Server


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


class SlowTicks(Server):
    tick_seconds = 60.0  # a stop that waited for the tick would take a minute


def test_a_stop_request_ends_the_server_at_once_although_its_tick_is_long() -> None:
    port = free_port()
    server = SlowTicks(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)  # not the main thread: uvicorn installs no handlers
    thread.start()
    wait_ready(port, path="/")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:  # noqa: S310 - loopback
        date = parsedate_to_datetime(response.headers["Date"])
    assert abs(date.timestamp() - time.time()) < 5  # refreshed at start-up, as uvicorn does

    started = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10  # not the 60 s tick
