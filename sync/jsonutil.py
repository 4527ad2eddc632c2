"""Fast JSON for the hot path (stored changes, snapshots, outbox bodies): orjson, with the stdlib as the
fallback for what orjson refuses (integers beyond 64 bits in a vendor payload, odd keys)."""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON text; unknown types become ``str``."""
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS | (orjson.OPT_SORT_KEYS if sort_keys else 0)).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, default=str, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
