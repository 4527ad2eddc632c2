"""`rules backtest` shows progress on a terminal (pages, tickets, elapsed, waiting for the vendor's rate
limit) on stderr, is quiet when piped, and reports a vendor failure as one sentence (no urllib3 reprs)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.zendesk_server import FakeZendesk
from ticketpager import cli

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "examples" / "zendesk-vip-urgent.yaml"
GOLD = 4001


def zendesk_env(zd: FakeZendesk) -> dict[str, str]:
    return {
        "TICKETPAGER_ZENDESK__URL": zd.url,
        "TICKETPAGER_ZENDESK__EMAIL": zd.email,
        "TICKETPAGER_ZENDESK__API_TOKEN": zd.token,
        "TICKETPAGER_ZENDESK__PAGE_SIZE": "2",  # two export pages for five tickets
        "TICKETPAGER_ZENDESK__MIN_REQUEST_INTERVAL_SECONDS": "0.3",  # Zendesk's pacing, kept short
        "NO_PROXY": "127.0.0.1,localhost",
    }


def five_tickets(zd: FakeZendesk) -> None:
    zd.add_organization(GOLD, "Gold Customer Ltd", ["gold"])
    for tid in range(1, 6):
        zd.add_ticket(tid, priority="urgent", status="open", organization_id=GOLD, age_seconds=600 - tid)


def run_on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """The real CLI with stderr on a pseudo-terminal (stdout piped): what an admin at a shell sees."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "ticketpager.cli", *argv],
        cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=secondary,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([primary], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode() if proc.stdout else ""
    code = proc.wait(timeout=30)
    os.close(primary)
    if proc.stdout:
        proc.stdout.close()
    return code, out, b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_backtest_shows_pages_tickets_and_the_rate_limit_wait(tmp_path: Path) -> None:
    with FakeZendesk() as zd:
        five_tickets(zd)
        code, out, terminal = run_on_a_terminal(
            ["rules", "backtest", str(RULES), "--source", "zendesk", "--since", "1h"],
            {**zendesk_env(zd), "PD_SUPPORT_KEY": "R0SUPPORT0000000000000000000000A"},
            tmp_path,
        )
    assert code == 0, terminal
    assert "5 ticket versions from zendesk" in out
    assert re.search(r"zendesk: page 1, 2 tickets, \d+ s", terminal), terminal
    assert re.search(r"zendesk: page 2, 5 tickets, \d+ s", terminal), terminal
    assert "waiting 0.3 s for zendesk (its rate limit, or a retry)" in terminal, terminal
    assert "zendesk:" not in out, "progress goes to the terminal's stderr, never into the report"


def test_piped_backtest_prints_no_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeZendesk() as zd:
        five_tickets(zd)
        for key, value in {**zendesk_env(zd), "PD_SUPPORT_KEY": "R0SUPPORT0000000000000000000000A"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path)
        code = cli.main(["rules", "backtest", str(RULES), "--source", "zendesk", "--since", "1h"])
    captured = capsys.readouterr()
    assert code == 0 and "5 ticket versions from zendesk" in captured.out
    assert "page " not in captured.err and "waiting" not in captured.err


def test_an_unreachable_vendor_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {
        "TICKETPAGER_ZENDESK__URL": f"http://127.0.0.1:{port}",
        "TICKETPAGER_ZENDESK__EMAIL": "api@acme.example",
        "TICKETPAGER_ZENDESK__API_TOKEN": "zd-api-token",
        "TICKETPAGER_ZENDESK__MIN_REQUEST_INTERVAL_SECONDS": "0.1",  # each retry still waits for the pacing
        "PD_SUPPORT_KEY": "R0SUPPORT0000000000000000000000A",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["rules", "backtest", str(RULES), "--source", "zendesk", "--since", "1h"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"ticketpager rules backtest: zendesk unreachable: connection refused by 127.0.0.1:{port}."


def test_a_server_that_never_answers_is_one_sentence_too() -> None:
    """A read timeout against a real socket that accepts and stays silent: words, not urllib3's repr."""
    import socket

    import requests

    from kernel.errors import network_error

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with pytest.raises(requests.RequestException) as caught:
            requests.get(f"http://127.0.0.1:{port}/api?token=x", timeout=0.2)
    message = str(network_error("zendesk", caught.value))
    assert message == f"zendesk unreachable: no answer from 127.0.0.1:{port} within the timeout"
