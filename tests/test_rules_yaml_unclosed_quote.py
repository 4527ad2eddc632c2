"""A quote that is never closed is explained at the quote, not as "found unexpected end of stream" at the end
of the file (or at whatever line the next quote happens to be on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

TEXT = (
    "version: 1\nrules:\n  - name: r1\n    when: {project: OPS}\n    trigger:\n"
    "      routing_key: R0123456789abcdef0123456789abcdef\n      severity: info\n"
    '      summary: "[{{ ticket.key }}] {{ ticket.title }}\n      group: ops\n'
)


def test_an_unclosed_quote_is_explained_at_the_quote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(TEXT)
    assert main(["check", str(path)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (
        f'{path}:8:16: invalid YAML: the quote (") that starts the value on line 8 is never closed: '
        "end the value with the same quote"
    ), first
