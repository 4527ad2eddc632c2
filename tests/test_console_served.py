"""The console's login limit against a real ``ticketpager serve`` (uvicorn, real sockets from 127.0.0.1, as behind
a local proxy): the address it counts is the TCP peer's whatever ``X-Forwarded-For`` says, unless
``TRUST_PROXY_HEADERS`` says a proxy sets that header."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.factories import ROUTING_KEY, RULES
from tests.serve_proc import Serve, cli_env
from tests.test_console import TOKEN, csrf
from ticketpager.console.ratelimit import MAX_FAILURES

#: ports these tests' servers may listen on
PORTS = range(18300, 18400)
#: nothing listens there: the console's tests send no page
NO_PAGERDUTY = "http://127.0.0.1:9/v2/enqueue"


def free_port() -> int:
    """The first port of :data:`PORTS` nothing listens on."""
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def serve_console(tmp_path: Path, **console: str) -> Serve:
    """``serve --dry-run`` with the console on (its admin token :data:`TOKEN`), plus ``TICKETPAGER_CONSOLE__*``."""
    rules = tmp_path / "ops.yaml"
    rules.write_text(RULES)
    env = cli_env(
        tmp_path,
        rules=rules,
        pagerduty_url=NO_PAGERDUTY,
        PD_PLATFORM_KEY=ROUTING_KEY,
        TICKETPAGER_DRY_RUN="true",
        TICKETPAGER_CONSOLE__ENABLED="true",
        TICKETPAGER_CONSOLE__TOKEN=TOKEN,
        **{f"TICKETPAGER_CONSOLE__{name.upper()}": value for name, value in console.items()},
    )
    server = Serve(env, port=free_port())
    server.env = env | {"TICKETPAGER_PORT": str(server.port)}  # not the caller's TICKETPAGER_* settings
    return server.start()


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[Serve]:
    """The console as deployed without a trusted proxy (the default)."""
    server = serve_console(tmp_path)
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Serve]:
    """The console told that its proxy sets ``X-Forwarded-For``."""
    server = serve_console(tmp_path, trust_proxy_headers="true")
    yield server
    assert server.stop() == 0, server.output()


def login(server: Serve, forwarded_for: str, **credentials: str) -> int:
    """One login (form, then POST) from this test's 127.0.0.1 saying ``X-Forwarded-For: forwarded_for``."""
    with requests.Session() as session:
        session.trust_env = False  # loopback, never a proxy from the environment
        headers = {"X-Forwarded-For": forwarded_for}
        form = session.get(f"{server.url}/console/login", headers=headers, timeout=30)
        answer = session.post(
            f"{server.url}/console/login",
            data={"csrf": csrf(form.text), **credentials},
            headers=headers,
            allow_redirects=False,
            timeout=30,
        )
        return answer.status_code


def test_a_client_cannot_choose_its_address_with_x_forwarded_for_by_default(direct: Serve) -> None:
    """Each guess says it comes from somewhere else: all are counted against the peer, 127.0.0.1."""
    for n in range(MAX_FAILURES):
        assert login(direct, f"198.51.100.{n + 1}", token="guess") == 401
    assert login(direct, "198.51.100.200", token="guess") == 429, "the peer's limit, whatever the header says"
    assert login(direct, "198.51.100.201", token=TOKEN) == 429, "not even the right token is checked"
    direct.stop()
    assert "failed login from 127.0.0.1" in direct.output()
    assert "198.51.100." not in direct.output(), "no address the client made up is logged"


def test_with_trusted_proxy_headers_the_forwarded_address_is_counted(proxied: Serve) -> None:
    for n in range(MAX_FAILURES + 1):
        assert login(proxied, f"198.51.100.{n + 1}", token="guess") == 401, "each address is its own"
    for _ in range(MAX_FAILURES - 1):
        assert login(proxied, "198.51.100.1", token="guess") == 401
    assert login(proxied, "198.51.100.1", token=TOKEN) == 429, "that address failed too often"
    assert login(proxied, "198.51.100.2", token=TOKEN) == 303, "another address still logs in"
    proxied.stop()
    assert "failed login from 198.51.100.11" in proxied.output()
