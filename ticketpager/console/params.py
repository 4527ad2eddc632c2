"""Numbers the console reads from URLs and forms (ids, keyset cursors, counts): the database's 64-bit range only.

A number outside it is treated as absent, as a non-number is, so no handler ever passes SQLite or PostgreSQL a
value its ``BIGINT`` cannot hold (SQLite's driver raises ``OverflowError``, PostgreSQL an out-of-range error)."""

from __future__ import annotations

#: SQLite's INTEGER and PostgreSQL's BIGINT: a signed 64-bit integer
BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
#: digits (and a sign) read at most: int() of a longer text would be both pointless and slow
MAX_DIGITS = 20


def int_param(value: object) -> int | None:
    """``value`` as an int within :data:`BIGINT_MIN` … :data:`BIGINT_MAX`, else ``None`` (absent, not a number,
    or out of range)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or len(text) > MAX_DIGITS:
        return None
    try:
        number = int(text)
    except ValueError:
        return None
    return number if BIGINT_MIN <= number <= BIGINT_MAX else None
