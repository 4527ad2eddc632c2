"""The console's login limit against a real ``ticketpager serve`` (uvicorn, real sockets from 127.0.0.1, as behind
a local proxy): the address it counts is the TCP peer's whatever ``X-Forwarded-For`` says, unless
``TRUST_PROXY_HEADERS`` says a proxy sets that header; guesses sent all at once, each waiting out the real PBKDF2
check, are held to the limit like guesses sent one after another."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.factories import ROUTING_KEY, RULES
from tests.serve_proc import Serve, cli_env
from tests.test_console import PASSWORD, TOKEN, csrf
from ticketpager.console.auth import hash_password
from ticketpager.console.ratelimit import MAX_FAILURES

#: ports these tests' servers may listen on
PORTS = range(18300, 18400)
#: nothing listens there: the console's tests send no page
NO_PAGERDUTY = "http://127.0.0.1:9/v2/enqueue"
#: password guesses sent at once, three times the limit
PARALLEL_GUESSES = 3 * MAX_FAILURES


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


def login(server: Serve, forwarded_for: str, ready: threading.Barrier | None = None, **credentials: str) -> int:
    """One login (form, then POST) from this test's 127.0.0.1 saying ``X-Forwarded-For: forwarded_for``; with
    ``ready``, the POST waits until every other party has its form too."""
    with requests.Session() as session:
        session.trust_env = False  # loopback, never a proxy from the environment
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        form = session.get(f"{server.url}/console/login", headers=headers, timeout=30)
        if ready is not None:
            ready.wait(timeout=30)
        answer = session.post(
            f"{server.url}/console/login",
            data={"csrf": csrf(form.text), **credentials},
            headers=headers,
            allow_redirects=False,
            timeout=60,
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


def test_guesses_sent_at_once_are_held_to_the_limit(tmp_path: Path) -> None:
    """The password is checked with the production PBKDF2 cost, so all the guesses are in the server at once:
    only the limit's number are checked (401), the others refused unchecked (429), and the address stays blocked."""
    server = serve_console(tmp_path, username="lead", password_hash=hash_password(PASSWORD))
    try:
        ready = threading.Barrier(PARALLEL_GUESSES)
        answers: list[int] = []

        def guess(n: int) -> None:
            answers.append(login(server, "", ready, username="lead", password=f"guess {n}"))

        threads = [threading.Thread(target=guess, args=(n,)) for n in range(PARALLEL_GUESSES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert Counter(answers) == {401: MAX_FAILURES, 429: PARALLEL_GUESSES - MAX_FAILURES}
        assert login(server, "", username="lead", password=PASSWORD) == 429, "the right password is not checked"
    finally:
        assert server.stop() == 0, server.output()
