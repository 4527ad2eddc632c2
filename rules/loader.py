"""Read rule files into plain Python values that remember where they came from (file, line, column).

PyYAML's ``compose`` gives nodes with ``start_mark``; we turn them into :class:`YMap` / :class:`YList`
(a ``dict`` / ``list`` that also carry the position of each key and item) and plain scalars, so
validation can point an admin at ``rules/p1.yaml:14:5``. Duplicate keys, recursive aliases, custom tags
and plain scalars YAML 1.1 and 1.2 read differently (``NO``, ``on``, ``010``: see :mod:`rules.yaml11`)
are errors here: a YAML file must mean exactly one thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kernel.errors import ConfigError
from rules import yaml_errors
from rules.yaml11 import version_problem

RULE_FILE_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 1024 * 1024  # a rule file bigger than this is a mistake, not a rule set
#: how many values YAML aliases may add to a rule file when expanded: a real file's few anchors add hundreds; a
#: "billion laughs" file of nested aliases adds millions from 557 bytes and would exhaust time and memory
MAX_ALIAS_VALUES = 100_000
#: how deep YAML values may nest (mappings and lists inside each other, aliases expanded): a real rule file nests
#: a dozen levels; validation and evaluation walk conditions recursively, about three Python frames a level, so
#: this keeps them well inside Python's recursion limit (1000) wherever the rules are loaded
MAX_NESTING = 100
TOO_DEEP = "invalid YAML: nested too deeply"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


@dataclass(frozen=True, slots=True)
class Pos:
    """A 1-based position in a rule file. ``text_col``: for a one-line text value whose characters are written as
    they are read (plain, or quoted without escapes), the column of its first character (after the quote), so a
    problem inside it (a template's unknown field) can point at its own column; else None."""

    path: str
    line: int
    col: int
    text_col: int | None = field(default=None, compare=False)

    def inside(self, offset: int | None) -> Pos:
        """The position ``offset`` characters into this text value, where that is known; else this position."""
        if offset is None or self.text_col is None:
            return self
        return Pos(self.path, self.line, self.text_col + offset)


@dataclass(frozen=True, slots=True)
class RuleFileError:
    """One problem in a rule file; ``str()`` is ``path:line:col: message``."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    @classmethod
    def at(cls, pos: Pos, message: str) -> RuleFileError:
        return cls(pos.path, pos.line, pos.col, message)


class RuleFileErrors(ConfigError):
    """Every problem found in a rule file set, reported at once (one per line in ``str()``)."""

    def __init__(self, errors: list[RuleFileError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class YMap(dict[str, Any]):
    """A YAML mapping with the position of the mapping, of each key and of each value."""

    def __init__(self, pos: Pos) -> None:
        super().__init__()
        self.pos = pos
        self.key_pos: dict[str, Pos] = {}
        self.val_pos: dict[str, Pos] = {}


class YList(list[Any]):
    """A YAML sequence with the position of the sequence and of each item."""

    def __init__(self, pos: Pos) -> None:
        super().__init__()
        self.pos = pos
        self.item_pos: list[Pos] = []


class _Converter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[RuleFileError] = []
        self._constructor = SafeConstructor()
        self._done: dict[int, Any] = {}
        self._active: set[int] = set()

    def pos(self, node: Node) -> Pos:
        start = node.start_mark
        return Pos(self.path, start.line + 1, start.column + 1, _text_col(node))

    def convert(self, node: Node) -> Any:
        key = id(node)
        if key in self._done:
            return self._done[key]
        if key in self._active:
            self.errors.append(RuleFileError.at(self.pos(node), "recursive YAML alias"))
            return None
        self._active.add(key)
        try:
            value = self._convert(node)
        finally:
            self._active.discard(key)
        self._done[key] = value
        return value

    def _convert(self, node: Node) -> Any:
        if isinstance(node, ScalarNode):
            if node.tag.startswith("tag:yaml.org,2002:") and node.tag != _MERGE_TAG:
                try:
                    value = self._constructor.construct_object(node, deep=True)
                    problem = version_problem(node.value, value) if node.style is None else None
                    if problem is not None:  # NO, on, 010, 1:30: what YAML 1.2 and editors read differently
                        self.errors.append(RuleFileError.at(self.pos(node), problem))
                        return node.value
                    return value
                except Exception as exc:  # noqa: BLE001 - any constructor failure is a rule-file error
                    if node.tag == _TIMESTAMP_TAG:  # 2026-02-30: the text, for the field's own check to explain
                        return node.value
                    problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
                    self.errors.append(RuleFileError.at(self.pos(node), f"invalid value: {problem}"))
                    return None
            self.errors.append(RuleFileError.at(self.pos(node), f"unsupported YAML tag {node.tag!r}"))
            return None
        if isinstance(node, SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                self.errors.append(RuleFileError.at(self.pos(node), f"unsupported YAML tag {node.tag!r}"))
            out = YList(self.pos(node))
            for item in node.value:
                out.append(self.convert(item))
                out.item_pos.append(self.pos(item))
            return out
        if isinstance(node, MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                self.errors.append(RuleFileError.at(self.pos(node), f"unsupported YAML tag {node.tag!r}"))
            written = self._unquoted_template(node)
            if written is not None:  # `summary: {{ ticket.title }}` read as {{ticket.title: null}: null}
                self.errors.append(RuleFileError.at(self.pos(node), yaml_errors.unquoted_template(written)))
                return written
            mapping = YMap(self.pos(node))
            merged: list[YMap] = []
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
                    merged.extend(self._merge_sources(value_node))
                    continue
                if not isinstance(key_node, ScalarNode):
                    self.errors.append(RuleFileError.at(self.pos(key_node), "mapping keys must be plain text"))
                    continue
                name = str(key_node.value)
                if name in mapping.key_pos:
                    first = mapping.key_pos[name]
                    self.errors.append(
                        RuleFileError.at(self.pos(key_node), f"duplicate key '{name}' (first at line {first.line})")
                    )
                    continue
                mapping[name] = self.convert(value_node)
                mapping.key_pos[name] = self.pos(key_node)
                mapping.val_pos[name] = self.pos(value_node)
            for source in merged:  # YAML merge keys: explicit keys win
                for name, value in source.items():
                    if name not in mapping.key_pos:
                        mapping[name] = value
                        mapping.key_pos[name] = source.key_pos[name]
                        mapping.val_pos[name] = source.val_pos[name]
            return mapping
        self.errors.append(RuleFileError.at(self.pos(node), "unsupported YAML node"))
        return None

    @staticmethod
    def _unquoted_template(node: MappingNode) -> str | None:
        """The text of a flow mapping whose one key is itself a flow mapping: ``{{ ... }}`` written unquoted."""
        if not (node.flow_style and len(node.value) == 1):
            return None
        key_node = node.value[0][0]
        if not (isinstance(key_node, MappingNode) and key_node.flow_style):
            return None
        start, end = node.start_mark, node.end_mark
        buffer = getattr(start, "buffer", None)
        return str(buffer[start.index : end.index]) if buffer else "{{ … }}"

    def _merge_sources(self, node: Node) -> list[YMap]:
        value = self.convert(node)
        items = value if isinstance(value, YList) else [value]
        out = [item for item in items if isinstance(item, YMap)]
        if len(out) != len(items):
            self.errors.append(RuleFileError.at(self.pos(node), "a YAML merge (<<) needs a mapping"))
        return out


def _text_col(node: Node) -> int | None:
    """:attr:`Pos.text_col` of a scalar: the column of its first character when the value is on one line and its
    characters are exactly those written (plain, or in quotes without escapes such as ``\\"`` or ``''``)."""
    if not isinstance(node, ScalarNode) or node.style not in (None, "'", '"'):
        return None
    start, end = node.start_mark, node.end_mark
    buffer = getattr(start, "buffer", None)
    if not isinstance(buffer, str) or start.line != end.line:
        return None
    quote = 1 if node.style else 0
    written = buffer[start.index + quote : end.index - quote]
    return start.column + 1 + quote if written == node.value else None


class _AliasMarkingLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also remembers where each alias (``*name``) is written, in document order: an
    alias is composed into the very node of its anchor, which keeps only the anchor's position."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_marks: list[Mark] = []
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            self.alias_marks.append(self.peek_event().start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:  # before the composer's own recursion reaches Python's limit
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _TooDeep(Exception):
    def __init__(self, mark: Mark | None) -> None:
        self.mark = mark


def _too_deep(root: Node) -> Node | None:
    """A node whose values nest more than :data:`MAX_NESTING` deep, aliases expanded (each written alias is within
    the limit, but an alias of a deep anchor inside another deep value is not), else None. Iterative: the check
    must not itself run out of stack."""
    height: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        if finished:
            active.discard(key)
            height[key] = 1 + max((height.get(id(child), 0) for child in children), default=0)
            if height[key] > MAX_NESTING:
                return node
            continue
        if key in height or key in active:  # a shared node is measured once; a recursive alias is the converter's
            continue
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children)
    return None


class _AliasBomb(Exception):
    def __init__(self, mark: Mark | None) -> None:
        self.mark = mark


def _alias_expansion(root: Node, alias_marks: list[Mark]) -> Mark | None:
    """Where aliases first add more than :data:`MAX_ALIAS_VALUES` values to the document, else None. Each node's
    expanded size is computed once (memoised), so this is linear in the composed document, however it expands."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    marks = iter(alias_marks)
    added = 0

    def size(node: Node) -> int:
        nonlocal added
        key = id(node)
        if key in sizes or key in active:  # met again: an alias (document order = the order aliases were read)
            mark = next(marks, None)
            added += sizes.get(key, 0)  # a recursive alias adds nothing here; the converter reports it
            if added > MAX_ALIAS_VALUES:
                raise _AliasBomb(mark or node.start_mark)
            return sizes.get(key, 0)
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = total
        return total

    try:
        size(root)
    except _AliasBomb as bomb:
        return bomb.mark
    return None


def parse_text(text: str, path: str) -> tuple[Any, list[RuleFileError]]:
    """Parse one YAML document into position-carrying values; problems come back as errors, never raise."""
    converter = _Converter(path)
    loader: _AliasMarkingLoader | None = None
    try:
        loader = _AliasMarkingLoader(text)  # reads the text: a character YAML does not allow raises here
        nodes: list[Node] = []
        while loader.check_node():  # yaml.compose_all, with the loader kept for its alias marks
            node = loader.get_node()
            if node is not None:
                nodes.append(node)
        alias_marks = loader.alias_marks
    except yaml.MarkedYAMLError as exc:
        line, col, problem = yaml_errors.explain(exc, text)
        return None, [RuleFileError(path, line, col, f"invalid YAML: {problem}")]
    except _TooDeep as deep:
        line, col = (deep.mark.line + 1, deep.mark.column + 1) if deep.mark else (1, 1)
        return None, [RuleFileError(path, line, col, TOO_DEEP)]
    except yaml.YAMLError as exc:
        return None, [RuleFileError(path, 1, 1, f"invalid YAML: {exc}")]
    except RecursionError:
        return None, [RuleFileError(path, 1, 1, TOO_DEEP)]
    finally:
        if loader is not None:
            loader.dispose()
    if not nodes:
        return None, [RuleFileError(path, 1, 1, "the file is empty (expected 'version: 1' and 'rules:')")]
    if len(nodes) > 1:
        second = converter.pos(nodes[1])
        return None, [RuleFileError.at(second, "one YAML document per rule file (found a second '---')")]
    too_deep = _too_deep(nodes[0])
    if too_deep is not None:
        return None, [RuleFileError.at(converter.pos(too_deep), TOO_DEEP)]
    try:
        bomb = _alias_expansion(nodes[0], alias_marks)
        if bomb is not None:
            message = f"YAML aliases expand to more than {MAX_ALIAS_VALUES:,} values (an alias bomb?)"
            return None, [RuleFileError(path, bomb.line + 1, bomb.column + 1, message)]
        value = converter.convert(nodes[0])
    except RecursionError:
        return None, [RuleFileError(path, 1, 1, TOO_DEEP)]
    return value, converter.errors


def _skipped(name: str) -> bool:
    """A hidden file or folder (``.git``, Kubernetes' ``..data``, ``.#p1.yaml``) or an editor's backup/lock."""
    return name.startswith((".", "#", "~")) or name.endswith(("~", "#"))


#: how deep rule folders may nest (a folder per client, per team): deeper is a mistake, e.g. a symlink to ``/``
MAX_RULE_DEPTH = 8


def _walk(folder: Path, seen: set[Path], errors: list[RuleFileError], depth: int = 0) -> list[Path]:
    """Rule files under ``folder``, every subfolder included (a folder per client: ``rules/acme/*.yaml``), in
    name order. A folder that cannot be read is an error, not a silent skip: a client's rules would be missing."""
    try:
        real = folder.resolve()
        if real in seen:  # a symlink back up the tree: read once
            return []
        seen.add(real)
        entries = sorted(folder.iterdir(), key=lambda e: e.name)
    except OSError as exc:
        errors.append(RuleFileError(str(folder), 1, 1, f"cannot read this rule folder: {exc.strerror or exc}"))
        return []
    out: list[Path] = []
    for entry in entries:
        if _skipped(entry.name):
            continue
        if entry.is_dir():
            if depth + 1 > MAX_RULE_DEPTH:
                errors.append(RuleFileError(str(entry), 1, 1, f"rule folders nest more than {MAX_RULE_DEPTH} deep"))
                continue
            out.extend(_walk(entry, seen, errors, depth + 1))
        elif entry.is_file() and entry.suffix.lower() in RULE_FILE_SUFFIXES:  # P1.YAML too (Windows editors)
            out.append(entry)
    return out


def rule_files(path: Path) -> tuple[list[Path], list[RuleFileError]]:
    """The files of a rule set: ``path`` itself, or every ``*.yaml``/``*.yml`` (any case) under a directory, its
    subfolders included, in the order of their paths relative to it (``acme/p1.yaml`` before ``globex.yaml``).
    Hidden files and folders and editors' backups are skipped."""
    if path.is_dir():
        errors: list[RuleFileError] = []
        files = sorted(_walk(path, set(), errors), key=lambda p: p.relative_to(path).parts)
        if errors:
            return files, errors
        if not files:
            return [], [RuleFileError(str(path), 1, 1, "no *.yaml or *.yml rule files in this directory or below")]
        return files, []
    if not path.exists():
        return [], [RuleFileError(str(path), 1, 1, "no such file or directory")]
    return [path], []


def relative_name(file: Path, root: Path) -> str:
    """``file``'s name within the rule set at ``root`` (``acme/p1.yaml``; a single rule file: its name)."""
    try:
        return file.relative_to(root).as_posix() if root.is_dir() else file.name
    except ValueError:
        return file.name


def read_file(path: Path) -> tuple[str | None, list[RuleFileError]]:
    """The text of one rule file, or an error (unreadable, too big, not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [RuleFileError(str(path), 1, 1, f"cannot read: {exc.strerror or exc}")]
    if len(data) > MAX_FILE_BYTES:
        return None, [RuleFileError(str(path), 1, 1, f"file larger than {MAX_FILE_BYTES} bytes")]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [RuleFileError(str(path), 1, 1, f"not UTF-8 text (byte {exc.start})")]
