"""Named connections in operations (issue 17): the engine's metrics labelled with the connection (bounded: an
unconfigured one counts as ``unknown``), ``ticketpager status`` with a line per connection, and two replicas
sharing the connections' poll leases (``poll:<connection>``) so that no connection is ever polled by both."""

from __future__ import annotations

import base64
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import responses
from sqlalchemy import select
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from kernel.fields import declare_connections
from sync.schema import leases
from tests.factories import change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.fakes.zendesk_server import FakeZendesk
from tests.harness import make_service, receive, wait_until
from tests.test_zendesk_poll import page
from tests.test_zendesk_poll import ticket as zendesk_ticket
from ticketpager import cli
from ticketpager.app import build_app
from ticketpager.service import Service

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _forget_connections() -> Iterator[None]:
    yield
    declare_connections({})  # rule validation of later tests knows only the default connections


def metric(text: str, series: str) -> float:
    """The value of one series of the ``/metrics`` text (0 when it is not there yet)."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# -- metrics ------------------------------------------------------------------------------------------------------
def test_engine_metrics_are_labelled_with_the_connection_and_an_unconfigured_one_is_unknown(
    db_url: str, rules_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "connections.yaml").write_text(
        "connections:\n  - name: eng-jira\n    system: jira\n    url: https://eng.atlassian.net\n"
    )
    svc = make_service(
        db_url,
        rules_path,
        "http://127.0.0.1:9/v2/enqueue",
        FakeClock(),
        connections_file=str(tmp_path / "connections.yaml"),
    )
    series = {
        name: f'ticketpager_changes_processed_total{{outcome="paged",source="{name}"}}'
        for name in ("eng-jira", "jira", "unknown", "retired-jira")
    }
    try:
        with TestClient(build_app(svc)) as client:
            before = {name: metric(client.get("/metrics").text, s) for name, s in series.items()}
            receive(
                svc,
                [
                    change(ticket("1", connection="eng-jira")),
                    change(ticket("2", connection="eng-jira")),
                    change(ticket("3")),  # the default connection: named after its system
                    change(ticket("4", connection="retired-jira")),  # removed from the connections file since
                ],
            )
            assert svc.engine.drain() == 4
            text = client.get("/metrics").text
    finally:
        svc.store.dispose()
    after = {name: metric(text, s) for name, s in series.items()}
    assert {name: after[name] - before[name] for name in series} == {
        "eng-jira": 2,
        "jira": 1,
        "unknown": 1,
        "retired-jira": 0,
    }
    assert 'source="retired-jira"' not in text, "an unconfigured connection must not become a label"


# -- ticketpager status ------------------------------------------------------------------------------------------
CONNECTIONS = """\
connections:
  - name: acme-zendesk-emea
    system: zendesk
    subdomain: acme
    email: api@acme.example
    api_token: acme-token-1
  - name: globex-zendesk
    system: zendesk
    subdomain: globex
    email: api@globex.example
    api_token: globex-token-2
"""
ACME_EXPORT = "https://acme.zendesk.com/api/v2/incremental/tickets/cursor.json"
GLOBEX_EXPORT = "https://globex.zendesk.com/api/v2/incremental/tickets/cursor.json"


@responses.activate
def test_status_shows_one_line_per_connection_with_its_own_last_poll_and_error(
    db_url: str, rules_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "connections.yaml").write_text(CONNECTIONS)
    svc = make_service(
        db_url,
        rules_path,
        "http://127.0.0.1:9/v2/enqueue",
        FakeClock(NOW),
        connections_file=str(tmp_path / "connections.yaml"),
        zendesk={"enabled": True, "subdomain": "default", "email": "api@d.example", "api_token": "default-token"},
    )
    responses.get(ACME_EXPORT, json=page([zendesk_ticket(31)], "A1", True))
    responses.get(GLOBEX_EXPORT, json={"error": "Couldn't authenticate you"}, status=401)
    try:
        assert svc.poll_source("acme-zendesk-emea").error is None
        assert svc.poll_source("globex-zendesk").error is not None
    finally:
        svc.store.dispose()
    assert cli.main(["--database-url", db_url, "status"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("connection ")]
    assert len(lines) == 2, out  # the default zendesk never polled: no line
    acme, globex = lines
    assert acme.startswith("connection acme-zendesk-emea  last poll 2026-12-04T09:00:00"), out
    assert "ERROR" not in acme
    assert globex.startswith("connection globex-zendesk     last poll never   ERROR (permanent)"), out
    assert "401" in globex
    assert acme.index("last poll") == globex.index("last poll"), "the columns line up whatever the names' length"

    assert cli.main(["--database-url", db_url, "status", "--check"]) == 1
    [problem] = capsys.readouterr().out.splitlines()
    assert problem.startswith("PROBLEM: globex-zendesk: the last poll failed (permanent)"), problem


# -- two replicas share the connections' poll leases ---------------------------------------------------------------
class CountingZendesk(FakeZendesk):
    """A Zendesk that answers slowly and notes which replica asked (by the token of its connections file) and
    whether two polls of it ever overlapped."""

    def __init__(self, tokens: dict[str, str]) -> None:
        super().__init__()
        self.tokens = tokens  # token -> replica
        self.polls: list[str] = []  # the replica of each export request, in order
        self.in_flight = 0
        self.log: list[tuple[float, str | None, str, int]] = []
        self.most_in_flight = 0
        self._count = threading.Lock()

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        sent = request.headers.get("Authorization", "")
        who = next((r for t, r in self.tokens.items() if sent.endswith(self._basic(t))), None)
        exporting = "/incremental/" in request.path
        with self._count:
            if exporting and who is not None:
                self.polls.append(who)
            self.log.append((time.monotonic(), who, request.path, self.in_flight))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.1)  # a poll takes a while: two at once would overlap
            del request.headers["Authorization"]
            request.headers["Authorization"] = "Basic " + self._basic(self.token)
            super()._handle(request, method)
        finally:
            with self._count:
                self.in_flight -= 1

    def _basic(self, token: str) -> str:
        return base64.b64encode(f"{self.email}/token:{token}".encode()).decode()


def connections_file(path: Path, fakes: dict[str, CountingZendesk], token: str) -> Path:
    entries = "".join(
        textwrap.dedent(
            f"""\
              - name: {name}
                system: zendesk
                url: {fake.url}
                email: {fake.email}
                api_token: {token}
                poll_interval_seconds: 0.3
                min_request_interval_seconds: 0
            """
        )
        for name, fake in fakes.items()
    )
    path.write_text("connections:\n" + textwrap.indent(entries, "  "))
    return path


def held_leases(svc: Service) -> dict[str, str]:
    with svc.store.engine.connect() as conn:
        rows = conn.execute(select(leases.c.name, leases.c.holder).where(leases.c.name.like("poll:%"))).all()
    return {str(name): str(holder) for name, holder in rows}


@pytest.mark.postgres
def test_two_replicas_share_the_poll_leases_and_never_poll_one_connection_at_once(
    postgres_url: str, rules_path: Path, tmp_path: Path
) -> None:
    names = ("acme-zendesk", "globex-zendesk", "initech-zendesk", "umbrella-zendesk")
    tokens = {"token-of-a": "a", "token-of-b": "b"}
    # the replicas' leases and heartbeats never expire by themselves (only a stop frees them): the clock moves only
    # if a connector sleeps on it, so Zendesk's export pacing is off; the fake Zendesk runs on real time
    clock = FakeClock(datetime.now(UTC))
    with MockPagerDuty() as pd:
        fakes = {name: CountingZendesk(tokens) for name in names}
        for fake in fakes.values():
            fake.__enter__()
        replicas: dict[str, Service] = {}
        stopped: set[str] = set()
        try:
            for who, token in (("a", "token-of-a"), ("b", "token-of-b")):
                file = connections_file(tmp_path / f"connections-{who}.yaml", fakes, token)
                replicas[who] = make_service(postgres_url, rules_path, pd.url, clock, connections_file=str(file))
            a, b = replicas["a"], replicas["b"]
            assert sorted(a.pollable_sources()) == sorted(b.pollable_sources()) == sorted(names)
            a.start()
            b.start()
            assert wait_until(lambda: all(len(f.polls) >= 3 for f in fakes.values())), {
                n: f.polls for n, f in fakes.items()
            }
            holders = held_leases(a)
            assert clock.sleeps == [], "a clock that moved could expire a live replica's lease"
            assert sorted(holders) == [f"poll:{name}" for name in sorted(names)]
            owner = {a.instance: "a", b.instance: "b"}
            for name, fake in fakes.items():
                assert fake.most_in_flight == 1, f"{name} was polled by both replicas at once: {fake.log}"
                assert set(fake.polls) == {owner[holders[f'poll:{name}']]}, (name, fake.polls, holders)

            a.stop()
            stopped.add("a")  # A's leases are handed back: B polls every connection from now on
            seen = {name: len(fake.polls) for name, fake in fakes.items()}
            assert wait_until(lambda: all(len(f.polls) >= seen[n] + 2 for n, f in fakes.items()))
            assert set(held_leases(b).values()) == {b.instance}
            for name, fake in fakes.items():
                assert fake.polls[seen[name] + 1 :] == ["b"] * len(fake.polls[seen[name] + 1 :]), (name, fake.polls)
                assert fake.most_in_flight == 1, f"{name} was polled by both replicas at once: {fake.log}"
        finally:
            for who, svc in replicas.items():
                if who not in stopped:
                    svc.stop()
                svc.store.dispose()
            for fake in fakes.values():
                fake.__exit__(None, None, None)
