"""Plain scalars that YAML 1.1 (PyYAML) and YAML 1.2 read differently: each one is a rule-file error.

PyYAML implements YAML 1.1, where ``NO`` (Norway, or a Jira project key) is ``false``, ``on`` is ``true``,
``010`` is 8 and ``1:30`` is 90. YAML 1.2 (and most editors' checks) read them as text or other numbers.
A rule comparing ``project: NO`` would load and never match, so instead of guessing we refuse every plain
scalar whose meaning depends on the YAML version, and say what to write: ``'NO'`` in quotes for the text,
``false`` for the boolean. ``true``/``false``, ``null``/``~``, decimal and hex numbers and dates mean the same
in both and keep working. YAML 1.1 types: https://yaml.org/type/bool.html, https://yaml.org/type/int.html,
https://yaml.org/type/float.html; YAML 1.2 core schema: https://yaml.org/spec/1.2.2/#1032-tag-resolution.
"""

from __future__ import annotations

import math
import re

#: YAML 1.1 booleans (https://yaml.org/type/bool.html) that YAML 1.2 reads as text. The spec's y/Y/n/N
#: are not here: PyYAML reads them as text, as YAML 1.2 does, so `name: y` means what it says.
YAML11_BOOLEANS: dict[str, bool] = {
    **{word: True for word in ("yes", "Yes", "YES", "on", "On", "ON")},
    **{word: False for word in ("no", "No", "NO", "off", "Off", "OFF")},
}
# YAML 1.2 core schema numbers (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
_CORE_INT = re.compile(r"[-+]?[0-9]+")
_CORE_OCT = re.compile(r"0o[0-7]+")
_CORE_HEX = re.compile(r"0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_CORE_SPECIAL = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF"}
_CORE_NAN = {".nan", ".NaN", ".NAN"}
_OCTAL_11 = re.compile(r"[-+]?0[0-7_]+")


def core_number(text: str) -> int | float | None:
    """What YAML 1.2's core schema makes of a plain scalar that looks like a number (None: text)."""
    if _CORE_INT.fullmatch(text):
        return int(text)
    if _CORE_OCT.fullmatch(text):
        return int(text[2:], 8)
    if _CORE_HEX.fullmatch(text):
        return int(text[2:], 16)
    if _CORE_FLOAT.fullmatch(text):
        return float(text)
    if text in _CORE_SPECIAL:
        return float(text.replace(".", "").lower())
    return math.nan if text in _CORE_NAN else None


def _same(a: int | float, b: int | float) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _kind(text: str) -> str:
    if ":" in text:
        return " (base 60)"
    if _OCTAL_11.fullmatch(text):
        return " (octal)"
    if text.lstrip("+-").startswith("0b"):
        return " (binary)"
    return ""


def _plain(value: int | float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def version_problem(text: str, loaded: object) -> str | None:
    """Why the plain scalar ``text`` (which PyYAML loaded as ``loaded``) means something else in YAML 1.2,
    with what to write instead; None when both versions agree."""
    if text in YAML11_BOOLEANS:
        word = "true" if YAML11_BOOLEANS[text] else "false"
        return (
            f"{text} means {word} in YAML 1.1 but text in YAML 1.2: "
            f"write '{text}' in quotes for the text, or {word} for the boolean"
        )
    if isinstance(loaded, bool) or not isinstance(loaded, int | float):
        return None
    core = core_number(text)
    if core is not None and _same(core, loaded):
        return None
    meaning = "text" if core is None else _plain(core)
    number = _plain(loaded) if core is None else _plain(core)
    return (
        f"{text} means {_plain(loaded)} in YAML 1.1{_kind(text)} but {meaning} in YAML 1.2: "
        f"write '{text}' in quotes for the text, or {number} for the number"
    )
