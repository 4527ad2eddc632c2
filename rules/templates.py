"""Trigger templates: sandboxed Jinja2, compiled once at load, variables checked at load.

Templates see ``ticket`` (every field of :data:`kernel.fields.TICKET_FIELDS` plus ``custom``, ``attributes``
and ``raw``), ``rule`` (``name``, ``description``), ``changes`` (list of ``{field, old, new}``) and ``now``.
``StrictUndefined`` makes a typo an error instead of an empty string; unknown names are rejected at load
(``ticket.titel`` → "did you mean 'title'?"), and so are unknown filters and tests (``| upperr``) and
``ticket.attributes.<name>`` outside the rule source's attributes (``ticket.custom`` / ``ticket.raw`` are
vendor-defined and free). Rendering never raises: a failing template (e.g. a custom field this ticket
lacks) renders a fallback so the page still goes out, and the problem is reported.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from kernel.fields import SOURCE_ATTRIBUTES, TICKET_FIELDS, all_attributes
from kernel.model import FieldChange, Ticket
from rules.operators import did_you_mean

TEMPLATE_VARIABLES = frozenset({"ticket", "rule", "changes", "now"})
TICKET_VARIABLES = TICKET_FIELDS | {"custom", "attributes", "raw"}
RULE_VARIABLES = frozenset({"name", "description"})
#: what a template may name: variable → its fields checked at load (None: free, e.g. ``changes``, ``now``)
Variables = Mapping[str, frozenset[str] | None]
TRIGGER_VARIABLES: Variables = {"ticket": TICKET_VARIABLES, "rule": RULE_VARIABLES, "changes": None, "now": None}
MAX_REPEAT = 10_000  # longest string/list a template may build with '*'
#: ``${...}`` in a template's text: the environment-reference syntax of a routing key, printed as written here
DOLLAR_BRACE = re.compile(r"\$\{([^{}\n]*)\}")
#: ``${connection}`` (or ``${ticket.connection}``) in a template's text: the ticket's connection (issue 17 names
#: this spelling for an MSP's summaries), the same as ``{{ ticket.connection }}``
CONNECTION_REF = re.compile(r"\$\{\s*(?:ticket\.)?connection\s*\}")


class TemplateProblem(ValueError):
    """A template that does not compile or names an unknown variable (message shown to the admin).

    ``problems``: every problem found, each with its offset in the template's text where it is known (the
    unknown names of one template are all reported at once); ``str()`` is the first one."""

    def __init__(self, message: str, problems: Sequence[tuple[str, int | None]] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[tuple[str, int | None], ...] = tuple(problems) or ((message, None),)


class _Environment(SandboxedEnvironment):
    """The sandbox, plus: no ``**`` and no huge ``'x' * n`` (a template must not eat the CPU or memory)."""

    intercepted_binops = frozenset({"**", "*"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            raise jinja2.exceptions.SecurityError("'**' is not allowed in templates")
        if op == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) and count > MAX_REPEAT:
                    raise jinja2.exceptions.SecurityError("repetition too large")
            return operator.mul(left, right)
        return super().call_binop(context, op, left, right)


def _finalize(value: Any) -> Any:
    """``None`` renders as an empty string (an unassigned ticket), not the text "None"; a list (labels,
    components) as its items joined by ", ", not as Python's ``['a', 'b']``."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join("" if v is None else str(v) for v in value)
    return value


ENVIRONMENT = _Environment(undefined=StrictUndefined, autoescape=False, finalize=_finalize)


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template (``compiled`` is None for text without any ``{{``/``{%``)."""

    source: str
    compiled: jinja2.Template | None

    def render(self, context: Mapping[str, Any]) -> str:
        """Render; raises on template runtime errors (callers use :func:`render_safely`)."""
        if self.compiled is None:
            return self.source
        return self.compiled.render(context)


def compile_template(text: str, source: str = "any", variables: Variables = TRIGGER_VARIABLES) -> Template:
    """Compile and check a template; raises :class:`TemplateProblem` with an admin-readable message.

    ``source`` is the rule's source (jira | zendesk | servicenow | any): ``ticket.attributes.<name>`` must
    be one of that source's attributes (:data:`kernel.fields.SOURCE_ATTRIBUTES`; ``any``: of any source).
    ``variables``: what the template may name (a trigger's by default; a sync-back comment sees others).
    """
    if "{{" not in text and "{%" not in text and "{#" not in text and not CONNECTION_REF.search(text):
        _check_dollar_brace(text)
        return Template(text, None)
    try:
        tree = ENVIRONMENT.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"template does not compile: {exc.message} (template line {exc.lineno})") from None
    _connection_refs(tree)
    for data in tree.find_all(nodes.TemplateData):  # the text around {{ }}; "${x}" inside {{ }} is a string
        _check_dollar_brace(data.data)
    tokens = _Tokens(text)
    found = _unknown_filters_and_tests(tree, tokens)
    if found:  # the analysis below compiles the template, which stops at an unknown filter: stand-ins for them
        stand_in = ENVIRONMENT.overlay()
        stand_in.filters = {**ENVIRONMENT.filters, **{n.name: _stand_in for n in tree.find_all(nodes.Filter)}}
        stand_in.tests = {**ENVIRONMENT.tests, **{n.name: _stand_in for n in tree.find_all(nodes.Test)}}
        tree.set_environment(stand_in)
    try:
        undeclared = meta.find_undeclared_variables(tree)
    except jinja2.TemplateError as exc:  # the analysis compiles the template: any other compile-time error
        raise TemplateProblem(f"template does not compile: {_message(exc)}") from None
    for name in sorted(undeclared - set(variables)):
        message = (
            f"template uses unknown variable '{name}'{did_you_mean(name, variables)}"
            f" (known: {', '.join(sorted(variables))})"
        )
        found.append((message, tokens.find((name,))))
    for owner, allowed in variables.items():
        if allowed is None:
            continue
        for attr in dict.fromkeys(_attributes_of(tree, owner)):
            if attr not in allowed:
                message = f"template uses unknown field '{owner}.{attr}'{did_you_mean(attr, allowed)}"
                found.append((message, tokens.find((owner, attr))))
    found.extend(_unknown_ticket_attributes(tree, source, tokens))
    if found:  # every unknown name at once, in the order they are written
        found.sort(key=lambda problem: (problem[1] is None, problem[1] or 0))
        raise TemplateProblem(found[0][0], found)
    try:
        compiled = ENVIRONMENT.from_string(tree)
    except jinja2.TemplateError as exc:
        raise TemplateProblem(f"template does not compile: {_message(exc)}") from None
    return Template(text, compiled)


def _connection_refs(tree: nodes.Template) -> None:
    """``${connection}`` in the text around ``{{ }}`` becomes the expression ``ticket.connection`` (in a
    string inside ``{{ }}`` it stays text)."""
    for output in tree.find_all(nodes.Output):
        parts: list[nodes.Expr] = []
        for node in output.nodes:
            if not (isinstance(node, nodes.TemplateData) and CONNECTION_REF.search(node.data)):
                parts.append(node)
                continue
            texts = CONNECTION_REF.split(node.data)
            for i, piece in enumerate(texts):
                if i:
                    parts.append(nodes.Getattr(nodes.Name("ticket", "load"), "connection", "load"))
                if piece:
                    parts.append(nodes.TemplateData(piece))
        output.nodes = parts


def _check_dollar_brace(text: str) -> None:
    """``[${key}] Down``: ``${...}`` (other than ``${connection}``) is how a routing key reads the environment;
    a template would print it as written, so it is an error naming what to write instead (``{{ ticket.key }}``)."""
    found = DOLLAR_BRACE.search(text)
    if found is None:
        return
    written = found.group(0)
    name = found.group(1).strip().removeprefix("ticket.")
    if name in TICKET_VARIABLES:
        hint = f"use {{{{ ticket.{name} }}}}"
    else:
        hint = (
            "a template cannot read the environment (${NAME} works only as a whole routing_key);"
            " a ticket's fields are {{ ticket.<field> }}, e.g. {{ ticket.connection }}"
        )
    raise TemplateProblem(f"'{written}' is not template syntax and would be sent as written: {hint}")


def _message(exc: jinja2.TemplateError) -> str:
    message = exc.message or type(exc).__name__
    line = getattr(exc, "lineno", None)
    return f"{message} (template line {line})" if line else message


def _stand_in(value: Any, *args: Any, **kwargs: Any) -> Any:
    return value


class _Tokens:
    """Where names are written in a template's text, from Jinja's own lexer: ``find(("ticket", "kye"))`` is the
    offset of the first ``ticket.kye`` (or ``ticket['kye']``) inside ``{{ }}`` / ``{% %}``, never in the text
    around them. None when it is not found, or when the tokens do not spell the text exactly (``{{-`` trims it)."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[int, str, str]] = []
        try:
            raw = list(ENVIRONMENT.lexer.tokeniter(text, None))
        except jinja2.TemplateSyntaxError:
            return
        at = 0
        for _line, kind, value in raw:
            if kind != "whitespace":
                self.tokens.append((at, kind, value))
            at += len(value)
        if "".join(value for _line, _kind, value in raw) != text:
            self.tokens = []

    def find(self, path: tuple[str, ...]) -> int | None:
        """The offset of the first name, or dotted/subscripted path of names, ``path``."""
        tokens = self.tokens
        for i, (at, kind, value) in enumerate(tokens):
            if kind != "name" or value != path[0] or (i and tokens[i - 1][1:] == ("operator", ".")):
                continue
            if self._follows(i + 1, path[1:]):
                return at
        return None

    def after(self, operator: str, name: str) -> int | None:
        """The offset of the first name ``name`` right after the operator (or name) ``operator`` (a filter after
        ``|``, a test after ``is``)."""
        for i, (at, kind, value) in enumerate(self.tokens):
            if kind == "name" and value == name and i and self.tokens[i - 1][2] == operator:
                return at
        return None

    def _follows(self, i: int, rest: tuple[str, ...]) -> bool:
        tokens = self.tokens
        for part in rest:
            if i + 1 >= len(tokens) or tokens[i][1] != "operator":
                return False
            op, (_, kind, value) = tokens[i][2], tokens[i + 1]
            if op == "." and kind == "name" and value == part:
                i += 2
            elif op in "[(" and kind == "string" and value[1:-1] == part:  # ['x'], .get('x')
                i += 3
            elif op == "." and kind == "name" and value == "get" and i + 3 < len(tokens):
                if tokens[i + 2][2] != "(" or tokens[i + 3][1] != "string" or tokens[i + 3][2][1:-1] != part:
                    return False
                i += 5
            else:
                return False
        return True


def _unknown_filters_and_tests(tree: nodes.Template, tokens: _Tokens) -> list[tuple[str, int | None]]:
    """``{{ x | upperr }}`` / ``{% if x is nul %}``: a name the sandbox does not know, with a suggestion."""
    found: list[tuple[str, int | None]] = []
    seen: set[tuple[str, str]] = set()
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        known = ENVIRONMENT.filters if isinstance(node, nodes.Filter) else ENVIRONMENT.tests
        kind = "filter" if isinstance(node, nodes.Filter) else "test"
        if node.name not in known and (kind, node.name) not in seen:
            seen.add((kind, node.name))
            offset = tokens.after("|", node.name) if kind == "filter" else tokens.after("is", node.name)
            if offset is None and kind == "test":
                offset = tokens.after("not", node.name)
            found.append((f"unknown {kind} '{node.name}'{did_you_mean(node.name, known)}", offset))
    return found


#: methods of the ``ticket.attributes`` mapping a template may call (``.get('x')`` is checked like ``.x``)
_MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})


def _unknown_ticket_attributes(tree: nodes.Template, source: str, tokens: _Tokens) -> list[tuple[str, int | None]]:
    """``ticket.attributes.<name>`` must be a connector attribute of the rule's source."""
    found: list[tuple[str, int | None]] = []
    allowed = all_attributes() if source not in SOURCE_ATTRIBUTES else SOURCE_ATTRIBUTES[source]
    called = {id(call.node): call for call in tree.find_all(nodes.Call)}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if not _is_ticket_attributes(getattr(node, "node", None)):
            continue
        if isinstance(node, nodes.Getattr):
            name: str | None = node.attr
            call = called.get(id(node))
            if call is not None and node.attr in _MAPPING_METHODS:
                first = call.args[0] if call.args else None
                if node.attr != "get" or not (isinstance(first, nodes.Const) and isinstance(first.value, str)):
                    continue
                name = first.value
        else:
            arg = getattr(node, "arg", None)
            name = arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None
        if name is None or name in allowed or any(f"'ticket.attributes.{name}'" in m for m, _ in found):
            continue
        field = f"ticket.attributes.{name}"
        offset = tokens.find(("ticket", "attributes", name))
        if name in all_attributes():
            owners = sorted(s for s, attrs in SOURCE_ATTRIBUTES.items() if name in attrs)
            found.append(
                (f"'{field}' is a field of {' and '.join(owners)} tickets; this rule's source is {source}", offset)
            )
            continue
        found.append(
            (
                f"template uses unknown field '{field}'{did_you_mean(name, allowed)}"
                " (the source's attributes; vendor-defined fields are ticket.custom.<name> or ticket.raw.<path>)",
                offset,
            )
        )
    return found


def _is_ticket_attributes(node: Any) -> bool:
    """``ticket.attributes`` or ``ticket['attributes']``."""
    if isinstance(node, nodes.Getattr):
        name: Any = node.attr
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        name = node.arg.value
    else:
        return False
    target = node.node
    return name == "attributes" and isinstance(target, nodes.Name) and target.name == "ticket"


def _attributes_of(tree: nodes.Template, owner: str) -> list[str]:
    out: list[str] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(node, "node", None)
        if not (isinstance(target, nodes.Name) and target.name == owner):
            continue
        if isinstance(node, nodes.Getattr):
            out.append(node.attr)
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            out.append(node.arg.value)
    return out


def ticket_variables(ticket: Ticket) -> dict[str, Any]:
    """What ``ticket`` is inside templates."""
    out: dict[str, Any] = {name: getattr(ticket, name) for name in TICKET_FIELDS}
    out["status_category"] = ticket.status_category.value
    out["labels"] = list(ticket.labels)
    out["custom"] = dict(ticket.custom_fields)
    out["attributes"] = dict(ticket.attributes)
    out["raw"] = ticket.raw
    return out


def template_context(
    ticket: Ticket, rule_name: str, description: str, changes: tuple[FieldChange, ...], now: datetime
) -> dict[str, Any]:
    return {
        "ticket": ticket_variables(ticket),
        "rule": {"name": rule_name, "description": description},
        "changes": [{"field": c.field, "old": c.old, "new": c.new} for c in changes],
        "now": now,
    }


def render_safely(template: Template, context: Mapping[str, Any], fallback: str) -> tuple[str, str | None]:
    """``(text, problem)``: the rendering, or ``fallback`` and a short description of what went wrong."""
    try:
        return template.render(context), None
    except jinja2.TemplateError as exc:
        return fallback, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a template must never stop a page from going out
        return fallback, f"{type(exc).__name__}: {exc}"
