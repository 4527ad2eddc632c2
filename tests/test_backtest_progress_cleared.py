"""On a terminal, a vendor failure before the first page is read is printed on a clean line: the progress
line of the waits before it ("waiting 1.1 s for zendesk …") is erased first, not left with the sentence
glued to its end."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.test_backtest_progress import RULES, run_on_a_terminal


def test_the_failure_sentence_replaces_the_progress_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "TICKETPAGER_ZENDESK__URL": f"http://127.0.0.1:{port}",
        "TICKETPAGER_ZENDESK__EMAIL": "api@acme.example",
        "TICKETPAGER_ZENDESK__API_TOKEN": "zd-api-token",
        "TICKETPAGER_ZENDESK__MIN_REQUEST_INTERVAL_SECONDS": "0.1",
        "PD_SUPPORT_KEY": "R0SUPPORT0000000000000000000000A",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    code, _, err = run_on_a_terminal(
        ["rules", "backtest", str(RULES), "--source", "zendesk", "--since", "1h"], env, tmp_path
    )
    assert code == 1
    assert "waiting" in err, "the retries' waits were shown"
    sentence = f"ticketpager rules backtest: zendesk unreachable: connection refused by 127.0.0.1:{port}."
    before = err[: err.index(sentence)]
    assert before.endswith("\r\x1b[K"), repr(err[-300:])
