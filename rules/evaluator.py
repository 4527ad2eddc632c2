"""Compile validated rules once into closures and evaluate them, purely, against a ticket.

:meth:`RuleSet.evaluate` returns one :class:`RuleResult` per rule in file order: whether it applies to the
ticket's source, whether it matched (first match wins unless ``continue: true``), why or why not, whether
its ``acknowledge_when`` / ``resolve_when`` hold, and, for matched rules only, the rendered trigger.

Speed (see docs/performance.md): rules are grouped by source, so a rule for another source costs one
precomputed result. Each rule's leading text ``equals``/``in`` conditions (the most selective first) are
decided per *layout*: the key is, for every field those conditions name, the ticket's value if some rule
names it (else one shared "other" entry), plus the verdicts of the shared ``acknowledge_when`` /
``resolve_when`` conditions — a space bounded by the rule files, not by the data. Each layout is computed
once per source and cached; an evaluation then runs only the undecided conditions of the remaining
candidates. Triggers are rendered lazily, when an incident is actually triggered.
:meth:`RuleSet.evaluate_reference` runs every condition without any of this; tests hold the two equal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import regex

from kernel import jsonutil
from kernel.model import SEVERITIES, SUMMARY_MAX, FieldChange, LinkState, StatusCategory, Ticket, TriggerSpec
from kernel.ports import EvalContext, IncidentContext, Verdict
from rules import twoway
from rules.loader import Pos
from rules.operators import (
    REGEX_TIMEOUT_SECONDS,
    PatternTimeout,
    bounded_search,
    failure_explainer,
    fold,
    folded_search,
)
from rules.spec import AllOf, AnyOf, Cond, Leaf, NotOf, RuleSetSpec, RuleSpec, SeveritySpec, field_names
from rules.templates import Template, render_safely, template_context

_REJECT_CACHE_MAX = 256  # cached explanations / "rejected by index" results per condition or rule


class RuleResult:
    """The verdict of one rule for one ticket (stored in the decision log).

    ``explanation`` is the condition verdict (why it matched or not). The trigger of a matched rule is
    rendered lazily, on first access of :attr:`trigger` — in the service that is only when an incident is
    actually triggered, not on every update of a ticket whose incident is already open. Template failures
    found while rendering are in :attr:`problems` (the page is still sent, with fallback text).
    """

    __slots__ = (
        "rule",
        "applies",
        "matched",
        "explanation",
        "acknowledge",
        "resolve",
        "on_unmatch",
        "_trigger",
        "_problems",
        "_render",
        "_json",
        "_bytes",
    )

    def __init__(
        self,
        rule: str,
        applies: bool,
        matched: bool,
        explanation: tuple[str, ...],
        acknowledge: bool,
        resolve: bool,
        on_unmatch: str,
        trigger: TriggerSpec | None = None,
        render: Callable[[], tuple[TriggerSpec, list[str]]] | None = None,
    ) -> None:
        self.rule = rule
        self.applies = applies
        self.matched = matched
        self.explanation = explanation
        self.acknowledge = acknowledge
        self.resolve = resolve
        self.on_unmatch = on_unmatch
        self._trigger = trigger
        self._problems: tuple[str, ...] = ()
        self._render = render
        self._json: dict[str, Any] | None = None
        self._bytes: bytes | None = None

    @property
    def trigger(self) -> TriggerSpec | None:
        if self._render is not None:
            rendered, problems = self._render()
            self._trigger, self._problems, self._render = rendered, tuple(problems), None
            self._bytes = None  # encoded before the render: without its template problems
        return self._trigger

    @property
    def rendered(self) -> bool:
        return self._render is None

    @property
    def problems(self) -> tuple[str, ...]:
        """Template errors of the rendered trigger (renders it if needed)."""
        self.trigger  # noqa: B018 - force the lazy render
        return self._problems

    def to_json(self) -> dict[str, Any]:
        """The verdict as the decision log stores it: the rule, why, and the flags that differ from
        :data:`kernel.ports.VERDICT_DEFAULTS` (most verdicts are rules that did not match), plus the template
        problems of a rendered trigger. Built once per result: a cached rejection is shared by every ticket it
        rejects, and building 100 of these per change was a tenth of the engine's CPU (issue 19). The caller
        must not change it."""
        out = self._json
        if out is None:
            out = {"rule": self.rule, "why": list(self.explanation)}
            if self.matched:
                out["matched"] = True
            if not self.applies:
                out["applies"] = False
            if self.acknowledge:
                out["acknowledge"] = True
            if self.resolve:
                out["resolve"] = True
            self._json = out
        if self._render is None and self._problems:  # only triggers actually built are rendered
            return {**out, "template_problems": list(self._problems)}
        return out

    def json_bytes(self) -> bytes:
        """:meth:`to_json` encoded, once per result like it (:meth:`RuleSet.encode` splices these into each
        decision); encoded again after the trigger is rendered, which may add template problems. Shared results
        (a cached rejection) may be encoded by two threads at once: both write the same bytes."""
        out = self._bytes
        if out is None:
            out = self._bytes = jsonutil.encode(self.to_json())
        return out

    def __repr__(self) -> str:
        return (
            f"RuleResult(rule={self.rule!r}, applies={self.applies}, matched={self.matched}, "
            f"explanation={self.explanation!r}, acknowledge={self.acknowledge}, resolve={self.resolve})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuleResult):
            return NotImplemented
        return (
            self.rule,
            self.applies,
            self.matched,
            self.explanation,
            self.acknowledge,
            self.resolve,
            self.on_unmatch,
            self.trigger,
        ) == (
            other.rule,
            other.applies,
            other.matched,
            other.explanation,
            other.acknowledge,
            other.resolve,
            other.on_unmatch,
            other.trigger,
        )

    __hash__ = None  # type: ignore[assignment]


def _change(ctx: EvalContext, field_name: str) -> FieldChange | None:
    """What this update changed in ``field_name``: the last entry wins when one update lists a field twice
    (a Jira changelog has one entry per component added or removed). A scan: updates change few fields."""
    for change in reversed(ctx.changes):
        if change.field == field_name:
            return change
    return None


Check = Callable[[EvalContext], str | None]  # None: the condition holds; else why not


# ------------------------------------------------------------------------------------------ compilation


class _Memo(dict[Any, Any]):
    """``memo[value]``: ``make(value)``, made once per value (the same status fails the same condition
    over and over). Bounded: cleared when full, since values such as titles or organizations are endless."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[Any], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, value: Any) -> Any:
        if len(self) >= _REJECT_CACHE_MAX:
            self.clear()
        made = self[value] = self.make(value)
        return made


class GaveUp(str):
    """The reason a ``regex`` / ``not_regex`` condition does not hold when its search gave up
    (:class:`PatternTimeout`): it fails ``not:`` too, so a pattern that backtracks never makes a rule hold."""


def _compile_leaf(leaf: Leaf) -> Check:
    check = _compile_leaf_check(leaf)
    if leaf.op.name not in ("regex", "not_regex"):
        return check
    gave_up = GaveUp(
        f"{leaf.field.name if leaf.field else 'now'}: /{leaf.raw_arg}/ gave up after "
        f"{REGEX_TIMEOUT_SECONDS * 1000:g} ms on this text (the regex backtracks: look for nested repeats such as "
        "(a+)+ or overlapping alternatives such as (a|aa)+)"
    )

    def check_bounded(s: EvalContext) -> str | None:
        try:
            return check(s)
        except PatternTimeout:
            return gave_up

    return check_bounded


def _compile_leaf_check(leaf: Leaf) -> Check:
    op, arg, raw = leaf.op, leaf.arg, leaf.raw_arg
    test = op.test
    name = leaf.field.name if leaf.field else "now"

    explain = failure_explainer(name, op, raw, arg)
    texts = _Memo(explain)  # texts[value]: the explanation for a failing text value

    def fail(value: Any) -> str:
        cls = value.__class__
        if cls is str or cls is int or value is None:
            return texts[value]
        return explain(value)

    if op.input == "change":

        def check_change(s: EvalContext) -> str | None:
            change = _change(s, name)
            return None if test(change, arg, s.now) else fail(change)

        return check_change
    if leaf.field is None:

        def check_now(s: EvalContext) -> str | None:
            return None if test(s.now, arg, s.now) else fail(s.now)

        return check_now
    get = leaf.field.get
    if leaf.ignore_case and op.case == "value":

        def check_folded(s: EvalContext) -> str | None:
            value = get(s.ticket)
            return None if test(fold(value), arg, s.now) else fail(value)

        return check_folded
    if op.name == "equals" and isinstance(arg, str):

        def check_equals(s: EvalContext) -> str | None:
            value = get(s.ticket)
            if value.__class__ is str:
                return None if value == arg else texts[value]
            return None if test(value, arg, s.now) else fail(value)

        return check_equals
    if op.name == "regex" and isinstance(arg, regex.Pattern):
        found = folded_search(arg)
        if found is not None:  # case-insensitive: lower-cased text, several times faster (see folded_search)

            def check_folded_regex(s: EvalContext) -> str | None:
                value = get(s.ticket)
                if value.__class__ is str:
                    return None if found(value) else explain(value)
                return None if test(value, arg, s.now) else fail(value)

            return check_folded_regex
        search = bounded_search(arg)

        def check_regex(s: EvalContext) -> str | None:
            value = get(s.ticket)
            if value.__class__ is str:
                return None if search(value) else explain(value)  # free text: seldom repeats
            return None if test(value, arg, s.now) else fail(value)

        return check_regex
    if op.name == "in" and all(isinstance(a, str) for a in arg):
        accepted = frozenset(arg)

        def check_in(s: EvalContext) -> str | None:
            value = get(s.ticket)
            if value.__class__ is str:
                return None if value in accepted else texts[value]
            return None if test(value, arg, s.now) else fail(value)

        return check_in

    def check(s: EvalContext) -> str | None:
        value = get(s.ticket)
        return None if test(value, arg, s.now) else fail(value)

    return check


def compile_condition(cond: Cond) -> Check:
    """One closure for a condition tree (``AllOf`` short-circuits on the first failing condition)."""
    if isinstance(cond, Leaf):
        return _compile_leaf(cond)
    if isinstance(cond, NotOf):
        inner = compile_condition(cond.item)
        text = f"not: {cond.item.describe()} holds"

        def check_not(s: EvalContext) -> str | None:
            reason = inner(s)
            if reason is None:
                return text
            return reason if reason.__class__ is GaveUp else None

        return check_not
    checks = tuple(compile_condition(c) for c in cond.items)
    if isinstance(cond, AnyOf):

        def check_any(s: EvalContext) -> str | None:
            reasons = []
            for c in checks:
                reason = c(s)
                if reason is None:
                    return None
                reasons.append(reason)
            return "none of any: held: " + " | ".join(reasons)

        return check_any
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        c1, c2 = checks

        def check_two(s: EvalContext) -> str | None:
            return c1(s) or c2(s)

        return check_two
    if len(checks) == 3:
        c1, c2, c3 = checks

        def check_three(s: EvalContext) -> str | None:
            return c1(s) or c2(s) or c3(s)

        return check_three

    def check_all(s: EvalContext) -> str | None:
        for c in checks:
            reason = c(s)
            if reason is not None:
                return reason
        return None

    return check_all


def _cost(cond: Cond) -> int:
    """Cheap, selective conditions first, so rejections are fast and explanations name them."""
    if isinstance(cond, Leaf):
        if cond.op.name in ("equals", "in") and not cond.ignore_case:
            return 0
        if cond.op.name in ("regex", "not_regex"):
            return 3
        return 1
    return 2


def _top_items(cond: Cond) -> tuple[Cond, ...]:
    """The conditions that must all hold: the items of a top-level ``all``, else the condition itself."""
    return cond.items if isinstance(cond, AllOf) else (cond,)


def _index_leaf(cond: Cond) -> Leaf | None:
    """The most selective top-level ``equals``/``in`` condition on text values, if any."""
    best: Leaf | None = None
    for item in _top_items(cond):
        if not isinstance(item, Leaf) or item.field is None or item.ignore_case:
            continue
        if item.op.name == "equals" and isinstance(item.arg, str):
            size = 1
        elif item.op.name == "in" and all(isinstance(a, str) for a in item.arg):
            size = len(item.arg)
        else:
            continue
        if best is None or size < (1 if best.op.name == "equals" else len(best.arg)):
            best = item
    return best


def _text_set(leaf: Cond) -> frozenset[str] | None:
    """The accepted values of a text ``equals``/``in`` leaf the layout can decide, else ``None``."""
    if not isinstance(leaf, Leaf) or leaf.field is None or leaf.ignore_case:
        return None
    if leaf.op.name == "equals" and isinstance(leaf.arg, str):
        return frozenset((leaf.arg,))
    if leaf.op.name == "in" and isinstance(leaf.arg, tuple) and all(isinstance(a, str) for a in leaf.arg):
        return frozenset(leaf.arg)
    return None


def _describe_items(cond: Cond) -> tuple[str, ...]:
    return tuple(i.describe() for i in _top_items(cond))


def _always(s: EvalContext) -> str | None:
    return None


class _CompiledRule:
    """A rule's closures and caches.

    ``when`` checks every condition; ``rest[k]`` checks all but the first ``k`` (the leading text
    ``equals``/``in`` conditions in ``index_leaves``), for a candidate whose layout already decided those.
    """

    __slots__ = (
        "spec",
        "name",
        "when",
        "rest",
        "ack_key",
        "resolve_key",
        "on_unmatch",
        "cont",
        "matched_explanation",
        "branches",
        "explains",
        "shadows",
        "index_leaves",
        "_rejections",
    )

    def __init__(self, spec: RuleSpec, ack_key: str | None, resolve_key: str) -> None:
        self.spec = spec
        self.name = spec.name
        when = spec.when
        if isinstance(when, AllOf):
            when = AllOf(tuple(sorted(when.items, key=_cost)))
        index = _index_leaf(when)
        if index is not None and isinstance(when, AllOf):
            when = AllOf((index, *(i for i in when.items if i is not index)))
        self.when = compile_condition(when)
        self.ack_key = ack_key
        self.resolve_key = resolve_key
        self.on_unmatch = spec.on_unmatch
        self.cont = spec.continue_
        self.matched_explanation = tuple(f"holds: {d}" for d in _describe_items(spec.when))
        # the top-level any: items, so a match can say which branch held (worked out on a match only)
        self.branches: tuple[tuple[int, tuple[tuple[Check, str], ...]], ...] = tuple(
            (at, tuple((compile_condition(branch), "; ".join(_describe_items(branch))) for branch in item.items))
            for at, item in enumerate(_top_items(spec.when))  # in the order of matched_explanation
            if isinstance(item, AnyOf)
        )
        # a severity read from a field: a list value (labels, components) says which element gave the severity
        self.explains = bool(self.branches) or spec.trigger.severity.source is not None
        self.shadows = f"shadowed: rule '{spec.name}' matched first (continue: false)"  # why later rules don't
        # the leading text equals/in conditions of `when`, in evaluation order: (field, getter, values, why-not)
        self.index_leaves: list[tuple[str, Callable[[Ticket], Any], frozenset[str], Callable[[Any], str]]] = []
        items = _top_items(when)
        for item in items:
            accepted = _text_set(item)
            if accepted is None or not isinstance(item, Leaf) or item.field is None:
                break
            self.index_leaves.append((item.field.name, item.field.get, accepted, _why_not(item)))
        self.rest: list[Check] = [self.when]
        for k in range(1, len(self.index_leaves) + 1):
            left = items[k:]
            self.rest.append(compile_condition(AllOf(left)) if left else _always)
        self._rejections: dict[tuple[Callable[[Any], str], bool, bool], _Memo] = {}

    def explain_match(self, ctx: EvalContext) -> tuple[str, ...]:
        """Why the rule matched: its conditions, for an ``any:`` the first branch that held, and for a severity
        read from a list field (``from: labels``) the element that gave it."""
        if not self.explains:
            return self.matched_explanation
        severity = explain_list_severity(self.spec.trigger.severity, ctx.ticket)
        if severity is None and not self.branches:  # a severity from a field that holds no list here: as written
            return self.matched_explanation
        lines = list(self.matched_explanation)
        for index, branches in self.branches:
            held = next((text for check, text in branches if check(ctx) is None), None)
            if held is not None:
                lines[index] += f", through: {held}"
        if severity is not None:
            lines.append(severity)
        return tuple(lines)

    def rejections(self, why_not: Callable[[Any], str], ack: bool, resolve: bool) -> _Memo:
        """The results "rejected by this index condition", by the rejected value: one table per condition
        and acknowledge/resolve verdicts (two conditions can reject the same value), so a rule has at most
        4 per leading ``equals``/``in`` condition, each bounded."""
        key = (why_not, ack, resolve)
        table = self._rejections.get(key)
        if table is None:
            name, on_unmatch = self.name, self.on_unmatch
            table = self._rejections[key] = _Memo(
                lambda value: RuleResult(name, True, False, (why_not(value),), ack, resolve, on_unmatch)
            )
        return table

    def rejected(self, why_not: Callable[[Any], str], value: Any, ack: bool, resolve: bool) -> RuleResult:
        """The (immutable) result "rejected by an index condition for ``value``", made once per value."""
        return self.rejections(why_not, ack, resolve)[value]


def _why_not(leaf: Leaf) -> Callable[[Any], str]:
    name = leaf.field.name if leaf.field else "now"
    return failure_explainer(name, leaf.op, leaf.raw_arg)


# ------------------------------------------------------------------------------------------------ severity


_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}  # critical (0) is the most severe


# ----------------------------------------------------------------------------------------------- rendering


def _severity_key(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _mapped_elements(spec: SeveritySpec, value: list[Any] | tuple[Any, ...]) -> list[tuple[Any, str]]:
    """The elements of a list value that the severity's map names, with their severities, most severe first
    (in list order among equals)."""
    mapped = [(item, spec.mapping.get(_severity_key(item))) for item in value if item is not None]
    return sorted(((item, sev) for item, sev in mapped if sev is not None), key=lambda pair: _SEVERITY_RANK[pair[1]])


def _severity(spec: SeveritySpec, ticket: Ticket) -> str:
    """A literal severity, or the map's severity for the field's value; for a list value (``labels``,
    ``components``, a raw path to a list) the most severe severity any element maps to; else the default."""
    if spec.literal is not None:
        return spec.literal
    assert spec.source is not None
    value = spec.source.get(ticket)
    if value is None:
        return spec.default
    if isinstance(value, list | tuple):
        mapped = _mapped_elements(spec, value)
        return mapped[0][1] if mapped else spec.default
    return spec.mapping.get(_severity_key(value), spec.default)


def explain_list_severity(spec: SeveritySpec, ticket: Ticket) -> str | None:
    """For a severity read from a list value: which element gave it (or why the default applies); else None."""
    if spec.source is None:
        return None
    value = spec.source.get(ticket)
    if not isinstance(value, list | tuple):
        return None
    name = spec.source.name
    mapped = _mapped_elements(spec, value)
    if not mapped:
        if not value:
            return f"severity {spec.default} (the default): {name} is empty"
        shown = ", ".join(repr(_severity_key(item)) for item in value)
        return f"severity {spec.default} (the default): no element of {name} ({shown}) is in the map"
    element, severity = mapped[0]
    line = f"severity {severity}: {name} has {_severity_key(element)!r}, mapped to {severity}"
    if len(mapped) > 1:
        others = ", ".join(f"{_severity_key(item)!r} → {sev}" for item, sev in mapped[1:])
        line += f" (the most severe; also mapped: {others})"
    return line


def _render_details(value: Any, context: Mapping[str, Any], problems: list[str], where: str) -> Any:
    if isinstance(value, Template):
        text, problem = render_safely(value, context, "<template error>")
        if problem:
            problems.append(f"template error in {where}: {problem}")
        return text
    if isinstance(value, Mapping):
        return {k: _render_details(v, context, problems, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_render_details(v, context, problems, where) for v in value]
    return value


def render_trigger(spec: RuleSpec, ctx: EvalContext) -> tuple[TriggerSpec, list[str]]:
    """Render a matched rule's trigger; template failures fall back and are returned as problems."""
    ticket = ctx.ticket
    trig = spec.trigger
    context = template_context(ticket, spec.name, spec.description, ctx.changes, ctx.now)
    problems: list[str] = []

    def text(template: Template | None, where: str, fallback: str | None) -> str | None:
        if template is None:
            return fallback
        rendered, problem = render_safely(template, context, fallback or "")
        if problem:
            problems.append(f"template error in {where}: {problem}")
        return rendered if rendered or fallback is None else fallback

    summary = text(trig.summary, "summary", f"[{ticket.key}] {ticket.title}") or f"[{ticket.key}] {ticket.title}"
    source = text(trig.source, "source", f"{ticket.source}:{ticket.key}") or f"{ticket.source}:{ticket.key}"
    links = tuple(
        {k: _render_details(v, context, problems, f"links[{i + 1}].{k}") for k, v in link.items()}
        for i, link in enumerate(trig.links)
    )
    images = tuple(
        {k: _render_details(v, context, problems, f"images[{i + 1}].{k}") for k, v in image.items()}
        for i, image in enumerate(trig.images)
    )
    rendered = TriggerSpec(
        routing_key=trig.routing_key,
        severity=_severity(trig.severity, ticket),
        summary=summary.strip()[:SUMMARY_MAX] or f"[{ticket.key}] {ticket.title}",
        source=source.strip()[:255],
        component=text(trig.component, "component", None),
        group=text(trig.group, "group", None),
        class_=text(trig.class_, "class", None),
        custom_details=_render_details(trig.custom_details, context, problems, "custom_details"),
        links=links,
        images=images,
    )
    return rendered, problems


# ------------------------------------------------------------------------------------------------ the set


_PLAN_CACHE_MAX = 4096  # cached rejection layouts per source
_OTHER = object()  # a text value no index condition names: every such condition rejects it
_UNDECIDED = object()  # not text (a list, a number): the candidate's own conditions decide


class _Layout:
    """For one layout key: the results of rules rejected by their index conditions, the candidates left
    to check (with the closure for their undecided conditions), and the rules rejected because of a value
    no rule names (``_OTHER``) — those explain themselves with the actual value (``fixups``: the result
    slot, the field's slot in the key, and that rule's table of such rejections by value)."""

    __slots__ = ("rejected", "candidates", "fixups")

    def __init__(
        self,
        rejected: list[RuleResult | None],
        candidates: list[tuple[int, _CompiledRule, bool, bool, Check]],
        fixups: list[tuple[int, int, _Memo]],
    ) -> None:
        self.rejected = rejected
        self.candidates = candidates
        self.fixups = fixups


class _SourcePlan:
    """Everything about a source that does not depend on the ticket, plus a cache of rejection layouts.

    The layout key has one entry per field named by the rules' leading text ``equals``/``in`` conditions:
    the ticket's value when some rule names it, else ``_OTHER`` (or ``None`` / ``_UNDECIDED``), plus the
    verdicts of the distinct acknowledge/resolve conditions. So the key space is bounded by the rule
    files, not by the data (thousands of organizations cost no more than one). For one key the rules
    rejected by those conditions are always the same: that layout is computed once and cached, so an
    evaluation runs only the remaining conditions of the remaining candidate rules. A rule rejected
    because of an ``_OTHER`` value still explains itself with the actual value (``fixups``).
    """

    __slots__ = ("template", "applying", "fields", "shared", "shared_checks", "slots", "cache")

    Leaves = list[tuple[int, frozenset[str], Callable[[Any], str]]]

    def __init__(
        self,
        template: list[RuleResult | None],
        applying: list[tuple[int, _CompiledRule]],
        checks: Mapping[str, Check],
    ) -> None:
        self.template = template
        self.applying = applying
        slot_of: dict[str, int] = {}
        fields: list[tuple[Callable[[Ticket], Any], set[str]]] = []
        shared: dict[str, int] = {}
        for _, rule in applying:
            for name, getter, accepted, _why in rule.index_leaves:
                if name not in slot_of:
                    slot_of[name] = len(fields)
                    fields.append((getter, set()))
                fields[slot_of[name]][1].update(accepted)
        self.slots: list[tuple[int, _CompiledRule, _SourcePlan.Leaves, int | None, int]] = []
        for i, rule in applying:
            leaves: _SourcePlan.Leaves = [
                (slot_of[name], accepted, why_not) for name, _getter, accepted, why_not in rule.index_leaves
            ]
            ack_slot = None
            if rule.ack_key is not None:
                ack_slot = shared.setdefault(rule.ack_key, len(shared))
            resolve_slot = shared.setdefault(rule.resolve_key, len(shared))
            self.slots.append((i, rule, leaves, ack_slot, resolve_slot))
        # (getter, every value some rule names for that field)
        self.fields = tuple((getter, frozenset(names)) for getter, names in fields)
        self.shared = tuple(shared)  # condition keys, in slot order
        self.shared_checks = tuple(checks[k] for k in self.shared)
        self.cache: dict[tuple[Any, ...], _Layout] = {}


_DELETED = "ticket is deleted: it resolves and never pages"
_DELETED_CATEGORY = StatusCategory.DELETED  # a module constant: the class attribute lookup costs more


def _verdict(
    rule: _CompiledRule,
    reason: str | None,
    deleted: bool,
    shadow: str | None,
    ack: bool,
    resolve: bool,
    ctx: EvalContext,
) -> tuple[RuleResult, str | None]:
    """The result of a rule whose conditions gave ``reason`` (``None``: all hold), and the reason of the
    rules a match now shadows (first match wins unless ``continue: true``; deleted tickets never match)."""
    if reason is None:
        if deleted:
            reason = _DELETED
        elif shadow is not None:
            reason = shadow
    if reason is not None:
        return RuleResult(rule.name, True, False, (reason,), ack, resolve, rule.on_unmatch), shadow
    render = functools.partial(render_trigger, rule.spec, ctx)
    matched = RuleResult(rule.name, True, True, rule.explain_match(ctx), ack, resolve, rule.on_unmatch, None, render)
    return matched, shadow if rule.cont else rule.shadows


class RuleSet:
    """A validated, compiled rule set. Immutable; :meth:`evaluate` is pure and thread-safe."""

    def __init__(self, spec: RuleSetSpec, digest: str) -> None:
        self.spec = spec
        self.digest = digest
        self.names: tuple[str, ...] = tuple(r.name for r in spec.rules)
        self.has_time_rules: bool = any(r.is_time_rule for r in spec.rules)
        self.time_rules: tuple[str, ...] = tuple(r.name for r in spec.rules if r.is_time_rule)
        self._shared: dict[str, Check] = {}
        compiled: list[_CompiledRule] = []
        for rule in spec.rules:
            ack_key = self._share(rule.acknowledge_when) if rule.acknowledge_when is not None else None
            compiled.append(_CompiledRule(rule, ack_key, self._share(rule.resolve_when)))
        self._rules = compiled
        self._plans: dict[str, _SourcePlan] = {}
        self._custom_fields: dict[str, frozenset[str]] = {}
        self._by_name: dict[str, RuleSpec] = {r.name: r for r in spec.rules}

    def __repr__(self) -> str:
        return f"RuleSet(digest={self.digest!r}, rules={len(self.names)})"

    def custom_fields(self, source: str) -> frozenset[str]:
        """The ``custom.<name>`` fields that the rules written for ``source`` read, in conditions or as the
        severity's ``from`` (a connector that can only sometimes name custom fields must know when that
        matters; a ``source: any`` rule's custom field may belong to another vendor, so it is not counted)."""
        found = self._custom_fields.get(source)
        if found is None:
            names: set[str] = set()
            for rule in self.spec.rules:
                if rule.source == source:
                    read = set().union(*(field_names(c) for c in (rule.when, rule.acknowledge_when, rule.resolve_when)))
                    if rule.trigger.severity.source is not None:
                        read.add(rule.trigger.severity.source.name)
                    names |= {n[len("custom.") :] for n in read if n.startswith("custom.")}
            found = frozenset(names)
            if len(self._custom_fields) < 64:
                self._custom_fields[source] = found
        return found

    def __len__(self) -> int:
        return len(self.names)

    def rule(self, name: str) -> RuleSpec:
        for rule in self.spec.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    # -- the reverse direction (kernel.ports.TwoWayRules) -------------------------------------------------

    @property
    def two_way(self) -> bool:
        """Whether any rule writes back (``sync_back:``) or maps groups to escalation policies."""
        return any(r.sync_back is not None or r.policies is not None for r in self.spec.rules)

    def policy_positions(self) -> dict[str, Pos]:
        """Every escalation policy id the rules name, and where it is first written (``rules check --online``)."""
        out: dict[str, Pos] = {}
        for rule in self.spec.rules:
            if rule.policies is not None:
                for pid, pos in rule.policies.positions.items():
                    out.setdefault(pid, pos)
        return out

    def on_incident(self, ctx: IncidentContext) -> twoway.TwoWayPlan:
        """What the rule that paged ``ctx.link`` writes onto the ticket for a person's action in PagerDuty."""
        return twoway.on_incident(self._by_name.get(ctx.link.rule), ctx.link.rule, ctx)

    def on_ticket_change(self, ctx: EvalContext, link: LinkState, incident_id: str) -> twoway.TwoWayPlan:
        """What a change of the ticket's group does to that rule's open incident ``incident_id``."""
        return twoway.on_ticket_change(self._by_name.get(link.rule), link.rule, ctx, link, incident_id)

    def _share(self, cond: Cond) -> str:
        key = cond.describe()
        if key not in self._shared:
            self._shared[key] = compile_condition(cond)
        return key

    def _plan(self, source: str) -> _SourcePlan:
        plan = self._plans.get(source)
        if plan is not None:
            return plan
        template: list[RuleResult | None] = []
        applying: list[tuple[int, _CompiledRule]] = []
        for i, rule in enumerate(self._rules):
            if rule.spec.source in ("any", source):
                template.append(None)
                applying.append((i, rule))
            else:
                template.append(
                    RuleResult(
                        rule.name,
                        False,
                        False,
                        (f"source is {source}, rule wants {rule.spec.source}",),
                        False,
                        False,
                        rule.on_unmatch,
                        None,
                    )
                )
        plan = _SourcePlan(template, applying, self._shared)
        if len(self._plans) < 64:  # sources are few; never grow without bound on odd input
            self._plans[source] = plan
        return plan

    def encode(self, verdicts: Sequence[Verdict]) -> bytes:
        """The decision log's JSON array of results of :meth:`evaluate`, each encoded once (issue 19: encoding
        100 verdicts for every change was a sixth of the engine's instructions; most are this rule set's shared
        rejections). The engine splices it into the decision unparsed (:class:`kernel.jsonutil.Encoded`)."""
        results = cast("list[RuleResult]", verdicts)  # the cached bytes read inline: no call per shared verdict
        return b"[" + b",".join([r._bytes or r.json_bytes() for r in results]) + b"]"

    def evaluate(self, ctx: EvalContext) -> list[RuleResult]:
        """One result per rule, in file order. Pure: no I/O, no clock (``ctx.now`` is the time)."""
        ticket = ctx.ticket
        plan = self._plans.get(ticket.source) or self._plan(ticket.source)
        deleted = ticket.status_category is _DELETED_CATEGORY
        values: list[Any] = []
        key: list[Any] = [deleted]
        for shared_check in plan.shared_checks:
            key.append(shared_check(ctx) is None)
        for get, named in plan.fields:
            value = get(ticket)
            values.append(value)
            if value.__class__ is str:
                key.append(value if value in named else _OTHER)
            else:
                key.append(None if value is None else _UNDECIDED)
        frozen = tuple(key)
        layout = plan.cache.get(frozen)
        if layout is None:
            layout = self._layout(plan, frozen, deleted)
            if len(plan.cache) >= _PLAN_CACHE_MAX:
                plan.cache.clear()
            plan.cache[frozen] = layout
        results: list[Any] = list(layout.rejected)  # the layout's results, with the actual values no rule names
        for i, slot, table in layout.fixups:
            results[i] = table[values[slot]]
        shadow: str | None = None
        for i, rule, ack, resolve, check in layout.candidates:  # as _verdict, inlined: this is the hot loop
            reason = check(ctx)
            if reason is None:
                if deleted:
                    reason = _DELETED
                elif shadow is not None:
                    reason = shadow
                else:
                    render = functools.partial(render_trigger, rule.spec, ctx)
                    why = rule.explain_match(ctx) if rule.explains else rule.matched_explanation
                    results[i] = RuleResult(rule.name, True, True, why, ack, resolve, rule.on_unmatch, None, render)
                    if not rule.cont:
                        shadow = rule.shadows
                    continue
            results[i] = RuleResult(rule.name, True, False, (reason,), ack, resolve, rule.on_unmatch)
        return results

    def evaluate_reference(self, ctx: EvalContext) -> list[RuleResult]:
        """The same verdicts as :meth:`evaluate`, without index, layouts or caches: every applying rule's
        conditions run in full. Slower; it is what the indexed path must always agree with (tests)."""
        ticket = ctx.ticket
        deleted = ticket.status_category is _DELETED_CATEGORY
        results: list[RuleResult] = []
        shadow: str | None = None
        for rule in self._rules:
            if rule.spec.source not in ("any", ticket.source):
                why = (f"source is {ticket.source}, rule wants {rule.spec.source}",)
                results.append(RuleResult(rule.name, False, False, why, False, False, rule.on_unmatch))
                continue
            ack = rule.ack_key is not None and self._shared[rule.ack_key](ctx) is None
            resolve = deleted or self._shared[rule.resolve_key](ctx) is None
            result, shadow = _verdict(rule, rule.when(ctx), deleted, shadow, ack, resolve, ctx)
            results.append(result)
        return results

    @staticmethod
    def _layout(plan: _SourcePlan, key: tuple[Any, ...], deleted: bool) -> _Layout:
        """Results of the rules their index conditions reject, and the candidates left to check.

        ``key`` is ``(deleted, *shared verdicts, *field entries)`` as built by :meth:`evaluate`.
        """
        verdicts = key[1 : 1 + len(plan.shared)]
        entries = key[1 + len(plan.shared) :]
        results = list(plan.template)
        candidates: list[tuple[int, _CompiledRule, bool, bool, Check]] = []
        fixups: list[tuple[int, int, _Memo]] = []
        for i, rule, leaves, ack_slot, resolve_slot in plan.slots:
            ack = verdicts[ack_slot] if ack_slot is not None else False
            resolve = True if deleted else verdicts[resolve_slot]
            decided = 0
            for slot, accepted, why_not in leaves:  # the same order `when` checks them in
                entry = entries[slot]
                if entry is _UNDECIDED:
                    break
                if entry is _OTHER:
                    fixups.append((i, slot, rule.rejections(why_not, ack, resolve)))
                    break
                if entry is None or entry not in accepted:
                    results[i] = rule.rejected(why_not, entry, ack, resolve)
                    break
                decided += 1
            else:
                candidates.append((i, rule, ack, resolve, rule.rest[decided]))
                continue
            if entry is _UNDECIDED:
                candidates.append((i, rule, ack, resolve, rule.rest[decided]))
        return _Layout(results, candidates, fixups)
