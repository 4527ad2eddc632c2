"""PyYAML's parser errors as sentences an admin understands, at the line that is out of line.

PyYAML reports an indentation mistake as ``expected <block end>, but found '<block mapping start>'`` or
``mapping values are not allowed here``. The text of the file says more: which line starts in a column
that lines up with nothing above it, or is indented under a line that already has a value. Errors this
module does not recognise keep PyYAML's own words.
"""

from __future__ import annotations

import re

import yaml

TAB_HINT = " (indent with spaces: YAML does not allow tabs)"
_KEY = re.compile(r"^(\s*)(?:-\s+)*([^\s#'\"][^:#]*?):(?:\s|$)")  # `  - name: x` -> indent, key
_INLINE_COLON = re.compile(r":\S")
_LINE_LIMIT = 500  # characters of a line looked at: bounds the regexes' work on a hostile 1 MB line
_WHAT = {"-": "the other items of its list", "<block sequence start>": "the other items of its list"}


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _columns(line: str) -> list[int]:
    """1-based columns where things start on a line: its indentation, and after each ``- `` the item's."""
    columns = []
    at = len(line) - len(line.lstrip(" "))
    columns.append(at + 1)
    while line[at : at + 2] == "- " or line[at:].rstrip() == "-":
        at += 1
        while at < len(line) and line[at] == " ":
            at += 1
        columns.append(at + 1)
    return columns


def _above(lines: list[str], index: int) -> list[tuple[int, int, bool]]:
    """The columns open above line ``index`` (0-based), nearest first, as (column, 1-based line, whether
    a ``- `` starts there)."""
    out: list[tuple[int, int, bool]] = []
    limit = None
    for number in range(index - 1, -1, -1):
        if not _content(lines[number]):
            continue
        columns = _columns(lines[number])
        for position, column in reversed(list(enumerate(columns))):
            if limit is None or column < limit:
                out.append((column, number + 1, position < len(columns) - 1))
                limit = column
        if limit == 1:
            break
    return out


def _previous(lines: list[str], index: int) -> int | None:
    return next((n for n in range(index - 1, -1, -1) if _content(lines[n])), None)


def _out_of_line(lines: list[str], line: int, col: int, found: str) -> str | None:
    """``expected <block end>``: the line at ``line`` (1-based) starts in a column nothing above opens."""
    if not 0 < line <= len(lines):
        return None
    open_columns = _above(lines, line - 1)
    deeper = [(c, n) for c, n, _ in open_columns if c > col]
    shallower = [(c, n) for c, n, _ in open_columns if c < col]
    same = [(n, dash) for c, n, dash in open_columns if c == col]
    if same and found == "-" and not same[0][1]:
        return (
            f"line {line} is out of line: a '- ' list item in column {col}, the column of the key on line "
            f"{same[0][0]}; indent the list under its key, or line it up with the other items of its list"
        )
    if same and found != "-" and same[0][1] and deeper:  # a key under the '- ' instead of beside its keys
        return (
            f"line {line} is out of line: it starts in column {col}, under the '- ' on line {same[0][0]}; "
            f"the keys of that list item start in column {deeper[-1][0]} (line {deeper[-1][1]})"
        )
    if same:
        return None
    choices = []
    if deeper:
        choices.append(f"column {deeper[-1][0]} (line {deeper[-1][1]})")
    if shallower:
        choices.append(f"column {shallower[0][0]} (line {shallower[0][1]})")
    if not choices:
        return None
    return (
        f"line {line} is out of line: it starts in column {col}, but the lines above start in "
        f"{' or '.join(choices)}; line it up with {_WHAT.get(found, 'the key it belongs with')}"
    )


def _colon_sentence(line: int, written: str) -> str:
    """``line 4 has no ':' after its key ('source jira': write 'source: jira')`` for the text of a key line."""
    if _INLINE_COLON.search(written):  # `source:jira`, `severity:{from: …}`
        key, value = written.split(":", 1)
        problem = "a ':' without a space after it"
    else:  # `source jira`, `trigger`
        key, _, value = written.partition(" ")
        problem = "no ':' after its key"
    fixed = f"{key}: {value.strip()}" if value.strip() else f"{key}:"
    return f"line {line} has {problem} ('{written}': write '{fixed}')"


def _key_text(text: str, col: int) -> str | None:
    """The text of a key line from column ``col`` (1-based) without its comment, unless it is quoted or a flow
    collection (whose own errors say more)."""
    written = text[col - 1 :].split(" #", 1)[0].strip()
    return None if not written or written[0] in "'\"{[" else written


def _keyless(lines: list[str], index: int) -> tuple[int, int, str] | None:
    """Line ``index`` (0-based) of a mapping is a key without ``': '`` (``project OPS``, ``project:OPS``,
    ``- name r1``)."""
    above = lines[index].split("#", 1)[0].rstrip()
    col = _columns(lines[index])[-1]  # after any '- '
    written = _key_text(lines[index], col)
    if written is None or ": " in above or above.endswith(":") or written.startswith("-"):
        return None
    return index + 1, col, _colon_sentence(index + 1, written)


def _no_colon(lines: list[str], line: int, col: int) -> tuple[int, int, str] | None:
    """``could not find expected ':'`` while scanning a key: the key on line ``line`` (1-based; PyYAML reports the
    line after it) has no ``': '`` (``source jira``, ``trigger`` alone, ``source:jira``)."""
    if not 0 < line <= len(lines):
        return None
    written = _key_text(lines[line - 1], col)
    return None if written is None else (line, col, _colon_sentence(line, written))


def _not_allowed_here(lines: list[str], line: int, col: int) -> tuple[int, int, str] | None:
    """``mapping values are not allowed here``: a ``key:`` where YAML is still reading a value."""
    if not 0 < line <= len(lines):
        return None
    text = lines[line - 1]
    key = _KEY.match(text)
    if key is None and _INLINE_COLON.search(text[: col - 1].split("#", 1)[0]):  # `severity:{from: …}`
        start = _columns(text)[-1]
        written = _key_text(text, start)
        sentence = _colon_sentence(line, written) if written is not None else None
        return line, start, sentence or f"line {line} has a ':' without a space after it: write 'key: value'"
    if key is not None and col - 1 > key.end(2):  # a second ': ' on one line: the value holds a colon
        value = text[key.end() :].strip()
        return line, col, f"the value on line {line} contains ': ': put it in quotes, e.g. \"{value}\""
    previous = _previous(lines, line - 1)
    if previous is None:
        return None
    here, before = _columns(text)[0], _columns(lines[previous])
    keyless = _keyless(lines, previous)
    if keyless is not None:
        return keyless
    if here > before[0]:
        return (
            line,
            here,
            f"line {line} is indented more than line {previous + 1}, so YAML reads it as more of the value on line "
            f"{previous + 1}: line it up with column {before[-1]} (or, for a nested mapping, end line "
            f"{previous + 1} with the key and its ':')",
        )
    return None


def unquoted_template(written: str) -> str:
    """The sentence for ``summary: {{ ticket.title }}``: YAML reads an unquoted ``{`` as a mapping."""
    quoted = written.strip().replace('"', '\\"')
    return f"a template must be in quotes (YAML reads '{{{{' as the start of a mapping): write \"{quoted}\""


def _template_line(lines: list[str], line: int) -> tuple[int, int, str] | None:
    """Line ``line`` (1-based) gives a key a value that starts with ``{{`` without quotes."""
    if not 0 < line <= len(lines):
        return None
    key = _KEY.match(lines[line - 1])
    if key is None or not lines[line - 1][key.end() :].lstrip().startswith("{{"):
        return None
    value = lines[line - 1][key.end() :]
    column = key.end() + len(value) - len(value.lstrip()) + 1
    return line, column, unquoted_template(value.split(" #", 1)[0])


_OPENERS = {"[": "a list", "{": "a mapping"}


def _value_goes_on(lines: list[str], line: int, col: int) -> tuple[int, int, str] | None:
    """``expected <block end>`` in the middle of a line, not where it starts: a quoted or bracketed value
    with more text after it (``summary: [OPS] down``, ``summary: "Ticket" {{ … }}``); not indentation."""
    if not 0 < line <= len(lines) or col in _columns(lines[line - 1]):
        return None
    text = lines[line - 1]
    key = _KEY.match(text)
    start = key.end() if key is not None else _columns(text)[-1] - 1
    value = text[start:].split(" #", 1)[0].strip()
    if not value or start >= col - 1:
        return None
    at = start + len(text[start:]) - len(text[start:].lstrip()) + 1
    if value[0] in _OPENERS:
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        return line, at, (
            f"the value on line {line} starts with '{value[0]}', which YAML reads as {_OPENERS[value[0]]}: put the "
            f'whole value in quotes, e.g. "{quoted}"'
        )
    if value[0] in "'\"":
        return line, at, (
            f"the value on line {line} goes on after its closing quote: put the closing quote at the end of the value"
        )
    return None


def explain(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, int, str]:
    """``(line, col, message)`` for a PyYAML error: a sentence for the common indentation mistakes, else
    PyYAML's own problem (with a hint for tabs)."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or exc.context or "invalid YAML"
    lines = [line[:_LINE_LIMIT] for line in text.splitlines()]  # indentation is at the start of a line
    if problem.startswith("expected '<document start>'"):  # `  version: 1` above a `rules:` in column 1
        first = next((n for n, text_line in enumerate(lines) if _content(text_line)), None)
        if first is not None and _columns(lines[first])[0] > 1:
            return first + 1, _columns(lines[first])[0], (
                f"line {first + 1} is indented: the top-level keys (version, calendars, rules) start in column 1"
            )
    if exc.context == "while scanning a quoted scalar" and exc.context_mark is not None:  # never closed
        start = exc.context_mark
        quote = text[start.index] if start.index < len(text) else '"'
        return start.line + 1, start.column + 1, (
            f"the quote ({quote}) that starts the value on line {start.line + 1} is never closed: end the value "
            "with the same quote"
        )
    if problem == "could not find expected ':'" and exc.context_mark is not None:  # `source jira`, `trigger`
        key = exc.context_mark
        no_colon = _no_colon(lines, key.line + 1, key.column + 1)
        if no_colon is not None:
            return no_colon
    template = _template_line(lines, line)
    if template is not None:  # `summary: {{ ticket.key }} {{ ticket.title }}`: not an indentation mistake
        return template
    goes_on = _value_goes_on(lines, line, col) if problem.startswith("expected <block end>") else None
    if goes_on is not None:
        return goes_on
    if problem.startswith("expected <block end>, but found "):
        found = problem.removeprefix("expected <block end>, but found ").strip("'")
        previous = _previous(lines, line - 1) if 0 < line <= len(lines) else None
        if previous is not None and _columns(lines[previous])[-1] == col:  # a key line above broke the mapping
            keyless = _keyless(lines, previous)
            if keyless is not None:
                return keyless
        sentence = _out_of_line(lines, line, col, found)
        if sentence is not None:
            return line, col, sentence
    elif problem == "mapping values are not allowed here":
        explained = _not_allowed_here(lines, line, col)
        if explained is not None:
            return explained
    if "'\\t'" in problem or "\t" in problem:
        if 0 < line <= len(lines) and lines[line - 1][: col - 1].strip(" \t"):  # after text, not indentation
            return line, col, f"line {line} has a tab in column {col}: replace it with spaces"
        problem += TAB_HINT
    return line, col, problem
