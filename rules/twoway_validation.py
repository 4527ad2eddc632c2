"""Validation of the two-way blocks of a rule (``sync_back:``, ``escalation_policies:``) and of the top-level
``groups:`` vocabulary, with the same ``file:line:col`` errors and suggestions as the rest of a rule file.

A mixin of :class:`rules.validation.Validator` (which provides ``err``, ``check_keys``, ``field``, ``template``
and ``status_problem``), kept apart so the forward rules' validation stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kernel.model import StatusCategory
from rules.loader import Pos, RuleFileError, YList, YMap
from rules.operators import did_you_mean, show
from rules.spec import FieldRef, PolicyMapSpec, Reaction, SyncBackSpec, TransitionSpec
from rules.templates import Template, Variables
from rules.twoway import FIRST_KIND, KIND_HINTS, KINDS, ON_GROUP_CHANGE, SET_GROUP_KIND, SYNC_VARIABLES

#: PagerDuty object ids: "P" and six upper-case letters or digits (e.g. PNET001 in a policy's URL,
#: https://acme.pagerduty.com/escalation_policies/PNET001)
POLICY_ID = re.compile(r"^P[A-Z0-9]{6}$")
SYNC_BACK_OPTIONS = ("visibility",)
SYNC_BACK_KEYS = (*SYNC_BACK_OPTIONS, *KINDS)
REACTION_KEYS = ("comment", "visibility", "transition", "set_group")
TRANSITION_KEYS = ("status", "category", "fields")
POLICY_KEYS = ("field", "groups", "on_group_change", "reverse")
VISIBILITY = ("internal", "public")
TRANSITION_CATEGORIES = tuple(c.value for c in StatusCategory if c is not StatusCategory.DELETED)
DEFAULT_GROUP_FIELD = "assignment_group"


def _where(first: Pos, here: Pos) -> str:
    return f"line {first.line}:{first.col}" if first.path == here.path else f"{first.path}:{first.line}:{first.col}"


def policy_problem(value: Any) -> str | None:
    """Why ``value`` is not a PagerDuty escalation policy id, else None."""
    if not isinstance(value, str) or not value.strip():
        return f"{show(value)} is not an escalation policy id (e.g. PNET001, from the policy's URL in PagerDuty)"
    text = value.strip()
    if POLICY_ID.match(text):
        return None
    if POLICY_ID.match(text.upper()):
        return f"escalation policy ids are upper case: did you mean '{text.upper()}'?"
    return (
        f"'{text}' is not an escalation policy id: PagerDuty ids are P and 6 letters or digits (e.g. PNET001, "
        "the last part of the policy's URL); a policy's name does not work here"
    )


class TwoWayValidation:
    """The two-way part of :class:`rules.validation.Validator`."""

    groups: dict[str, Pos]
    incomplete: bool
    errors: list[RuleFileError]

    # provided by Validator
    def err(self, pos: Pos, trail: list[str], message: str) -> None: ...  # pragma: no cover
    def check_keys(self, mapping: YMap, allowed: tuple[str, ...], trail: list[str]) -> None: ...  # pragma: no cover
    def field(self, name: str, source: str, pos: Pos, trail: list[str]) -> FieldRef | None: ...  # pragma: no cover
    def template(
        self, value: Any, pos: Pos, trail: list[str], source: str, variables: Variables | None = None
    ) -> Template | None: ...  # pragma: no cover
    def status_problem(self, source: str, value: str) -> str | None: ...  # pragma: no cover

    # -- top-level groups ------------------------------------------------------------------------------

    def groups_section(self, value: Any, pos: Pos) -> None:
        """``groups: [Service Desk, Network, …]``: the assignment groups maps may name (once declared)."""
        if not isinstance(value, YList) or not value:
            self.err(pos, ["groups"], "must be a list of your ticketing system's assignment group names")
            return
        for index, name in enumerate(value):
            here = value.item_pos[index]
            if not isinstance(name, str) or not name.strip():
                self.err(here, ["groups", f"[{index + 1}]"], f"must be a group name, not {show(name)}")
                continue
            if name in self.groups:
                self.err(
                    here, ["groups"], f"duplicate group '{name}' (first listed at {_where(self.groups[name], here)})"
                )
                continue
            self.groups[name] = here

    def group_name(self, value: Any, pos: Pos, trail: list[str]) -> str | None:
        if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
            self.err(pos, trail, f"must be a group name, not {show(value)}")
            return None
        name = str(value)
        if self.groups and not self.incomplete and name not in self.groups:
            folded = {g.casefold(): g for g in self.groups}
            if name.casefold() in folded:
                hint = f" (did you mean '{folded[name.casefold()]}'? group names are matched exactly)"
            else:
                hint = did_you_mean(name, self.groups)
            self.err(pos, trail, f"unknown group '{name}'{hint} (groups: {', '.join(self.groups)})")
            return None
        return name

    def policy_id(self, value: Any, pos: Pos, trail: list[str]) -> str | None:
        problem = policy_problem(value)
        if problem is not None:
            self.err(pos, trail, problem)
            return None
        return str(value).strip()

    # -- escalation_policies ---------------------------------------------------------------------------

    def escalation_policies(
        self, value: Any, pos: Pos, trail: list[str], source: str, uses_reverse: bool
    ) -> PolicyMapSpec | None:
        """``escalation_policies: {field, groups: {group: policy}, on_group_change, reverse: {policy: group}}``."""
        if not isinstance(value, YMap):
            self.err(pos, trail, "must be a mapping with groups: {group name: escalation policy id}")
            return None
        before = len(self.errors)
        self.check_keys(value, POLICY_KEYS, trail)
        field_name = value.get("field", DEFAULT_GROUP_FIELD)
        fref: FieldRef | None = None
        if not isinstance(field_name, str):
            self.err(value.val_pos["field"], [*trail, "field"], "must be a field name, e.g. assignment_group")
        else:
            fref = self.field(field_name, source, value.val_pos.get("field", pos), [*trail, "field"])
        on_change = value.get("on_group_change", "reassign")
        if on_change not in ON_GROUP_CHANGE:
            self.err(
                value.val_pos["on_group_change"],
                [*trail, "on_group_change"],
                f"must be {' | '.join(ON_GROUP_CHANGE)}, not {show(on_change)}"
                + did_you_mean(str(on_change), ON_GROUP_CHANGE),
            )
        groups: dict[str, str] = {}
        positions: dict[str, Pos] = {}
        sources: dict[str, list[tuple[str, Pos]]] = {}
        table = value.get("groups")
        if "groups" not in value and "reverse" not in value:
            self.err(value.pos, trail, "missing 'groups' (ticket group name: escalation policy id)")
        if table is not None and not isinstance(table, YMap):
            self.err(
                value.val_pos["groups"], [*trail, "groups"], "must be a mapping of group name: escalation policy id"
            )
        elif isinstance(table, YMap):
            folded: dict[str, tuple[str, Pos]] = {}
            for key, policy in table.items():
                kpos, vpos = table.key_pos[key], table.val_pos[key]
                group = self.group_name(key, kpos, [*trail, "groups"])
                pid = self.policy_id(policy, vpos, [*trail, "groups", str(key)])
                if group is None or pid is None:
                    continue
                twin = folded.get(group.casefold())
                if twin is not None:
                    self.err(
                        kpos,
                        [*trail, "groups"],
                        f"duplicate mapping: '{group}' and '{twin[0]}' ({_where(twin[1], kpos)}) differ only in case",
                    )
                    continue
                folded[group.casefold()] = (group, kpos)
                groups[group] = pid
                positions.setdefault(pid, vpos)
                sources.setdefault(pid, []).append((group, kpos))
        reverse: dict[str, str] = {}
        explicit = value.get("reverse")
        if explicit is not None and not isinstance(explicit, YMap):
            self.err(value.val_pos["reverse"], [*trail, "reverse"], "must be a mapping of escalation policy id: group")
        elif isinstance(explicit, YMap):
            for key, group_value in explicit.items():
                kpos, vpos = explicit.key_pos[key], explicit.val_pos[key]
                pid = self.policy_id(key, kpos, [*trail, "reverse"])
                group = self.group_name(group_value, vpos, [*trail, "reverse", str(key)])
                if pid is None or group is None:
                    continue
                if pid in reverse:
                    self.err(kpos, [*trail, "reverse"], f"duplicate mapping for {pid}")
                    continue
                reverse[pid] = group
                positions.setdefault(pid, kpos)
        for pid, named in sources.items():
            if pid in reverse:
                continue
            if len(named) == 1:
                reverse[pid] = named[0][0]
            elif uses_reverse:  # a move to pid in PagerDuty could mean either group: say which
                first, second = named[0], named[1]
                self.err(
                    second[1],
                    [*trail, "groups", second[0]],
                    f"duplicate mapping: {pid} is also the policy of '{first[0]}' ({_where(first[1], second[1])}); "
                    f"sync_back → delegated → set_group needs one group per policy: add reverse: {{{pid}: {first[0]}}}",
                )
        if len(self.errors) != before or fref is None or on_change not in ON_GROUP_CHANGE:
            return None
        return PolicyMapSpec(fref, groups, reverse, str(on_change), positions)

    # -- sync_back -------------------------------------------------------------------------------------

    def sync_back(
        self, value: Any, pos: Pos, trail: list[str], source: str, policies: PolicyMapSpec | None, has_policies: bool
    ) -> SyncBackSpec | None:
        """``sync_back: {visibility, <kind>: true | false | "comment template" | {comment, visibility,
        transition, set_group}}``."""
        if not isinstance(value, YMap):
            self.err(pos, trail, f"must be a mapping of PagerDuty event → what to write ({', '.join(KINDS)})")
            return None
        before = len(self.errors)
        for key in value:
            if key not in SYNC_BACK_KEYS:
                hint = KIND_HINTS.get(str(key).casefold())
                suggestion = f" (did you mean '{hint}'?)" if hint else did_you_mean(str(key), SYNC_BACK_KEYS)
                self.err(
                    value.key_pos[key],
                    trail,
                    f"unknown PagerDuty event '{key}'{suggestion} (events: {', '.join(KINDS)}; option: visibility)",
                )
        visibility = value.get("visibility", "internal")
        if visibility not in VISIBILITY:
            self.err(
                value.val_pos["visibility"],
                [*trail, "visibility"],
                f"must be internal or public, not {show(visibility)}",
            )
        public = visibility == "public"
        reactions: dict[str, Reaction] = {}
        for kind in KINDS:
            if kind not in value:
                continue
            reaction = self.reaction(
                kind, value[kind], value.val_pos[kind], [*trail, kind], source, public, policies, has_policies
            )
            if reaction is not None:
                reactions[kind] = reaction
        if FIRST_KIND not in value:  # the page's own write-back (incident number and link) unless `triggered: false`:
            # always internal — a `visibility: public` block must not start mailing a requester the incident's link
            reactions[FIRST_KIND] = Reaction(FIRST_KIND, Template("", None), True, False)
        if len(self.errors) != before:
            return None
        return SyncBackSpec(reactions)

    def reaction(
        self,
        kind: str,
        value: Any,
        pos: Pos,
        trail: list[str],
        source: str,
        public: bool,
        policies: PolicyMapSpec | None,
        has_policies: bool,
    ) -> Reaction | None:
        if value is False or value is None:
            return None
        if value is True:
            return Reaction(kind, Template("", None), True, public)
        if isinstance(value, str):
            text = self.template(value, pos, trail, source, SYNC_VARIABLES)
            return None if text is None else Reaction(kind, text, False, public)
        if not isinstance(value, YMap):
            self.err(
                pos, trail, "must be true, false, a comment template, or {comment, visibility, transition, set_group}"
            )
            return None
        self.check_keys(value, REACTION_KEYS, trail)
        comment_value = value.get("comment", True)
        comment: Template | None = None
        default_text = False
        if comment_value is True:
            comment, default_text = Template("", None), True
        elif comment_value is False or comment_value is None:
            comment = None
        elif isinstance(comment_value, str):
            comment = self.template(
                comment_value, value.val_pos["comment"], [*trail, "comment"], source, SYNC_VARIABLES
            )
        else:
            self.err(value.val_pos["comment"], [*trail, "comment"], "must be true, false or a comment template")
        visibility = value.get("visibility", "public" if public else "internal")
        if visibility not in VISIBILITY:
            self.err(
                value.val_pos["visibility"],
                [*trail, "visibility"],
                f"must be internal or public, not {show(visibility)}",
            )
        transition = None
        if "transition" in value:
            transition = self.transition(
                value["transition"], value.val_pos["transition"], [*trail, "transition"], source
            )
        set_group = value.get("set_group", False)
        if not isinstance(set_group, bool):
            self.err(value.val_pos["set_group"], [*trail, "set_group"], "must be true or false")
            set_group = False
        elif set_group and kind != SET_GROUP_KIND:
            self.err(
                value.val_pos["set_group"],
                [*trail, "set_group"],
                f"set_group applies to '{SET_GROUP_KIND}' only (the event of a move to another escalation policy)",
            )
        elif set_group and not has_policies:
            self.err(
                value.val_pos["set_group"],
                [*trail, "set_group"],
                "set_group needs the rule's escalation_policies: (which group each escalation policy means)",
            )
        return Reaction(
            kind, comment, default_text, visibility == "public", transition, bool(set_group) and policies is not None
        )

    def transition(self, value: Any, pos: Pos, trail: list[str], source: str) -> TransitionSpec | None:
        """``{status: Done}`` or ``{category: done}``, with ``fields: {resolution: Done}``."""
        if isinstance(value, str):
            self.err(pos, trail, f"write {{status: {show(value)}}} or {{category: done}}")
            return None
        if not isinstance(value, YMap):
            self.err(
                pos,
                trail,
                "must be {status: <status name>} or {category: new | in_progress | done}, with optional fields",
            )
            return None
        self.check_keys(value, TRANSITION_KEYS, trail)
        status, category = value.get("status"), value.get("category")
        if ("status" in value) == ("category" in value):
            self.err(
                value.pos, trail, "needs exactly one of status (a status name) or category (new | in_progress | done)"
            )
            return None
        if "status" in value:
            if not isinstance(status, str | int) or isinstance(status, bool) or not str(status).strip():
                self.err(value.val_pos["status"], [*trail, "status"], "must be a status name")
                return None
            problem = self.status_problem(source, str(status))
            if problem is not None:
                self.err(value.val_pos["status"], [*trail, "status"], problem)
                return None
        parsed: StatusCategory | None = None
        if "category" in value:
            if category not in TRANSITION_CATEGORIES:
                self.err(
                    value.val_pos["category"],
                    [*trail, "category"],
                    f"unknown status category {show(category)}{did_you_mean(str(category), TRANSITION_CATEGORIES)} "
                    f"(use {' | '.join(TRANSITION_CATEGORIES)})",
                )
                return None
            parsed = StatusCategory(category)
        fields: list[tuple[str, Template]] = []
        table = value.get("fields")
        if table is not None and not isinstance(table, YMap):
            self.err(
                value.val_pos["fields"], [*trail, "fields"], "must be a mapping of field: value (e.g. resolution: Done)"
            )
            return None
        for name, text in (table or {}).items():
            assert isinstance(table, YMap)
            if isinstance(text, bool) or not isinstance(text, str | int | float):
                self.err(table.val_pos[name], [*trail, "fields", name], "must be text (a template)")
                continue
            template = self.template(str(text), table.val_pos[name], [*trail, "fields", name], source, SYNC_VARIABLES)
            if template is not None:
                fields.append((str(name), template))
        return TransitionSpec(None if status is None else str(status), parsed, tuple(fields))


def uses_set_group(value: Any) -> bool:
    """Whether a ``sync_back:`` value asks for ``delegated: {set_group: true}`` (read before it is validated)."""
    if not isinstance(value, Mapping):
        return False
    reaction = value.get(SET_GROUP_KIND)
    return isinstance(reaction, Mapping) and reaction.get("set_group") is True
