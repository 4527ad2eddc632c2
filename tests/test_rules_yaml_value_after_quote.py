"""A value that goes on after its closing quote or bracket (`summary: [OPS] down`, `summary: "Ticket" {{ … }}`)
is explained as what it is, at the line's value: never as "line 8 is out of line: it starts in column 22",
which the indentation explanation said though the line is lined up."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

RULE = (
    "version: 1\nrules:\n  - name: r1\n    when: {{project: OPS}}\n"
    "    trigger:\n      routing_key: R0123456789abcdef0123456789abcdef\n      severity: info\n"
    "      summary: {value}\n"
)

AFTER_QUOTE = "goes on after its closing quote: put the closing quote at the end of the value"
LIST = "starts with '[', which YAML reads as a list: put the whole value in quotes, e.g. "
MAPPING = "starts with '{', which YAML reads as a mapping: put the whole value in quotes, e.g. "
CASES = {
    "[OPS] Checkout down": LIST + '"[OPS] Checkout down"',
    '"[{{ ticket.key }}]" {{ ticket.title }}': AFTER_QUOTE,
    "'it''s down' now": AFTER_QUOTE,
    "{x: 1} more": MAPPING + '"{x: 1} more"',
}


@pytest.mark.parametrize("value", sorted(CASES))
def test_text_after_a_quoted_or_bracketed_value_is_explained_at_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value=value))
    assert main(["check", str(path)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first == f"{path}:8:16: invalid YAML: the value on line 8 {CASES[value]}", first
    assert "out of line" not in first
