"""`summary: {{ ticket.title }}` without quotes is the most common template mistake: YAML reads the braces as
a mapping. One error at the value says to quote it, instead of "must be text" plus "mapping keys must be
plain text"."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules import RuleFileErrors, load_rules

RULE = (
    "version: 1\nrules:\n  - name: r1\n    when: {{project: OPS}}\n"
    "    trigger:\n      routing_key: R0123456789abcdef0123456789abcdef\n      severity: info\n"
    "      summary: {value}\n"
)


@pytest.mark.parametrize(
    "value", ["{{ ticket.title }}", "{{ticket.key}}", "{{ ticket.key }} {{ ticket.title }}"]
)
def test_an_unquoted_template_is_one_error_that_says_to_quote_it(tmp_path: Path, value: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value=value))
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env={})
    messages = [str(e) for e in caught.value.errors]
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{path}:8:16: "), messages
    assert "must be in quotes" in messages[0] and f'write "{value}"' in messages[0], messages


def test_the_quoted_template_loads(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value='"{{ ticket.title }}"'))
    assert load_rules(path, env={}).rule("r1").name == "r1"
