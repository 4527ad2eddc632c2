"""Rule files mean one thing: YAML 1.1 words (NO, on, 010, 1:30) are errors at their position, and
indentation mistakes are explained in sentences, at the line that is out of line (issue 14, items 1, 3)."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pytest

from rules import RuleFileErrors, load_rules
from rules.loader import parse_text
from ticketpager.rules_cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"

RULE = (
    "version: 1\nrules:\n  - name: r1\n    when:\n      project: {value}\n"
    "    trigger: {{routing_key: R0KEY000000000000000000000000001, severity: info, summary: s}}\n"
)
VALUE_COLUMN = 16  # where {value} starts on line 5


def _messages(path: Path) -> list[str]:
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(path, env={})
    return [str(e) for e in caught.value.errors]


def test_rules_check_refuses_project_no_with_the_quoted_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`project: NO` (Norway) loaded as false: the rule said OK and never matched."""
    path = tmp_path / "norway.yaml"
    path.write_text(RULE.format(value="NO"))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"{path}:5:16: NO means false in YAML 1.1 but text in YAML 1.2: "
        "write 'NO' in quotes for the text, or false for the boolean"
    )
    path.write_text(RULE.format(value="'NO'"))
    assert main(["check", str(path)]) == 0
    assert load_rules(path, env={}).rule("r1").when.items[0].arg == "NO"  # type: ignore[attr-defined]


# y/Y/n/N are YAML 1.1 booleans too, but PyYAML and YAML 1.2 both read them as text (see below)
BOOLEANS = {word: "true" for word in ("yes", "Yes", "YES", "on", "On", "ON")}
BOOLEANS |= {word: "false" for word in ("no", "No", "NO", "off", "Off", "OFF")}


@pytest.mark.parametrize("word", sorted(BOOLEANS))
def test_every_yaml11_boolean_word_is_an_error_with_the_quoted_form(tmp_path: Path, word: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value=word))
    meaning = BOOLEANS[word]
    assert _messages(path) == [
        f"{path}:5:{VALUE_COLUMN}: {word} means {meaning} in YAML 1.1 but text in YAML 1.2: "
        f"write '{word}' in quotes for the text, or {meaning} for the boolean"
    ]


NUMBERS = {  # YAML 1.1 reading, YAML 1.2 reading, kind
    "010": ("8", "10", " (octal)"),
    "-010": ("-8", "-10", " (octal)"),
    "0_7": ("7", "text", " (octal)"),
    "0b1010": ("10", "text", " (binary)"),
    "1_000": ("1000", "text", ""),
    "0x_1F": ("31", "text", ""),
    "1:30": ("90", "text", " (base 60)"),
    "190:20:30": ("685230", "text", " (base 60)"),
    "1:30.5": ("90.5", "text", " (base 60)"),
    "1_000.5": ("1000.5", "text", ""),
}


@pytest.mark.parametrize("text", sorted(NUMBERS))
def test_every_yaml11_only_number_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value=text))
    old, new, kind = NUMBERS[text]
    number = old if new == "text" else new
    assert _messages(path) == [
        f"{path}:5:{VALUE_COLUMN}: {text} means {old} in YAML 1.1{kind} but {new} in YAML 1.2: "
        f"write '{text}' in quotes for the text, or {number} for the number"
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False), ("FALSE", False),
        ("null", None), ("Null", None), ("NULL", None), ("~", None), ("", None),
        ("12", 12), ("+12", 12), ("0", 0), ("0x1F", 31), ("1.5", 1.5), (".5", 0.5),
        ("y", "y"), ("Y", "Y"), ("n", "n"), ("N", "N"),
        ("'NO'", "NO"), ('"on"', "on"), ("'010'", "010"), ("'1:30'", "1:30"), ("Norway", "Norway"),
    ],
)  # fmt: skip
def test_what_both_yaml_versions_read_alike_keeps_loading(tmp_path: Path, text: str, value: object) -> None:
    """true/false, the null words, y/n, decimal and hex numbers and quoted text mean the same everywhere."""
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value=text).replace("project:", "custom.Code:"))
    leaf = load_rules(path, env={}).rule("r1").when.items[0]  # type: ignore[attr-defined]
    assert leaf.raw_arg == value and type(leaf.raw_arg) is type(value)


def test_dates_stay_dates(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.format(value="{gte: 2026-12-24}").replace("project:", "created:"))
    leaf = load_rules(path, env={}).rule("r1").when.items[0]  # type: ignore[attr-defined]
    assert leaf.raw_arg == date(2026, 12, 24)


def test_a_boolean_key_still_takes_true_and_the_yaml11_word_is_one_error(tmp_path: Path) -> None:
    """`continue: true` works; `continue: yes` is the YAML error alone, not also "must be true or false"."""
    text = (
        "version: 1\nrules:\n  - name: r1\n    continue: {value}\n    when: {{labels: {{contains: yes}}}}\n"
        "    trigger: {{routing_key: R0KEY000000000000000000000000001, severity: info, summary: s}}\n"
    )
    path = tmp_path / "r.yaml"
    path.write_text(text.format(value="yes"))
    assert _messages(path) == [
        f"{path}:4:15: yes means true in YAML 1.1 but text in YAML 1.2: "
        "write 'yes' in quotes for the text, or true for the boolean",
        f"{path}:5:31: yes means true in YAML 1.1 but text in YAML 1.2: "
        "write 'yes' in quotes for the text, or true for the boolean",
    ]
    path.write_text(text.format(value="true").replace("contains: yes", "contains: 'yes'"))
    assert load_rules(path, env={}).rule("r1").continue_ is True


# -- indentation ------------------------------------------------------------------------------------------

HEAD = "version: 1\nrules:\n  - name: r1\n"
INDENTATION = {
    "key-dedented": (
        HEAD + "    when:\n      project: OPS\n     priority: P1\n",
        "6:6: invalid YAML: line 6 is out of line: it starts in column 6, but the lines above start in column 7 "
        "(line 5) or column 5 (line 4); line it up with the key it belongs with",
    ),
    "key-indented-too-far": (
        HEAD + "    when:\n      project: OPS\n        priority: P1\n",
        "6:9: invalid YAML: line 6 is indented more than line 5, so YAML reads it as more of the value on line 5: "
        "line it up with column 7 (or, for a nested mapping, end line 5 with the key and its ':')",
    ),
    "rule-dedented": (
        HEAD + "    when: {project: OPS}\n - name: r2\n",
        "5:2: invalid YAML: line 5 is out of line: it starts in column 2, but the lines above start in column 3 "
        "(line 3) or column 1 (line 2); line it up with the other items of its list",
    ),
    "list-item-dedented": (
        HEAD + "    when:\n      priority:\n        - P1\n       - P2\n",
        "7:8: invalid YAML: line 7 is out of line: it starts in column 8, but the lines above start in column 9 "
        "(line 6) or column 7 (line 5); line it up with the other items of its list",
    ),
    "list-item-beside-a-key": (
        HEAD + "    when: {project: OPS}\n    - name: r2\n",
        "5:5: invalid YAML: line 5 is out of line: a '- ' list item in column 5, the column of the key on line 4; "
        "indent the list under its key, or line it up with the other items of its list",
    ),
    "key-under-the-dash": (
        HEAD + "    when: {project: OPS}\n  on_unmatch: resolve\n",
        "5:3: invalid YAML: line 5 is out of line: it starts in column 3, under the '- ' on line 3; the keys of "
        "that list item start in column 5 (line 4)",
    ),
    "top-level-indented": (
        "  version: 1\nrules:\n  - name: r1\n",
        "1:3: invalid YAML: line 1 is indented: the top-level keys (version, calendars, rules) start in column 1",
    ),
    "no-space-after-colon-before-a-mapping": (
        HEAD + "    trigger:\n      severity:{from: priority, map: {P1: critical}, default: info}\n",
        "5:7: invalid YAML: line 5 has a ':' without a space after it ('severity:{from: priority, map: {P1: "
        "critical}, default: info}': write 'severity: {from: priority, map: {P1: critical}, default: info}')",
    ),
    "no-space-after-colon": (
        HEAD + "    when:\n      project:OPS\n      priority: P1\n",
        "5:7: invalid YAML: line 5 has a ':' without a space after it ('project:OPS': write 'project: OPS')",
    ),
    "no-space-after-colon-then-a-comment": (
        HEAD + "    when:\n      project:OPS   # the Jira key\n      priority: P1\n",
        "5:7: invalid YAML: line 5 has a ':' without a space after it ('project:OPS': write 'project: OPS')",
    ),
    "no-colon": (
        HEAD + "    when:\n      project OPS\n      priority: P1\n",
        "5:7: invalid YAML: line 5 has no ':' after its key ('project OPS': write 'project: OPS')",
    ),
    "colon-in-value": (
        HEAD + "    trigger:\n      summary: Outage: db down\n",
        "5:22: invalid YAML: the value on line 5 contains ': ': put it in quotes, e.g. \"Outage: db down\"",
    ),
}


@pytest.mark.parametrize("case", sorted(INDENTATION))
def test_indentation_mistakes_are_sentences_at_the_line_out_of_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    text, expected = INDENTATION[case]
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"{path}:{expected}"
    assert "<block" not in err and "not allowed here" not in err


def test_mangled_example_files_always_give_errors_with_a_position_never_an_exception() -> None:
    """Lines shifted, colons dropped or glued, items inserted: the explanations are built from the file's own
    text, so whatever the text, parsing answers with errors inside the file."""
    texts = [path.read_text() for path in sorted(EXAMPLES.glob("*.yaml"))]
    rnd = random.Random(14)
    for _ in range(400):
        lines = rnd.choice(texts).splitlines()
        for _ in range(rnd.randint(1, 3)):
            k = rnd.randrange(len(lines))
            lines[k] = rnd.choice(
                [
                    " " * rnd.randint(1, 3) + lines[k],
                    lines[k][rnd.randint(1, 3) :],
                    lines[k].replace(": ", ":", 1),
                    lines[k].replace(":", "", 1),
                    "- " + lines[k].strip(),
                ]
            )
        _value, errors = parse_text("\n".join(lines), "f.yaml")
        for error in errors:
            assert 1 <= error.line <= len(lines) + 1 and error.col >= 1, error
