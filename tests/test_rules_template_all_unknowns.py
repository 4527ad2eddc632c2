"""Every unknown name of a template is reported in one run, each at its own column when the template is written
on one line as it is read (plain, or quoted without escapes): ``[{{ ticket.kye }}] {{ ticket.titel }} for
{{ ticket.asignee }}`` used to take three round trips of `rules check`, each error at the start of the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager.rules_cli import main

KEY = "abcdefabcdefabcdefabcdefabcdef12"
KYE = "template uses unknown field 'ticket.kye' (did you mean 'key'?)"
TITEL = "template uses unknown field 'ticket.titel' (did you mean 'title'?)"
ASIGNEE = "template uses unknown field 'ticket.asignee' (did you mean 'assignee'?)"


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], trigger: str) -> tuple[Path, list[str]]:
    """``rules check`` of a rule whose trigger lines (from line 6) are ``trigger``; its errors, without the count."""
    path = tmp_path / "p1.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: p1\n    when: {priority: P1}\n    trigger:\n"
        f"      routing_key: {KEY}\n      severity: critical\n{trigger}"
    )
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"{len(err) - 1} error(s) in {path}"
    return path, err[:-1]


def test_every_unknown_field_at_its_own_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the text starts at column 17 (after the quote): ticket.kye at 21, ticket.titel at 39, ticket.asignee at 62
    trigger = '      summary: "[{{ ticket.kye }}] {{ ticket.titel }} for {{ ticket.asignee }}"\n'
    path, err = _check(tmp_path, capsys, trigger)
    assert err == [
        f"{path}:8:21: rule 'p1' → trigger → summary: {KYE}",
        f"{path}:8:39: rule 'p1' → trigger → summary: {TITEL}",
        f"{path}:8:62: rule 'p1' → trigger → summary: {ASIGNEE}",
    ]


def test_plain_and_single_quoted_values_count_from_their_first_character(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trigger = (
        "      summary: s\n"
        "      component: x {{ ticket.kye }} {{ ticket.titel }}\n"  # plain: the text starts at column 18
        "      group: '{{ ticket.asignee }}'\n"  # quoted: the text starts after the quote, column 15
    )
    path, err = _check(tmp_path, capsys, trigger)
    assert err == [
        f"{path}:9:23: rule 'p1' → trigger → component: {KYE}",
        f"{path}:9:40: rule 'p1' → trigger → component: {TITEL}",
        f"{path}:10:18: rule 'p1' → trigger → group: {ASIGNEE}",
    ]


def test_different_kinds_of_unknown_names_come_together_in_text_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trigger = "      summary: '{{ tiket.key }} {{ ticket.title | upperr }} {{ ticket.attributes.projct }}'\n"
    path, err = _check(tmp_path, capsys, trigger)
    assert err == [
        f"{path}:8:20: rule 'p1' → trigger → summary: template uses unknown variable 'tiket' (did you mean "
        "'ticket'?) (known: changes, now, rule, ticket)",
        f"{path}:8:51: rule 'p1' → trigger → summary: unknown filter 'upperr' (did you mean 'upper'?)",
        f"{path}:8:64: rule 'p1' → trigger → summary: template uses unknown field 'ticket.attributes.projct' "
        "(did you mean 'project'?) (the source's attributes; vendor-defined fields are ticket.custom.<name> or "
        "ticket.raw.<path>)",
    ]


@pytest.mark.parametrize(
    ("trigger", "start"),
    [
        ('      summary: "say \\"hi\\" {{ ticket.kye }} {{ ticket.titel }}"\n', "8:16"),  # escapes shift the text
        ("      summary: >\n        {{ ticket.kye }} {{ ticket.titel }}\n", "8:16"),  # a block scalar
        ('      summary: "x {{- ticket.kye }} {{ ticket.titel }}"\n', "8:16"),  # {{- trims the text before it
    ],
)
def test_where_the_column_is_not_known_both_are_reported_at_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trigger: str, start: str
) -> None:
    path, err = _check(tmp_path, capsys, trigger)
    assert err == [
        f"{path}:{start}: rule 'p1' → trigger → summary: {KYE}",
        f"{path}:{start}: rule 'p1' → trigger → summary: {TITEL}",
    ]


def test_a_name_repeated_is_reported_once_at_its_first_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, err = _check(tmp_path, capsys, "      summary: '{{ ticket.kye }} ticket.kye {{ ticket.kye }}'\n")
    assert err == [f"{path}:8:20: rule 'p1' → trigger → summary: {KYE}"]
