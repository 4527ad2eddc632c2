"""Pasted rules are code any console user (read-only included) may run: the playground and the backtest evaluate
them in a child process under CPU, memory and wall-clock limits, so a template that loops over ticket text inside
loops or grows a string costs that child, not the service; and they resolve only the variables the live rules use."""

from __future__ import annotations

import html
import json
import re
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kernel.clock import FakeClock
from sync.metrics import METRICS
from tests.factories import ROUTING_KEY, change, ticket
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service, receive
from ticketpager.app import build_app
from ticketpager.console import lab
from ticketpager.service import Service

READONLY = "console-readonly-token-987654321"
TOKEN = "console-admin-token-0123456789"
#: a summary whose rendering takes len(title)³ steps: minutes of CPU for a 600-character title, no memory
CUBIC = "{% for a in ticket.title %}{% for b in ticket.title %}{% for c in ticket.title %}" + "{% endfor %}" * 3
SLOW_TITLE = "a" * 600

RULES = """\
version: 1
rules:
  - name: slow-title
    source: jira
    when:
      title: {contains: a}
    trigger:
      routing_key: ${PD_PLATFORM_KEY}
      severity: critical
      summary: "CUBIC"
""".replace("CUBIC", CUBIC)
PLAIN = RULES.replace(CUBIC, "{{ ticket.title }}").replace("contains: a", "contains: Down")


@pytest.fixture
def service(db_url: str, rules_path: Path, pd: MockPagerDuty, clock: FakeClock) -> Iterator[Service]:
    svc = make_service(
        db_url, rules_path, pd.url, clock, console={"enabled": True, "token": TOKEN, "readonly_token": READONLY}
    )
    yield svc
    svc.store.dispose()


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(build_app(service), base_url="http://console.test", follow_redirects=False) as c:
        form = c.get("/console/login")
        answer = c.post("/console/login", data={"csrf": _csrf(form.text), "token": READONLY, "next": "/"})
        assert answer.status_code == 303
        yield c


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match
    return match.group(1)


def _ticket_json(title: str) -> str:
    return json.dumps(ticket("7", title=title).to_json())


def _runs(job: str, outcome: str) -> float:
    return (
        METRICS.registry.get_sample_value("ticketpager_console_lab_runs_total", {"job": job, "outcome": outcome}) or 0.0
    )


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def test_a_template_that_loops_burns_the_childs_cpu_not_the_services(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only user pastes a rule whose summary loops over the title inside two more loops: the page says it
    was stopped and why, the CPU was spent by the child (this process stays idle meanwhile), a warning is logged and
    counted."""
    monkeypatch.setattr(lab, "PLAYGROUND_LIMITS", lab.Limits(memory_bytes=384 * 2**20, cpu_seconds=1, wall_seconds=30))
    page = client.get("/console/rules")
    before = _runs("playground", "cpu")
    ours, children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    answer = client.post(
        "/console/rules/playground",
        data={"csrf": _csrf(page.text), "rules": RULES, "ticket": _ticket_json(SLOW_TITLE)},
    )
    ours, children = _cpu(resource.RUSAGE_SELF) - ours, _cpu(resource.RUSAGE_CHILDREN) - children
    assert answer.status_code == 200
    shown = html.unescape(answer.text)
    assert "stopped after 1 s of CPU" in shown and "loops over ticket text inside loops" in shown
    assert children >= 0.9, f"the child ran the regex ({children:.2f} CPU-s)"
    assert ours < 0.6, f"this process spent {ours:.2f} CPU-s: the regex ran here"
    assert _runs("playground", "cpu") == before + 1
    said = [r.getMessage() for r in caplog.records]
    assert any("playground by read-only token" in m and "after 1 s of CPU" in m for m in said), said


def test_a_wall_clock_deadline_ends_an_evaluation_whatever_it_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent kills the child at its wall-clock deadline even while CPU time is left."""
    limits = lab.Limits(memory_bytes=384 * 2**20, cpu_seconds=60, wall_seconds=1.5)
    env = {"PD_PLATFORM_KEY": ROUTING_KEY}
    started = time.monotonic()
    result, errors, _ = lab.playground(RULES, _ticket_json(SLOW_TITLE), env, limits=limits)
    took = time.monotonic() - started
    assert result is None and errors == [f"stopped after 1.5 s: {lab.HINT}"]
    assert took < 10, f"the evaluation was not stopped ({took:.1f} s)"


def test_memory_is_the_childs_the_service_keeps_its_own() -> None:
    """A template that multiplies ticket text into hundreds of MB grows the child, whose limit stops it, never the
    service: this process's peak memory does not move. A child that cannot work within its limit says so."""
    rules = PLAIN.replace("contains: Down", "contains: x").replace(
        'summary: "{{ ticket.title }}"', "summary: \"{{ ticket.labels | join(' ') * 2000 }}\""
    )
    big = json.dumps(ticket("7", title="x", labels=["y" * 1000] * 400).to_json())  # * 2000: an 800 MB summary
    env = {"PD_PLATFORM_KEY": ROUTING_KEY}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    result, errors, _ = lab.playground(rules, big, env)
    assert errors == [] and result is not None and len(result.events) == 1, "the summary fell back, the page did not"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 * 1024, "the service's own memory grew"
    tiny = lab.Limits(memory_bytes=48 * 2**20, cpu_seconds=20, wall_seconds=30)  # less than Python needs to start
    result, errors, _ = lab.playground(rules, big, env, limits=tiny)
    assert result is None and errors == [f"stopped: it needed more than 48 MiB of memory: {lab.HINT}"]


def test_a_second_evaluation_waits_then_is_told_the_playground_is_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """One evaluation at a time per process: another waits up to LAB_QUEUE_SECONDS, then is told to try again."""
    monkeypatch.setattr(lab, "LAB_QUEUE_SECONDS", 0.2)
    slow = lab.Limits(memory_bytes=384 * 2**20, cpu_seconds=3, wall_seconds=30)
    env = {"PD_PLATFORM_KEY": ROUTING_KEY}
    first = threading.Thread(
        target=lab.playground, args=(RULES, _ticket_json(SLOW_TITLE), env), kwargs={"limits": slow}
    )
    first.start()
    try:
        deadline = time.monotonic() + 10
        while lab._slots.acquire(blocking=False):  # noqa: SLF001 - wait for the first to hold the slot
            lab._slots.release()  # noqa: SLF001
            assert time.monotonic() < deadline, "the first evaluation never started"
            time.sleep(0.01)
        _, errors, _ = lab.playground(RULES, _ticket_json("quick"), env)
        assert errors == ["another evaluation is running: try again in a moment"]
    finally:
        first.join(30)
    result, errors, _ = lab.playground(RULES, _ticket_json("quick"), env)
    assert errors == [] and result is not None, "free again once the first ended"


def test_pasted_rules_resolve_only_the_variables_the_live_rules_use(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A routing key ``${NAME}`` resolves in the playground only when a live rule file uses NAME: the console's own
    token, or any other variable of the server, reads as unset (not even its last four characters are shown)."""
    monkeypatch.setenv("SERVER_ONLY_SECRET", "server-only-secret-value-0000WXYZ")
    page = client.get("/console/rules")
    rules = PLAIN
    probes = {
        "live": rules,
        "server": rules.replace("${PD_PLATFORM_KEY}", "${SERVER_ONLY_SECRET}"),
        "token": rules.replace("${PD_PLATFORM_KEY}", "${TICKETPAGER_CONSOLE__TOKEN}"),
    }
    monkeypatch.setenv("TICKETPAGER_CONSOLE__TOKEN", TOKEN)
    shown = {}
    for name, text in probes.items():
        answer = client.post(
            "/console/rules/playground",
            data={"csrf": _csrf(page.text), "rules": text, "ticket": _ticket_json("Checkout Down")},
        )
        shown[name] = html.unescape(answer.text)
    assert "****" + ROUTING_KEY[-4:] in shown["live"], "the live rules' key resolves, masked"
    for name in ("server", "token"):
        assert "WXYZ" not in shown[name] and TOKEN[-4:] not in shown[name]
        assert "is not set" in shown[name], shown[name][-2000:]


def test_the_backtest_replays_stored_changes_in_the_child(
    client: TestClient, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backtest streams the stored changes to the child: its answer counts them, and a backtracking rule is
    stopped there too."""
    receive(service, [change(ticket(str(n), title=f"Checkout Down {n}")) for n in range(1, 6)])
    service.process_all()
    page = client.get("/console/rules")
    plain = PLAIN
    answer = client.post(
        "/console/rules/backtest", data={"csrf": _csrf(page.text), "rules": plain, "connection": "jira", "days": "7"}
    )
    assert "Would have paged <strong>5</strong> tickets, <strong>0</strong> of them not paged today" in answer.text
    assert "5 versions of 5 jira tickets" in answer.text
    monkeypatch.setattr(lab, "BACKTEST_LIMITS", lab.Limits(memory_bytes=384 * 2**20, cpu_seconds=1, wall_seconds=30))
    receive(service, [change(ticket("9", title=SLOW_TITLE))])
    answer = client.post(
        "/console/rules/backtest", data={"csrf": _csrf(page.text), "rules": RULES, "connection": "jira", "days": "7"}
    )
    assert "stopped after 1 s of CPU" in html.unescape(answer.text)
