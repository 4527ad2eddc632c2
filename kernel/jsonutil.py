"""Fast JSON for the hot path (stored changes, snapshots, outbox bodies): orjson, with the stdlib as the
fallback for what orjson refuses (integers beyond 64 bits in a vendor payload, odd keys).

Both directions refuse, with :class:`BadJSON`, what cannot be stored as UTF-8 text: a lone UTF-16
surrogate (``"\\ud800"`` is valid JSON syntax but not text; PostgreSQL and SQLite would refuse it at commit
time, long after the sender was told 202) and nesting deeper than orjson's limit (the stdlib would recurse
until ``RecursionError``). A :class:`BadJSON` is the sender's error: its message says which.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS
MAX_DEPTH = 1024  # orjson's own limit (https://github.com/ijl/orjson#deserialize)
SURROGATE = "a string holds a lone UTF-16 surrogate (such as \\ud800), which is not text"
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"


class BadJSON(ValueError):
    """JSON ticketpager refuses to read or write; ``str()`` is a reason safe to answer the sender with."""


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON text; unknown types become ``str``; an :class:`Encoded` is spliced in as it is.
    :class:`BadJSON` if a string is not text."""
    return encode(value, sort_keys=sort_keys).decode()


def encode(value: Any, *, sort_keys: bool = False) -> bytes:
    """:func:`dumps` as UTF-8 bytes (what orjson makes): for a value encoded once and spliced into many
    documents (:class:`Encoded`)."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS | (orjson.OPT_SORT_KEYS if sort_keys else 0))
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        text = json.dumps(value, default=_fallback, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
        # the fallback writes lone surrogates through: the database would refuse them later
        return text.encode()
    except RecursionError:
        raise BadJSON(TOO_DEEP) from None
    except UnicodeEncodeError:
        raise BadJSON(SURROGATE) from None


class Encoded:
    """JSON already encoded (e.g. :meth:`kernel.ports.RuleSet.encode`), which :func:`dumps` splices into a
    document unparsed (``sort_keys`` does not reach inside it)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return f"Encoded({self.raw[:60]!r}…)" if len(self.raw) > 60 else f"Encoded({self.raw!r})"


def _default(value: Any) -> Any:
    """orjson's ``default``: an :class:`Encoded` as it is, anything else as ``str``."""
    if value.__class__ is Encoded:
        return orjson.Fragment(value.raw)
    return str(value)


def _fallback(value: Any) -> Any:
    """The stdlib encoder's ``default``: an :class:`Encoded` as the values it holds, anything else as ``str``."""
    if value.__class__ is Encoded:
        return json.loads(value.raw)  # the stdlib's: orjson would read an integer beyond 64 bits as a float
    return str(value)


def loads(text: str | bytes) -> Any:
    """Parse JSON; :class:`BadJSON` for lone surrogates and over-deep nesting, ``ValueError`` otherwise."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "surrogate" in reason:
            raise BadJSON(SURROGATE) from None
        if "depth" in reason or "recursion" in reason.lower():
            raise BadJSON(TOO_DEEP) from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadJSON(TOO_DEEP) from None
    dumps(value)  # orjson stopped at its first complaint (a big integer): a surrogate may follow it
    return value
