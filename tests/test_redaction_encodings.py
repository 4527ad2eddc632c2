"""A configured secret echoed by a vendor or a proxy in the escaping *it* uses is still redacted (issue 13,
item 5): percent-encoding with lower-case hex (``%2f``), JSON that escapes ``/`` as ``\\/`` (PHP) or
``<>&='`` as ``\\u003d`` (Gson, Go, Rails), and an HTML error page that writes ``&`` as ``&amp;``.
"""

from __future__ import annotations

import html
import json
import re
import time

import pytest

from kernel.redact import REDACTED, Redactor

TOKEN = "ATATT3x/Jira+Tok=e9n<&>'"  # noqa: S105 - a test credential with the characters encoders escape


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _gson(text: str) -> str:
    """Gson's default HTML-safe JSON: ``<>&='`` as lower-case ``\\u`` escapes."""
    return "".join(f"\\u{ord(c):04x}" if c in "<>&='" else c for c in json.dumps(text)[1:-1])


ECHOES = {
    "percent-encoded, lower-case hex": _lower_hex("ATATT3x%2FJira%2BTok%3De9n%3C%26%3E%27"),
    "percent-encoded, mixed case hex": "ATATT3x%2fJira%2BTok%3de9n%3C%26%3e%27",
    "percent-encoded, '/' left as is": "ATATT3x/Jira%2BTok%3De9n%3C%26%3E%27",
    "JSON with '\\/' (PHP)": json.dumps(TOKEN)[1:-1].replace("/", "\\/"),
    "JSON, HTML-safe (Gson)": _gson(TOKEN),
    "JSON, upper-case \\u escapes": "".join(f"\\u{ord(c):04X}" if not c.isalnum() else c for c in TOKEN),
    "HTML page": html.escape(TOKEN),
    "HTML numeric references": "".join(f"&#{ord(c)};" if not c.isalnum() else c for c in TOKEN),
}


@pytest.mark.parametrize("name", ECHOES)
def test_a_secret_in_the_escaping_of_the_echo_is_redacted(name: str) -> None:
    echoed = ECHOES[name]
    assert echoed != TOKEN  # each is an encoding, not the raw value
    out = Redactor([TOKEN]).redact(f"gateway said: {echoed}; goodbye")
    assert out == f"gateway said: {REDACTED}; goodbye", (name, out)


def test_an_escaped_lookalike_is_not_redacted() -> None:
    """Only the secret's own characters, escaped, match: another value with the same letters does not."""
    other = "ATATT3x%2FJira%2BTok%3De9m"
    assert Redactor([TOKEN]).redact(other) == other


@pytest.mark.parametrize("run", ["\\", "&", "%", "/", "'"])
def test_runs_of_an_escapable_character_cost_no_backtracking(run: str) -> None:
    """A secret with a run of one escapable character, against hostile text built from its forms that never
    completes: bounded time (a pattern letting each character be raw *or* escaped would try 2^n splits)."""
    secret = "a" + run * 24 + "b"
    redactor = Redactor([secret])
    forms = {"\\": "\\", "&": "&amp;", "%": "%25", "/": "\\/", "'": "&#39;"}
    hostile = ("a" + (run + forms[run]) * 23 + "c ") * 40
    start = time.process_time()
    redactor.redact(hostile)
    assert time.process_time() - start < 0.5, run
    assert redactor.redact(f"x {secret} y") == f"x {REDACTED} y"
