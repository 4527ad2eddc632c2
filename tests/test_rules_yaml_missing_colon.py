"""A key line without its ':' (``source jira``, ``trigger`` alone) is reported at that line, with the line as
written and what to write, not as PyYAML's "could not find expected ':'" at the line after it (or further on,
in the middle of a line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

HEAD = "version: 1\nrules:\n  - name: p1\n"
TRIGGER = '    trigger: {routing_key: "${PD_KEY}", severity: critical, summary: s}\n'

CASES = {
    "a key and its value": (
        HEAD + "    source jira\n    when: {priority: P1}\n" + TRIGGER,
        "4:5: invalid YAML: line 4 has no ':' after its key ('source jira': write 'source: jira')",
    ),
    "a key alone, its mapping below": (
        HEAD + "    source: jira\n    when:\n      priority: P1\n    trigger\n"
        '      routing_key: "${PD_KEY}"\n      severity: critical\n      summary: s\n',
        "7:5: invalid YAML: line 7 has no ':' after its key ('trigger': write 'trigger:')",
    ),
    "the last line of the file": (
        HEAD + "    when: {priority: P1}\n" + TRIGGER + "    continue true",
        "6:5: invalid YAML: line 6 has no ':' after its key ('continue true': write 'continue: true')",
    ),
    "a comment after it": (
        HEAD + "    source jira   # the vendor\n    when: {priority: P1}\n" + TRIGGER,
        "4:5: invalid YAML: line 4 has no ':' after its key ('source jira': write 'source: jira')",
    ),
    "no space after the colon": (
        HEAD + "    source:jira\n    when: {priority: P1}\n" + TRIGGER,
        "4:5: invalid YAML: line 4 has a ':' without a space after it ('source:jira': write 'source: jira')",
    ),
    "a list item's first key": (
        "version: 1\nrules:\n  - name p1\n    source: jira\n",
        "3:5: invalid YAML: line 3 has no ':' after its key ('name p1': write 'name: p1')",
    ),
    "a top-level key": (
        "version 1\nrules:\n  - name: p1\n",
        "1:1: invalid YAML: line 1 has no ':' after its key ('version 1': write 'version: 1')",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_key_without_its_colon_is_reported_at_its_line_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    text, expected = CASES[case]
    path = tmp_path / "i12.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{path}:{expected}", f"1 error(s) in {path}"]
