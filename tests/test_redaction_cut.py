"""The redaction reads a bounded amount of hostile text, and where it stops cannot leave a fragment of a
secret behind (issue 13, item 5): a log line or vendor body longer than that, with a secret across the
bound, shows neither the secret nor its first characters."""

from __future__ import annotations

from kernel.redact import MAX_SCAN_CHARS, REDACTED, Redactor

TOKEN = "ATATT3xJiraTok0e9nQ"  # noqa: S105 - a test credential


def test_a_secret_across_the_scan_bound_leaves_no_fragment() -> None:
    for before in range(1, len(TOKEN)):  # the bound falls after `before` characters of the token
        text = "x" * (MAX_SCAN_CHARS - before) + TOKEN + " tail"
        out = Redactor([TOKEN]).redact(text)
        assert len(out) <= MAX_SCAN_CHARS, "the output stays bounded"
        assert TOKEN[:before] not in out[-len(REDACTED) - before :], (before, out[-40:])


def test_text_within_the_bound_is_whole() -> None:
    text = "y" * (MAX_SCAN_CHARS - len(TOKEN) - 1) + " " + TOKEN
    assert Redactor([TOKEN]).redact(text) == text[: -len(TOKEN)] + REDACTED
